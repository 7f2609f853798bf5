"""`secgroup-agent trace` against a hand-written table in the attribution formats
(tests/kernel/records_ns.py): a probe vm1 -> vm2 dropped by the `v_7` chain is traced
through the agent's chains and the output names the deciding identity (stage, group,
rule, priority, verdict), not handles; the trace tables are gone afterwards, also
when the command is interrupted."""
from __future__ import annotations

import signal
import time

import pytest

from records_ns import BRIDGE_TABLE, Hypervisor, table, udp_probes, wait_for_line

pytestmark = pytest.mark.kernel
DECIDED = "decided by verdict v_7: stage user, ingress, group sg-db, rule no-udp, priority 10: drop"


@pytest.fixture
def hv(tmp_path):
    h = Hypervisor("t", tmp_path)
    try:
        yield h
    finally:
        h.close()


def tables(hv: Hypervisor) -> str:
    return hv.run(hv.hv, "nft", "list", "tables").stdout


def test_trace_names_the_deciding_rule(hv):
    hv.apply(table())
    proc = hv.agent("trace", "--iface", "tap1", "-c", str(hv.doc), "udp", "dport", "9000", "--seconds", "3")
    try:
        assert wait_for_line(proc.stderr, "tracing tap1"), proc.stderr.read()
        assert "secgroup_agent_trace" in tables(hv)
        udp_probes(hv, 1)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    lines = stdout.splitlines()
    assert any(DECIDED in line for line in lines), stdout
    assert any("dispatch by sender (forward, egress)" in line and "jump v_5" in line for line in lines), stdout
    assert any("verdict v_5: stage user, egress, group sg-app, rule app-out" in line for line in lines), stdout
    assert not any("handle" in line for line in lines), stdout
    assert "secgroup_agent_trace" not in tables(hv)


def test_trace_tables_removed_on_interrupt(hv):
    hv.apply(table())
    proc = hv.agent("trace", "--iface", "tap1", "--seconds", "60")
    try:
        assert wait_for_line(proc.stderr, "tracing tap1"), proc.stderr.read()
        assert "secgroup_agent_trace" in tables(hv)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    finally:
        proc.kill()
    deadline = time.monotonic() + 5
    while "secgroup_agent_trace" in tables(hv) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "secgroup_agent_trace" not in tables(hv)
    assert "table inet secgroup_agent" in tables(hv)          # the datapath's table untouched


def test_trace_of_a_bridged_port_names_the_bridge_verdict(tmp_path):
    """A bridged port: the trace's bridge table marks the port's frames (iifname of the
    port); the bridge table's verdict chain is named by its identity."""
    hv = Hypervisor("b", tmp_path, bridged=True)
    try:
        hv.apply(BRIDGE_TABLE)
        proc = hv.agent("trace", "--iface", "tap1", "udp", "dport", "9000", "--seconds", "3")
        try:
            assert wait_for_line(proc.stderr, "tracing tap1"), proc.stderr.read()
            udp_probes(hv, 1)
            stdout, stderr = proc.communicate(timeout=20)
        finally:
            proc.kill()
        assert proc.returncode == 0, stderr
        assert "decided by verdict v_9: stage anti-spoofing-ip, egress: drop" in stdout, stdout
        assert any(line.startswith("[") and " bridge verdict v_9" in line for line in stdout.splitlines()), stdout
        assert "secgroup_agent_trace" not in tables(hv)
    finally:
        hv.close()
