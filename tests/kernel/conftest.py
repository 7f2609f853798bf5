"""Fixtures of the kernel tests: a sandbox hypervisor per attachment (routed, bridged),
built once per module and removed afterwards, also when a test or the build fails.

Everything lives in network namespaces named `sgk<pid><r|b>-*`; the root namespace's
ruleset, routes and sysctls are never touched. Tests marked `kernel` are skipped when
not root or when a tool they call (`ip`, `nft`, `ping`, `sysctl`, `conntrack`)
or python3-nftables is missing; the reason names the Debian package.
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from khelpers import Topology, kernel_skip_reason  # noqa: E402

HERE = Path(__file__).resolve().parent
# `apply` and `run` save the applied ruleset (agent.reconciler.store): never in the host's
# /var/lib/secgroup-agent; every process the tests start inherits this
os.environ["SECGROUP_AGENT_STATE_DIR"] = tempfile.mkdtemp(prefix="sgk-state-")
atexit.register(shutil.rmtree, os.environ["SECGROUP_AGENT_STATE_DIR"], True)


def pytest_collection_modifyitems(config, items):
    reason = kernel_skip_reason()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("kernel") and HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=reason))


def _prefix(attachment: str) -> str:
    return f"sgk{os.getpid()}{attachment[0]}"


@pytest.fixture(scope="module", params=["routed", "bridged"])
def topo(request, tmp_path_factory):
    """Hypervisor + i1..i4 + outside, for one attachment; shared by the module's tests."""
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    t = Topology(request.param, _prefix(request.param), tmp_path_factory.mktemp(request.param))
    try:
        yield t
    finally:
        t.close()


@pytest.fixture
def fresh(topo):
    """The topology with the agent's tables removed before and after the test (for tests
    that need a known starting point or change the kernel behind `apply`'s back)."""
    topo.cli("flush")
    topo.forget()
    try:
        yield topo
    finally:
        topo.cli("flush")
        topo.forget()
