"""Running `secgroup-agent` as the operator does: a subprocess, its exit code and output."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "webshop.yaml"
_SCRIPT = Path(sys.executable).parent / "secgroup-agent"
AGENT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "agent.cli.main"]


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def run_agent(*args: str, cwd: Optional[Path] = None) -> Result:
    proc = subprocess.run(AGENT + list(args), cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=60)
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in result.out + result.err, result.out + result.err
    return result
