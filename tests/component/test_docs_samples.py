"""Every sample session in README.md and docs/*.md is current: each fenced block whose
lines start with `$ ` is run line by line with bash in a scratch directory (`/tmp/` in
the sample stands for it; `secgroup-agent` is this checkout's), and each command must
print the lines shown under it (stdout and stderr; `...` stands for lines left out)
and exit as `[exit N]` says
(0 where it says nothing). Blocks marked for tests/component/test_readme_examples.py
are checked there."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = "<!-- output checked by tests/component/test_readme_examples.py -->"
# needs root and established connections in conntrack: tests/kernel covers `diff --live`
NEEDS_ROOT = ("--live",)


@dataclass
class Step:
    command: str
    shown: list[str] = field(default_factory=list)
    exit: int = 0


@dataclass
class Session:
    where: str
    steps: list[Step]


def sessions() -> list[Session]:
    out = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        i = 0
        while i < len(lines):
            if lines[i].startswith("```") and i + 1 < len(lines) and lines[i + 1].startswith("$ "):
                end = lines.index("```", i + 1)
                if not (i and lines[i - 1].strip() == MARK):
                    out.append(Session(f"{page.relative_to(ROOT)}:{i + 2}", _steps(lines[i + 1:end])))
                i = end
            i += 1
    return out


def _steps(lines: list[str]) -> list[Step]:
    steps: list[Step] = []
    for line in lines:
        if line.startswith("$ "):
            steps.append(Step(line[2:]))
        elif steps and steps[-1].command.endswith("\\"):
            steps[-1].command = steps[-1].command[:-1] + " " + line.strip()
        elif re.fullmatch(r"\[exit \d+\]", line):
            steps[-1].exit = int(line[6:-1])
        else:
            steps[-1].shown.append(line)
    for step in steps:                  # a blank line separates one command from the next
        while step.shown and not step.shown[-1].strip():
            step.shown.pop()
    return steps


def _matches(shown: list[str], got: list[str]) -> bool:
    if "..." not in shown:
        return shown == got
    at = 0
    for want in (x for x in shown if x != "..."):
        if want not in got[at:]:
            return False
        at = got.index(want, at) + 1
    return True


SESSIONS = sessions()


def test_the_docs_have_sample_sessions() -> None:
    assert sum(len(s.steps) for s in SESSIONS) >= 10


@pytest.mark.parametrize("session", SESSIONS, ids=lambda s: s.where)
def test_sample_session_is_current(session: Session, tmp_path: Path) -> None:
    if any(flag in step.command for step in session.steps for flag in NEEDS_ROOT):
        pytest.skip("needs root and established connections (tests/kernel: diff --live)")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "secgroup-agent").write_text(f'#!/bin/sh\nexec {sys.executable} -m agent.cli.main "$@"\n')
    (bindir / "secgroup-agent").chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(ROOT)}
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for step in session.steps:
        command = step.command.replace("/tmp/", f"{scratch}/")
        proc = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
        got = (proc.stdout + proc.stderr).replace(f"{scratch}/", "/tmp/").splitlines()
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.returncode == step.exit, (session.where, step.command, proc.stdout, proc.stderr)
        assert _matches(step.shown, got), (session.where, step.command, "\n".join(got))
