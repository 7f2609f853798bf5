"""The worked examples of the README and docs/ are executable: each explain table row is
run through `secgroup-agent explain --json` and must give the verdict and decider it
claims, and every code block marked `<!-- output checked by
tests/component/test_readme_examples.py -->` is run and must print what it shows
(exactly; where it shows `...`, its lines in order)."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| (?P<q>[^|]+) \| `(?P<args>--iface [^`]+)` \| (?P<verdict>accept|drop), (?P<by>[^|]+) \|$")
FLOW_ROW = re.compile(r"^\| (?P<q>[^|]+) \| `(?P<args>--from [^`]+)` \| (?P<verdict>accept|drop), (?P<by>[^|]+) \|$")
MARK = "<!-- output checked by tests/component/test_readme_examples.py -->"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def page_lines() -> list[str]:
    return [line for page in PAGES for line in page.read_text().splitlines()]


def readme_rows() -> list[tuple[str, str, str, str]]:
    rows = []
    for line in page_lines():
        m = ROW.match(line.strip())
        if m:
            rows.append((m["q"].strip(), m["args"], m["verdict"], m["by"].strip()))
    return rows


def test_readme_has_examples():
    assert len(readme_rows()) >= 6


@pytest.mark.parametrize("question,args,verdict,by", readme_rows(), ids=lambda v: str(v)[:30])
def test_readme_example(question, args, verdict, by):
    argv = shlex.split(args)
    if "--direction" not in argv:
        argv += ["--direction", "ingress"]
    proc = subprocess.run([sys.executable, "-m", "agent.cli.main", "explain", "-c",
                           str(ROOT / "examples/webshop.yaml"), *argv, "--json"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["verdict"] == verdict, (question, got)
    if "/" in by:
        group, rule = by.split()[0].split("/")
        assert (got["group"], got["rule"]) == (group, rule), (question, got)
    else:
        stage = {"final": "final", "essentials": "essentials", "default": "default"}
        expected_stage = next(v for k, v in stage.items() if k in by)
        assert got["stage"] == expected_stage, (question, got)
        if "default" in by:
            assert got["group"] == by.split()[0] and got["priority"] == 110


def flow_rows() -> list[tuple[str, str, str, str]]:
    lines = page_lines()
    return [(m["q"].strip(), m["args"], m["verdict"], m["by"].strip())
            for m in (FLOW_ROW.match(line.strip()) for line in lines) if m]


def checked_blocks() -> list[tuple[str, list[str]]]:
    """(command, shown output lines) of every marked block."""
    lines = page_lines()
    out = []
    for i, line in enumerate(lines):
        if line.strip() == MARK:
            assert lines[i + 1] == "```" and lines[i + 2].startswith("$ secgroup-agent "), lines[i + 2]
            end = lines.index("```", i + 2)
            out.append((lines[i + 2][2:], lines[i + 3:end]))
    return out


def test_readme_has_flow_examples_and_checked_blocks():
    assert len(flow_rows()) >= 5 and len(checked_blocks()) >= 3


def _decider(end: dict) -> str:
    if end["rule"]:
        return f"{end['group']}/{end['rule']}"
    return f"{end['stage']} {end['group']}" if end["group"] else end["stage"]


@pytest.mark.parametrize("question,args,verdict,by", flow_rows(), ids=lambda v: str(v)[:30])
def test_readme_flow_example(question, args, verdict, by):
    """'by' lists every judging end in order: 'IFACE DIRECTION: decider; ...', where the
    decider is group/rule, 'default G', 'intra-group G', 'final' or 'essentials'."""
    proc = subprocess.run([sys.executable, "-m", "agent.cli.main", "explain", "-c",
                           str(ROOT / "examples/webshop.yaml"), *shlex.split(args), "--json"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["verdict"] == verdict, (question, got)
    ends = [f"{e['interface']} {e['direction']}: {_decider(e)}" for e in got["ends"]]
    assert ends == [part.strip() for part in by.split(";")], (question, got)


@pytest.mark.parametrize("command,shown", checked_blocks(), ids=lambda v: str(v)[:40])
def test_readme_block_is_current(command, shown):
    argv = shlex.split(command)[1:]
    proc = subprocess.run([sys.executable, "-m", "agent.cli.main", *argv], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    got = proc.stdout.splitlines()
    if "..." not in shown:
        assert got == shown
        return
    at = 0
    for line in (x for x in shown if x != "..."):
        assert line in got[at:], (line, proc.stdout)
        at = got.index(line, at) + 1
