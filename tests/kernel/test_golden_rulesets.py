"""The kernel accepts every golden ruleset (tests/golden/*.nft): nft parses it, the kernel
validates it (overlapping interval elements, types, chain references) and loads it twice,
inside a throwaway network namespace (root only). The compiler's golden and verdict tests
are tests/unit/test_compiler_compile.py."""
from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
GOLDEN_NAMES = sorted(p.stem for p in GOLDEN.glob("*.yaml"))


def _can_use_kernel() -> str | None:
    for tool in ("nft", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


@pytest.fixture
def netns(require_root):
    reason = _can_use_kernel()
    if reason:
        pytest.skip(reason)
    name = f"sgtest-{uuid.uuid4().hex[:10]}"
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {proc.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, text=True)


@pytest.mark.kernel
@pytest.mark.require_root
@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_kernel_accepts_golden_ruleset(netns, name, tmp_path):
    """nft parses and the kernel validates each golden ruleset (overlapping interval
    elements, types, chain references) inside a throwaway namespace; the root
    namespace's ruleset is never touched."""
    path = GOLDEN / f"{name}.nft"

    def nft(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", netns, "nft", *args],
                              capture_output=True, text=True, timeout=60)

    check = nft("-c", "-f", str(path))
    assert check.returncode == 0, check.stderr
    # and load it for real, twice (the script replaces its own tables atomically),
    # still inside the throwaway namespace
    for _ in range(2):
        load = nft("-f", str(path))
        assert load.returncode == 0, load.stderr
    listed = nft("list", "ruleset")
    assert listed.returncode == 0, listed.stderr
    for chain in _chains_in(path.read_text()):
        assert f"chain {chain} {{" in listed.stdout


def _chains_in(text: str) -> list[str]:
    return re.findall(r"^\tchain (\S+) \{", text, flags=re.M)
