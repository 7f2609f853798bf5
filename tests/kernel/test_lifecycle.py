"""The host life cycle in network namespaces with real traffic (issue 14): `apply` then
`run` adopts the table with no kernel work, a chain flushed by another tool is rewritten
alone, the boot step loads the fail-closed table then restores the last applied
ruleset with one `nft -f`, and `wait`
returns once an interface is enforced. The sandbox and the daemon are removed
afterwards, also on failure; the state directory is the test's own."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sandbox.hypervisor import Sandbox
from agent.service.status import query
from test_daemon import ADDR, PY, Agent, document, reachable, wait_for, write

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")]
UNIT = Path(__file__).resolve().parents[2] / "systemd" / "secgroup-agent.service"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lifecycle")
    state = tmp / "state"
    old = os.environ.get("SECGROUP_AGENT_STATE_DIR")
    os.environ["SECGROUP_AGENT_STATE_DIR"] = str(state)
    sb = Sandbox(f"sgl{os.getpid() % 100000}")
    a = Agent(sb, tmp)
    try:
        sb.add_instance("i1", "tap-i1", [ADDR])
        write(a.config, document(8080))
        yield a, state
    finally:
        try:
            a.stop(signal.SIGKILL)
        finally:
            sb.close()
            if old is None:
                os.environ.pop("SECGROUP_AGENT_STATE_DIR", None)
            else:
                os.environ["SECGROUP_AGENT_STATE_DIR"] = old


def cli(a: Agent, *args: str) -> subprocess.CompletedProcess:
    return a.sb.exec(a.sb.hv, PY, "-m", "agent.cli.main", *args, check=False, timeout=60)


def test_apply_then_run_adopts_with_no_kernel_work(sandbox):
    a, state = sandbox
    first = cli(a, "apply", "-c", str(a.config))
    assert first.stdout.startswith("applied:") and (state / "ruleset.nft").exists(), first.stdout + first.stderr
    a.start()
    doc = query(a.socket)
    assert doc.started_as == "adopted" and doc.applies == {"unchanged": 1}, doc
    assert "start: adopted" in a.log.read_text()
    assert reachable(a, 8080) and not reachable(a, 9090, 0.4)
    again = cli(a, "apply", "-c", str(a.config))
    assert again.stdout.startswith("unchanged:"), again.stdout + again.stderr


def test_a_flushed_chain_is_rewritten_alone(sandbox):
    a, _ = sandbox
    repairs = query(a.socket).drift_repairs
    rules = a.nft("list", "chain", "inet", "secgroup_agent", "in_tap-i1").stdout
    a.nft("flush", "chain", "inet", "secgroup_agent", "in_tap-i1")
    took = wait_for(lambda: query(a.socket).drift_repairs > repairs, 1.0)
    print(f"\nchain flushed by nft: rewritten in {took * 1000:.0f} ms (status polling)")
    assert a.nft("list", "chain", "inet", "secgroup_agent", "in_tap-i1").stdout == rules
    assert "rewriting chain inet secgroup_agent in_tap-i1" in a.log.read_text()
    assert not reachable(a, 9090, 0.4) and reachable(a, 8080)


def test_wait_returns_once_the_interface_is_enforced(sandbox):
    a, _ = sandbox
    ok = cli(a, "wait", "--iface", "tap-i1", "--socket", a.socket, "--timeout", "5")
    assert ok.returncode == 0 and "tap-i1: enforced" in ok.stdout, ok.stdout + ok.stderr
    from agent.sources.file import revision_of
    text = __import__("yaml").safe_dump(document(8080, 9090))
    waiter = a.sb.popen(a.sb.hv, PY, "-m", "agent.cli.main", "wait", "--iface", "tap-i1", "--revision",
                        revision_of(text.encode()), "--socket", a.socket, "--timeout", "20",
                        stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    write(a.config, text)
    assert waiter.wait(timeout=30) == 0
    assert reachable(a, 9090)                          # enforced when wait returned
    missing = cli(a, "wait", "--iface", "tap-nope", "--socket", a.socket, "--timeout", "0.3")
    assert missing.returncode == 1 and "not enforced" in missing.stderr


def restore_command(state: Path) -> str:
    """The unit's boot step, pointed at this test's state directory."""
    line = next(ln for ln in UNIT.read_text().splitlines() if ln.startswith("ExecStartPre="))
    command = re.match(r"ExecStartPre=-/bin/sh -c '(.*)'$", line).group(1)
    return command.replace("/var/lib/secgroup-agent", str(state))


def test_boot_restore_brings_the_filtering_back_before_python(sandbox):
    a, state = sandbox
    assert a.stop(signal.SIGTERM) == 0
    saved = (state / "ruleset.nft").read_text()
    failclosed = (state / "failclosed.nft").read_text()
    assert len(failclosed) < 4096 and '"tap*"' in failclosed and "agent_stamp" not in failclosed
    a.nft("delete", "table", "inet", "secgroup_agent")           # a boot: no table
    assert reachable(a, 8080) and reachable(a, 9999)              # unfiltered
    start = time.monotonic()                                      # the boot step's first half alone
    a.sb.exec(a.sb.hv, "nft", "-f", str(state / "failclosed.nft"))
    took_closed = time.monotonic() - start
    assert not reachable(a, 8080, 0.4), "the fail-closed boot table lets the tap's traffic through"
    start = time.monotonic()                                      # the whole step: no stamp, so both files
    a.sb.exec(a.sb.hv, "/bin/sh", "-c", restore_command(state))
    took = time.monotonic() - start
    print(f"\nboot step: fail-closed table ({len(failclosed)} bytes) {took_closed * 1000:.0f} ms; "
          f"the whole step (it, then one nft -f of {len(saved)} bytes) {took * 1000:.0f} ms")
    assert not reachable(a, 9999, 0.4) and reachable(a, 8080)
    assert "boot_forward" not in a.nft("list", "table", "inet", "secgroup_agent").stdout
    stamp = a.nft("list", "set", "inet", "secgroup_agent", "agent_stamp").stdout
    assert re.search(r"elements = \{ ([0-9a-f:]+) \}", stamp).group(1) in saved
    a.sb.exec(a.sb.hv, "/bin/sh", "-c", restore_command(state))  # the table is there: not loaded again
    a.start()
    assert query(a.socket).started_as == "adopted"
