"""Hostile and careless input (issue 12): bombs refused quickly in little memory, typos
warned with their path, every source reading through agent.model.loader, `group clone`
writing YAML that reads back, and docs/config.md's "Bad input" output current.
Through the `secgroup-agent` process; in process: tests/unit/test_model_bad_input.py."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import AGENT, ROOT, run_agent
from guardrail_helpers import CLONE_SOURCE

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


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


def test_docs_bad_input_output_is_current() -> None:
    readme = (ROOT / "docs" / "config.md").read_text()
    block = re.search(r"```\n\$ secgroup-agent check -c (tests/fixtures/warnings/typos.yaml)\n(.*?)```",
                      readme, re.S)
    assert block, "docs/config.md: the check output of tests/fixtures/warnings/typos.yaml is missing"
    result = run_agent("check", "-c", block.group(1))
    assert block.group(2) == result.out


def test_publish_refuses_duplicate_keys(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("security_groups: []\nsecurity_groups: []\n")
    result = run_agent("publish", "-c", str(path), "--to", "etcd://127.0.0.1:9/p")
    assert result.code == 2
    assert "error: security_groups: lines 1 and 2: duplicate key; give each field once" in result.err


# --- group clone ------------------------------------------------------------------------------


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
