"""scripts/gen-config (the benchmarks' document generator) run in process, so that unit
tests use the repository's own copy without starting a process."""
from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import io
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

GEN = Path(__file__).resolve().parents[1] / "scripts" / "gen-config"


@cache
def _module() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("gen_config", str(GEN))
    spec = importlib.util.spec_from_loader("gen_config", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def generate(*args: str) -> str:
    """What `scripts/gen-config ARGS` prints (a JSON document and a newline)."""
    out, argv = io.StringIO(), sys.argv
    sys.argv = [str(GEN), *args]
    try:
        with contextlib.redirect_stdout(out):
            _module().main()
    finally:
        sys.argv = argv
    return out.getvalue()
