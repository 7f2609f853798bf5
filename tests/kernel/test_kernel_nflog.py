"""Packet log lines from a real NFLOG group: `secgroup-agent logs` in a hypervisor
namespace with a hand-written table in the attribution formats (tests/kernel/records_ns.py):
one JSON line per dropped probe up to the kernel's rate limit (`limit rate 5/second burst
5`), naming host, instance, interface, direction, stage, group, rule, priority and the
packet; the probes beyond the limit counted as rate-limited, nothing lost."""
from __future__ import annotations

import json
import signal
import time

import pytest

from records_ns import DROP_KEY, Hypervisor, table, udp_probes, wait_for_line

pytestmark = pytest.mark.kernel
PROBES = 20


@pytest.fixture
def hv(tmp_path):
    h = Hypervisor("l", tmp_path)
    try:
        yield h
    finally:
        h.close()


def test_log_line_per_probe_up_to_rate_limit_then_counted(hv):
    hv.apply(table())
    out_file = hv.tmp / "records.jsonl"
    proc = hv.agent("logs", "-c", str(hv.doc), "--json", "--seconds", "4", "--report-every", "1",
                    "--log-file", str(out_file))
    try:
        assert wait_for_line(proc.stderr, "reading NFLOG group 2701"), proc.stderr.read()
        udp_probes(hv, PROBES)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    records = [json.loads(line) for line in stdout.splitlines()]
    packets = [r for r in records if r["type"] == "packet"]
    assert 5 <= len(packets) <= 7, packets                  # burst 5, then 5/s over the probes' ~0.1 s
    for r in packets:
        assert {k: r[k] for k in ("host", "instance", "interface", "direction", "verdict", "stage", "group",
                                  "rule", "priority", "protocol", "src", "dst", "dport", "audit")} == \
            {"host": "hv", "instance": "vm2", "interface": "tap2", "direction": "ingress", "verdict": "drop",
             "stage": "user", "group": "sg-db", "rule": "no-udp", "priority": 10, "protocol": "udp",
             "src": "10.77.1.2", "dst": "10.77.2.2", "dport": 9000, "audit": False}
    assert len({r["sport"] for r in packets}) == len(packets)          # one line per probe
    summary = json.loads(stderr.strip().splitlines()[-1])
    assert summary["packets_logged"] == len(packets)
    assert summary["rate_limited"] == PROBES - len(packets)            # the chain counted every probe
    assert summary["kernel_overruns"] == summary["kernel_gaps"] == summary["queue_full"] == 0
    losses = [r for r in records if r["type"] == "loss"]
    assert losses and losses[-1]["rate_limited_by_identity"] == {DROP_KEY: PROBES - len(packets)}
    written = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r for r in written if r["type"] == "packet"] == packets    # the file holds the same lines


FOREIGN = """table inet sgr_test {
  chain v_60000 {
    log group 2701 prefix "sg:60000:"
  }
  chain fwd_test {
    type filter hook forward priority -10; policy accept;
    oifname "tap2" meta l4proto udp jump v_60000
  }
}
"""


def test_daemon_records_thread_writes_the_file(hv):
    """`run --records --log-file`: the daemon's reader thread writes a line per logged
    packet (here from a test table of its own beside the agent's; the agent's table drops
    the probes after it), naming the sender's interface and instance from the daemon's
    state, and stops with the daemon."""
    from agent.service.status import query
    out_file, sock = hv.tmp / "daemon-records.jsonl", str(hv.tmp / "agent.sock")
    proc = hv.agent("run", "-c", str(hv.doc), "--socket", sock, "--records", "--log-file", str(out_file))
    try:
        deadline = time.monotonic() + 30
        while not _ready(query, sock) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.1)
        hv.apply(FOREIGN)
        udp_probes(hv, 5)
        while time.monotonic() < deadline and len(_lines(out_file)) < 5:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
    packets = [r for r in _lines(out_file) if r["type"] == "packet"]
    assert len(packets) == 5, packets
    assert all((r["number"], r["interface"], r["instance"], r["dport"]) == (60000, "tap1", "vm1", 9000) for r in packets)


def _ready(query, sock: str) -> bool:
    try:
        return query(sock, timeout=1).ready
    except Exception:  # noqa: BLE001 - not up yet
        return False


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
