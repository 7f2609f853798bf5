"""The README's worked examples are executable: each table row is run through
`secgroup-agent explain --json` and must give the verdict and decider it claims."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| (?P<q>[^|]+) \| `(?P<args>--iface [^`]+)` \| (?P<verdict>accept|drop), (?P<by>[^|]+) \|$")


def readme_rows() -> list[tuple[str, str, str, str]]:
    rows = []
    for line in (ROOT / "README.md").read_text().splitlines():
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
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "explain", "-c",
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
