"""The drift monitor tells the agent's own commits from foreign ones, also inside a PID
namespace (a container), where the kernel reports the committer by the host's pid."""
from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

CHECK = Path(__file__).with_name("nftmon_check.py")


@pytest.fixture
def netns():
    if shutil.which("nft") is None or subprocess.run(["id", "-u"], capture_output=True,
                                                     text=True).stdout.strip() != "0":
        pytest.skip("needs root and nft")
    name = f"sgmon-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.parametrize("pid_namespace", [False, True], ids=["host-pids", "container-pids"])
def test_own_commits_are_not_drift(netns, pid_namespace):
    prefix = ["unshare", "--pid", "--fork", "--mount-proc"] if pid_namespace else []
    if pid_namespace and shutil.which("unshare") is None:
        pytest.skip("unshare missing")
    out = subprocess.run(["ip", "netns", "exec", netns, *prefix, sys.executable, str(CHECK)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    own, foreign = out.stdout.strip().split("|")
    assert own == "own=0", out.stdout               # three own commits: none is drift
    assert foreign == "foreign=1", out.stdout       # `nft delete table` by another process is
