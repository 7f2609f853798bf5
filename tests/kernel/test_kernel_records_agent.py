"""The records against the agent's own datapath: the document applied by `apply` (the
compiler's verdict chains, log statements and connection marks, issue 16), then
`logs --flows` and `trace` name what the kernel did. Skipped until the compiler emits
verdict chains (the rule field `log` exists); the hand-written tables of
test_kernel_nflog/flows/trace cover the readers alone."""
from __future__ import annotations

import json
import sys

import pytest

from agent.model.schema import RuleDoc
from records_ns import DOC, Hypervisor, udp_probes, wait_for_line
from test_kernel_flows import CLIENT, SERVER, subprocess_in

pytestmark = pytest.mark.kernel
PROBES = 8


@pytest.fixture
def hv(tmp_path):
    if "log" not in RuleDoc.model_fields:
        pytest.skip("the compiler does not emit verdict chains yet (rule field `log` missing)")
    h = Hypervisor("a", tmp_path)
    try:
        yield h
    finally:
        h.close()


def test_logs_flows_and_trace_of_the_applied_document(hv):
    hv.doc.write_text(DOC.replace("policy: drop, protocol: udp,", "policy: drop, log: true, protocol: udp,"))
    applied = hv.agent("apply", "-c", str(hv.doc))
    assert applied.wait(timeout=60) == 0, applied.communicate()
    for name in ("nf_conntrack_tcp_timeout_time_wait", "nf_conntrack_tcp_timeout_close"):
        hv.run(hv.hv, "sysctl", "-qw", f"net.netfilter.{name}=1")
    proc = hv.agent("logs", "-c", str(hv.doc), "--json", "--flows", "--seconds", "20")
    server = None
    try:
        assert wait_for_line(proc.stderr, "conntrack events"), proc.stderr.read()
        udp_probes(hv, PROBES)
        server = subprocess_in(hv, hv.vm2, SERVER.format(n=1))
        assert server.stdout.readline().strip() == "up"
        hv.run(hv.vm1, sys.executable, "-c", CLIENT.format(n=1))
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        if server is not None:
            server.kill()
    records = [json.loads(line) for line in stdout.splitlines()]
    packets = [r for r in records if r["type"] == "packet"]
    assert 1 <= len(packets) < PROBES, packets                     # the document's rate limit held some back
    assert all((r["instance"], r["interface"], r["group"], r["rule"], r["verdict"], r["dport"]) ==
               ("vm2", "tap2", "sg-db", "no-udp", "drop", 9000) for r in packets), packets
    summary = json.loads(stderr.strip().splitlines()[-1])
    assert summary["rate_limited"] == PROBES - len(packets) and summary["kernel_gaps"] == 0
    (flow,) = [r for r in records if r["type"] == "flow" and r["dport"] == 8000]
    assert (flow["source"]["rule"]["rule"], flow["destination"]["rule"]["rule"]) == ("app-out", "db-in")
    assert (flow["source"]["instance"], flow["destination"]["instance"]) == ("vm1", "vm2")

    trace = hv.agent("trace", "--iface", "tap1", "-c", str(hv.doc), "udp", "dport", "9000", "--seconds", "3")
    try:
        assert wait_for_line(trace.stderr, "tracing tap1"), trace.stderr.read()
        udp_probes(hv, 1)
        out, err = trace.communicate(timeout=20)
    finally:
        trace.kill()
    assert "stage user, ingress, group sg-db, rule no-udp, priority 10: drop" in out.splitlines()[-1], out
    assert "inet interface tap2 ingress" in out and "policy of groups sg-db (ingress)" in out, out
