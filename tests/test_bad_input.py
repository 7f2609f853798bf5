"""Hostile and careless input (issue 12): bombs refused quickly in little memory, typos
warned with their path, every source reading through agent.model.loader, `group clone`
writing YAML that reads back, and the README's "Bad input" output current."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import AGENT, ROOT, run_agent

FIXTURES = Path(__file__).resolve().parent / "fixtures"
INVALID = FIXTURES / "invalid"
TYPOS = FIXTURES / "warnings" / "typos.yaml"
PREFIX = "# expect: "
LIMIT_SECONDS, LIMIT_KB = 2.0, 100 * 1024

# Runs one command as its only child and reports its wall time and peak RSS.
MEASURE = """
import json, resource, subprocess, sys, time
start = time.monotonic()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=120)
print(json.dumps({"code": proc.returncode, "out": proc.stdout, "err": proc.stderr,
                  "seconds": time.monotonic() - start,
                  "kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def measured_check(path: Path, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEASURE, *AGENT, "check", "-c", str(path), *extra],
                          capture_output=True, text=True, timeout=180)
    return json.loads(proc.stdout)


def _nested_json(depth: int) -> str:
    return '{"security_groups": [{"id": "sg", "rules": ' + "[" * depth + "]" * depth + "}]}"


def _bombs(tmp: Path) -> dict[str, Path]:
    """The documents of the issue that crashed or stalled `check`, as files."""
    made = {
        "json-1000-deep.json": _nested_json(1000),                             # RecursionError
        "json-100000-deep.json": _nested_json(100_000),
        "yaml-100000-deep-flow.yaml": "security_groups: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "yaml-3000-deep-block.yaml": "security_groups:\n" + "".join(" " * i + "-\n" for i in range(1, 3000)),
        "yaml-100000-deep-block-seq.yaml": "security_groups:\n" + "- " * 100_000 + "x\n",  # segfault (139)
    }
    paths = {}
    for name, text in made.items():
        paths[name] = tmp / name
        paths[name].write_text(text)
    for name in ("alias-bomb.yaml", "merge-key-bomb.yaml", "alias-recursive.yaml", "deep-nesting.json"):
        paths[name] = INVALID / name
    return paths


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    return _bombs(tmp_path_factory.mktemp("bombs"))


@pytest.mark.parametrize("name", [
    "json-1000-deep.json", "json-100000-deep.json", "yaml-100000-deep-flow.yaml",
    "yaml-3000-deep-block.yaml", "yaml-100000-deep-block-seq.yaml", "alias-bomb.yaml",
    "merge-key-bomb.yaml", "alias-recursive.yaml", "deep-nesting.json"])
def test_bomb_is_refused_quickly_in_little_memory(name: str, bombs: dict[str, Path]) -> None:
    got = measured_check(bombs[name])
    assert got["code"] == 2, got
    assert "Traceback" not in got["out"] + got["err"]
    lines = got["out"].splitlines()
    assert lines[-1].endswith(": 1 error(s)"), got["out"]
    assert re.search(r"nested more than 64 levels deep|aliases expand to more than|refers to itself",
                     lines[0]), lines[0]
    assert got["seconds"] < LIMIT_SECONDS, f"{name}: {got['seconds']:.2f} s"
    assert got["kb"] < LIMIT_KB, f"{name}: {got['kb']} KB"


def test_json_depth_is_refused_by_the_json_path(tmp_path: Path) -> None:
    (tmp_path / "deep.json").write_text(_nested_json(70))
    result = run_agent("check", "-c", "deep.json", cwd=tmp_path)
    assert result.code == 2
    assert result.lines == ["deep.json: nested more than 64 levels deep", "deep.json: 1 error(s)"]


def test_json_duplicate_keys_with_paths(tmp_path: Path) -> None:
    (tmp_path / "dup.json").write_text(
        '{"security_groups": [{"id": "sg", "rules": [{"direction": "ingress", "policy": "drop",'
        ' "protocol": "all", "source_cidr": "10.0.0.0/8", "policy": "accept"}]}], "instances": [],'
        ' "instances": []}')
    result = run_agent("check", "-c", "dup.json", cwd=tmp_path)
    assert result.code == 2
    assert result.lines == ["instances: 2 times: duplicate key; give each field once",
                            "security_groups[0].rules[0].policy: 2 times: duplicate key; give each field once",
                            "dup.json: 2 error(s)"]


def test_too_large_document_is_refused_before_parsing(tmp_path: Path, monkeypatch) -> None:
    from agent.model import loader
    from agent.errors import InvalidInput
    monkeypatch.setattr(loader, "MAX_BYTES", 1000)
    path = tmp_path / "big.yaml"
    path.write_text("security_groups: []\n" + "# padding\n" * 200)
    with pytest.raises(InvalidInput) as err:
        loader.read_document(path)
    assert str(err.value.errors[0]) == f"{path}: document too large: 1,001 bytes (the limit is 1,000)"


# --- warnings -------------------------------------------------------------------------------
def _expected(path: Path) -> list[str]:
    return [line[len(PREFIX):] for line in path.read_text().splitlines() if line.startswith(PREFIX)]


def test_typos_are_warnings_with_path_and_the_close_field() -> None:
    result = run_agent("check", "-c", str(TYPOS))
    assert result.code == 0, result.out
    assert result.lines[:-1] == [f"warning: {w}" for w in _expected(TYPOS)]
    assert "instances[0].interfaces[0].adresses: unknown field (did you mean addresses?)" in _expected(TYPOS)
    assert result.lines[-1].endswith("valid (1 groups, 1 instances, 1 local interfaces on host hv-01)")


def test_strict_makes_warnings_errors(tmp_path: Path) -> None:
    result = run_agent("check", "--strict", "-c", str(TYPOS))
    assert result.code == 2
    assert result.lines[:-1] == _expected(TYPOS)
    doc = tmp_path / "strict.yaml"
    doc.write_text("strict: true\n" + TYPOS.read_text())
    by_document = run_agent("check", "-c", "strict.yaml", cwd=tmp_path)
    assert by_document.code == 2 and by_document.lines[:-1] == _expected(TYPOS)


def test_known_fields_come_from_the_schema() -> None:
    from agent.model.schema import InterfaceDoc, RuleDoc
    from agent.model.validate_warnings import known_fields
    assert known_fields(InterfaceDoc)[0] == frozenset(InterfaceDoc.model_fields)
    assert known_fields(RuleDoc)[0] == frozenset(RuleDoc.model_fields)


def test_extension_fields_are_not_warned() -> None:
    from agent.model.validate_warnings import document_warnings
    assert document_warnings({"x_notes": 1, "x-owner": "ops", "security_groups": []}) == []


def test_readme_bad_input_output_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```\n\$ secgroup-agent check -c (tests/fixtures/warnings/typos.yaml)\n(.*?)```",
                      readme, re.S)
    assert block, "README: the check output of tests/fixtures/warnings/typos.yaml is missing"
    result = run_agent("check", "-c", block.group(1))
    assert block.group(2) == result.out


# --- every source reads through the loader -----------------------------------------------------
def test_etcd_values_refuse_duplicate_keys() -> None:
    from agent.sources import SourceError
    from agent.sources.etcd_layout import keys_document
    kvs = {"/p/meta": b"{}", "/p/instances/i-1": b'{"id": "i-1", "host": "a", "host": "b"}'}
    with pytest.raises(SourceError, match=r"/p/instances/i-1: host: 2 times: duplicate key"):
        keys_document(kvs, "/p", "etcd://x:1/p")


def test_http_body_refuses_an_alias_bomb() -> None:
    import httpx
    from agent.sources import SourceError
    from agent.sources.http import parse_body
    body = (INVALID / "alias-bomb.yaml").read_bytes()
    with pytest.raises(SourceError, match="aliases expand to more than 100,000 nodes"):
        parse_body(httpx.Response(200, content=body, headers={"content-type": "application/yaml"}), "http://x/")


def test_publish_refuses_duplicate_keys(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("security_groups: []\nsecurity_groups: []\n")
    result = run_agent("publish", "-c", str(path), "--to", "etcd://127.0.0.1:9/p")
    assert result.code == 2
    assert "error: security_groups: lines 1 and 2: duplicate key; give each field once" in result.err


# --- address clash, also incrementally ----------------------------------------------------------
def test_incremental_validation_catches_an_address_clash() -> None:
    import copy

    from agent.errors import InvalidInput
    from agent.model.validate_incremental import validate_update
    doc = {"host": "hv", "security_groups": [{"id": "sg"}], "instances": [
        {"id": f"i-{n}", "security_groups": ["sg"],
         "interfaces": [{"name": f"tap-{n}", "addresses": [f"10.0.0.{n}"]}]} for n in (1, 2)]}
    first = validate_update(doc, None, None)
    edited = copy.deepcopy(doc)
    edited["instances"][1]["interfaces"][0]["addresses"] = ["10.0.0.1"]
    with pytest.raises(InvalidInput) as err:
        validate_update(edited, None, first)
    assert [str(e) for e in err.value.errors] == [
        "instances[1].interfaces[0].addresses[0]: 10.0.0.1: address already used on this host "
        "(at instances[0].interfaces[0].addresses[0])"]
    moved = copy.deepcopy(doc)
    moved["instances"][1]["interfaces"][0]["addresses"] = ["10.0.0.3"]
    assert validate_update(moved, None, first).mode == "incremental"


# --- group clone ------------------------------------------------------------------------------
CLONE_SOURCE = """\
security_groups:
  - id: sg-a
    rules:
      - {direction: ingress, protocol: tcp, port_range: 22/22, source_cidr: "::/0"}
      - direction: egress
        protocol: all
        dest_cidr: "::/0"
        description: "yes"
instances: []
"""


def test_clone_writes_yaml_that_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(CLONE_SOURCE)
    result = run_agent("group", "clone", "sg-a", "sg-b", "-c", str(path))
    assert result.code == 0, result.out + result.err
    assert path.read_text().startswith(CLONE_SOURCE.removesuffix("instances: []\n"))
    check = run_agent("check", "-c", str(path))
    assert check.code == 0 and "valid (2 groups" in check.out, check.out
    from agent.model.loader import read_document
    copy_rules = read_document(path)["security_groups"][1]["rules"]
    assert [r.get("source_cidr") or r.get("dest_cidr") for r in copy_rules] == ["::/0", "::/0"]
    assert copy_rules[1]["description"] == "yes"


def test_clone_refuses_to_write_what_would_not_pass_check(tmp_path: Path, monkeypatch) -> None:
    from agent.guardrails import clone
    from agent.errors import AgentError
    path = tmp_path / "g.yaml"
    path.write_text(CLONE_SOURCE)
    monkeypatch.setattr(clone, "_yaml_text", lambda text, *a: text + "  - {id: sg-c, rules: [{source_cidr: ::/0}]}\n")
    with pytest.raises(AgentError, match="would not pass check"):
        clone.clone_group(path, "sg-a", "sg-b")
    monkeypatch.setattr(clone, "_yaml_text", lambda text, *a: text.replace('"yes"', "yes"))
    with pytest.raises(AgentError, match="would not pass check|would not read back"):
        clone.clone_group(path, "sg-a", "sg-b")
    assert path.read_text() == CLONE_SOURCE


def test_the_compiler_still_fails_closed_on_a_shared_bridged_address() -> None:
    """Validation refuses it now; a state that got past it anyway compiles to a drop for
    the address, not to a duplicate map key that would make the kernel refuse the ruleset."""
    import dataclasses
    import ipaddress

    from agent.compiler.compile import build_ruleset
    from agent.compiler.render import render_ruleset
    from agent.model.validate import load_state
    state = load_state(ROOT / "tests" / "golden" / "bridged.yaml", host="hv-01")
    shared = (ipaddress.ip_address("10.8.0.2"),)
    instances = tuple(dataclasses.replace(inst, interfaces=tuple(
        dataclasses.replace(nic, addresses=shared) for nic in inst.interfaces)) if inst.id == "i-b3" else inst
        for inst in state.instances)
    script = render_ruleset(build_ruleset(dataclasses.replace(state, instances=instances)))
    assert "\t\t\t10.8.0.2 : drop,\n" in script and "10.8.0.3" not in script
