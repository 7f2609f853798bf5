"""SPEC §4: bad input is rejected as a whole, every error listed with its path, exit 2,
never a traceback. One fixture per invalid case in tests/fixtures/invalid/, each starting
with `# expect: <exact error line>` lines: the check must print exactly those errors."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from cli_helpers import EXAMPLE, Result, run_agent

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "invalid"
SHOP = FIXTURES.parent / "valid" / "shop.yaml"
FIXTURE_FILES = sorted(p.name for p in FIXTURES.iterdir() if p.suffix in (".yaml", ".json"))
PREFIX = "# expect: "


def expected_lines(name: str) -> list[str]:
    return [line[len(PREFIX):] for line in (FIXTURES / name).read_text().splitlines()
            if line.startswith(PREFIX)]


@pytest.fixture(scope="module")
def checked() -> dict[str, Result]:
    """`check -c NAME` for every fixture, run side by side (cwd: the fixtures directory,
    so file-level errors read `NAME: ...`)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda name: run_agent("check", "-c", name, cwd=FIXTURES), FIXTURE_FILES)
        return dict(zip(FIXTURE_FILES, results))


def test_every_fixture_states_what_it_expects() -> None:
    assert len(FIXTURE_FILES) >= 40
    for name in FIXTURE_FILES:
        assert expected_lines(name), f"{name}: no '{PREFIX}...' line"


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_invalid_fixture(name: str, checked: dict[str, Result]) -> None:
    result = checked[name]
    expected = expected_lines(name)
    assert result.code == 2, result.out + result.err
    for line in expected:
        assert line in result.lines, f"missing: {line}\ngot:\n{result.out}"
    errors = result.lines[:-1]
    assert sorted(errors) == sorted(expected), f"unexpected extra errors:\n{result.out}"
    assert result.lines[-1] == f"{name}: {len(expected)} error(s)"


def test_many_errors_are_reported_at_once(checked: dict[str, Result]) -> None:
    result = checked["many-errors.yaml"]
    assert len(result.lines) - 1 >= 20
    # every error names a path into the document
    assert all(":" in line and line.split(":")[0] for line in result.lines[:-1])


def test_missing_file() -> None:
    result = run_agent("check", "-c", "no-such-file.yaml", cwd=FIXTURES)
    assert result.code == 2
    assert "no-such-file.yaml: no such file" in result.lines


def test_missing_file_on_show_and_explain() -> None:
    for args in (("show", "-c", "nope.yaml", "tap-a"),
                 ("explain", "-c", "nope.yaml", "--iface", "tap-a", "--direction", "ingress",
                  "--protocol", "tcp", "--src", "10.0.0.1", "--dport", "80")):
        result = run_agent(*args, cwd=FIXTURES)
        assert result.code == 2
        assert "error: nope.yaml: no such file" in result.err


def test_truly_empty_file(tmp_path: Path) -> None:
    (tmp_path / "zero.yaml").write_bytes(b"")
    result = run_agent("check", "-c", "zero.yaml", cwd=tmp_path)
    assert result.code == 2 and "zero.yaml: empty document" in result.lines


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"host: h\xe9\n")
    result = run_agent("check", "-c", "latin1.yaml", cwd=tmp_path)
    assert result.code == 2 and result.lines[0].startswith("latin1.yaml: cannot read")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    result = run_agent("check", "-c", str(tmp_path))
    assert result.code == 2 and "cannot read" in result.out


# --- valid input ----------------------------------------------------------------------------
def test_example_is_valid() -> None:
    result = run_agent("check", "-c", str(EXAMPLE))
    assert result.code == 0, result.out
    assert result.out.startswith(f"{EXAMPLE}: valid (")


def test_shop_fixture_is_valid() -> None:
    result = run_agent("check", "-c", str(SHOP))
    assert result.code == 0, result.out
    assert result.out == f"{SHOP}: valid (3 groups, 4 instances, 3 local interfaces on host hv-01)\n"


@pytest.mark.parametrize("indent", [2, "\t", None], ids=["spaces", "tabs", "one-line"])
def test_json_input(tmp_path: Path, indent) -> None:
    data = yaml.safe_load(SHOP.read_text())
    (tmp_path / "webshop.json").write_text(json.dumps(data, indent=indent))
    result = run_agent("check", "-c", "webshop.json", cwd=tmp_path)
    assert result.code == 0, result.out
    assert "valid (3 groups, 4 instances, 3 local interfaces on host hv-01)" in result.out
    explained = run_agent("explain", "-c", "webshop.json", "--iface", "tap-db1", "--direction", "ingress",
                          "--protocol", "tcp", "--src", "10.0.1.11", "--dport", "5432", "--json", cwd=tmp_path)
    assert json.loads(explained.out)["rule"] == "db-from-web"


def test_json_errors_have_paths(tmp_path: Path) -> None:
    doc = {"security_groups": [{"id": "sg", "rules": [{"direction": "ingress", "protocol": "tcp",
                                                       "port_range": "22/21", "source_cidr": "0.0.0.0/0"}]}]}
    (tmp_path / "bad.json").write_text(json.dumps(doc, indent="\t"))
    result = run_agent("check", "-c", "bad.json", cwd=tmp_path)
    assert result.code == 2
    assert "security_groups[0].rules[0].port_range: 22/21: start is after end" in result.lines


def test_identical_duplicate_rules_are_not_an_error(tmp_path: Path) -> None:
    rule = "{direction: ingress, protocol: tcp, port_range: 80/80, source_cidr: 0.0.0.0/0}"
    (tmp_path / "dup.yaml").write_text(f"""
security_groups:
  - id: sg-web
    rules:
      - {rule}
      - {rule}
      - {{id: web, direction: ingress, protocol: tcp, port_range: 443/443, source_cidr: 0.0.0.0/0}}
      - {{id: web, direction: Ingress, protocol: TCP, port_range: 443, source_cidr: 0.0.0.0/0, priority: 1}}
instances:
  - {{id: i-1, security_groups: [sg-web, sg-web], interfaces: [{{name: tap-i1, addresses: [10.0.0.5]}}]}}
""")
    result = run_agent("check", "-c", "dup.yaml", "--host", "hv-01", cwd=tmp_path)
    assert result.code == 0, result.out
    show = run_agent("show", "-c", "dup.yaml", "--host", "hv-01", "tap-i1", cwd=tmp_path)
    ingress_part = show.out.split("egress (")[0]
    assert ingress_part.count(" user ") == 2, show.out


def test_duplicate_interface_names_with_host_flag(tmp_path: Path) -> None:
    """Without a document host, `--host` decides which instances are local: an instance
    with no host and one naming that host share one set of interface names."""
    (tmp_path / "d.yaml").write_text("""
security_groups: [{id: sg}]
instances:
  - {id: i-1, security_groups: [sg], interfaces: [{name: tap-x, addresses: [10.0.0.1]}]}
  - {id: i-2, host: hv-07, security_groups: [sg], interfaces: [{name: tap-x, addresses: [10.0.0.2]}]}
""")
    result = run_agent("check", "-c", "d.yaml", "--host", "hv-07", cwd=tmp_path)
    assert result.code == 2
    assert "instances[1].interfaces[0].name: tap-x: duplicate interface name on this host" in result.lines
    assert run_agent("check", "-c", "d.yaml", "--host", "hv-08", cwd=tmp_path).code == 0


def test_host_flag_overrides_document_host() -> None:
    """The document says hv-01; `--host hv-02` makes db-2 local (and the instances with
    no host, which are local everywhere)."""
    result = run_agent("check", "-c", str(SHOP), "--host", "hv-02")
    assert result.code == 0
    assert "4 local interfaces on host hv-02" in result.out
    show = run_agent("show", "-c", str(SHOP), "--host", "hv-02", "tap-db2")
    assert show.code == 0 and show.out.startswith("interface tap-db2: instance db-2")


# --- explain --json on a few cases (tests/fixtures/valid/shop.yaml) ----------------------------------------------------------
EXPLAIN_CASES = [
    # (args, verdict, stage, rule, group)
    (["--iface", "tap-db1", "--direction", "ingress", "--protocol", "tcp", "--src", "10.0.1.11", "--dport", "5432"],
     "accept", "user", "db-from-web", "sg-db"),
    (["--iface", "tap-db1", "--direction", "ingress", "--protocol", "tcp", "--src", "10.0.1.13", "--dport", "5432"],
     "drop", "user", "db-block-bad", "sg-db"),
    (["--iface", "tap-db1", "--direction", "ingress", "--protocol", "tcp", "--src", "10.0.2.22", "--dport", "5433"],
     "accept", "user", "db-replication", "sg-db"),
    (["--iface", "tap-db1", "--direction", "ingress", "--protocol", "tcp", "--src", "10.0.2.22", "--dport", "22"],
     "drop", "final", None, None),
    (["--iface", "tap-web1", "--direction", "egress", "--protocol", "tcp", "--dst", "198.51.100.7", "--dport", "25"],
     "drop", "user", "web-no-smtp", "sg-web"),
    (["--iface", "tap-web1", "--direction", "egress", "--protocol", "tcp", "--dst", "198.51.100.7", "--dport", "443"],
     "accept", "default", None, "sg-web"),
    (["--iface", "tap-web1", "--direction", "egress", "--protocol", "tcp", "--src", "10.0.1.99",
      "--dst", "198.51.100.7", "--dport", "443"],
     "drop", "essentials", None, None),
    (["--iface", "tap-web2", "--direction", "ingress", "--protocol", "icmp", "--src", "198.51.100.7",
      "--icmp-type", "8"], "accept", "default", None, "sg-ops"),
    (["--iface", "tap-web1", "--direction", "ingress", "--protocol", "tcp", "--src", "10.0.1.12", "--dport", "9999"],
     "accept", "intra-group", None, "sg-web"),
    (["--iface", "tap-web1", "--direction", "ingress", "--protocol", "icmpv6", "--src", "fe80::1",
      "--icmp-type", "135"], "accept", "essentials", None, None),
    (["--iface", "tap-web1", "--direction", "ingress", "--protocol", "tcp", "--src", "2001:db8:1::5", "--dport", "22"],
     "accept", "user", "web-ssh-office", "sg-web"),
]


@pytest.mark.parametrize("args,verdict,stage,rule,group", EXPLAIN_CASES,
                         ids=[f"{c[0][1]}-{c[0][3]}-{c[1]}-{c[2]}-{i}" for i, c in enumerate(EXPLAIN_CASES)])
def test_explain_json(args, verdict, stage, rule, group) -> None:
    result = run_agent("explain", "-c", str(SHOP), *args, "--json")
    assert result.code == 0, result.err
    got = json.loads(result.out)
    assert (got["verdict"], got["stage"], got["rule"], got["group"]) == (verdict, stage, rule, group)
