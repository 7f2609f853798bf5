"""Flow records from real conntrack events: `secgroup-agent logs --flows` in a hypervisor
namespace; vm1 -> vm2 TCP connections through a hand-written table whose verdict chains
set the connection mark (tests/kernel/records_ns.py): one record per closed connection,
naming the admitting identity at both ends (egress of vm1, ingress of vm2), both ends'
interface and instance, packets and bytes both ways (the agent turned accounting on in
the namespace), start and end."""
from __future__ import annotations

import json
import sys
import time

import pytest

from records_ns import Hypervisor, table, wait_for_line

pytestmark = pytest.mark.kernel
CONNECTIONS = 3
SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.77.2.2", 8000)); s.listen(); s.settimeout(20)
print("up", flush=True)
for _ in range({n}):
    c, _ = s.accept(); c.sendall(c.recv(100) * 2); c.close()
"""
CLIENT = """
import socket
for i in range({n}):
    c = socket.create_connection(("10.77.2.2", 8000), timeout=5)
    c.sendall(b"x" * (100 + i)); c.recv(1000); c.close()
"""


@pytest.fixture
def hv(tmp_path):
    h = Hypervisor("f", tmp_path)
    try:
        yield h
    finally:
        h.close()


def test_flow_record_per_closed_connection_names_both_ends(hv):
    hv.apply(table())
    for name in ("nf_conntrack_tcp_timeout_time_wait", "nf_conntrack_tcp_timeout_close"):
        hv.run(hv.hv, "sysctl", "-qw", f"net.netfilter.{name}=1")     # closed entries expire at once
    proc = hv.agent("logs", "-c", str(hv.doc), "--json", "--flows", "--no-packets", "--seconds", "25")
    server = None
    try:
        assert wait_for_line(proc.stderr, "conntrack events"), proc.stderr.read()
        assert hv.run(hv.hv, "sysctl", "-n", "net.netfilter.nf_conntrack_acct").stdout.strip() == "1"
        server = subprocess_in(hv, hv.vm2, SERVER.format(n=CONNECTIONS))
        assert server.stdout.readline().strip() == "up"
        start = time.time()
        hv.run(hv.vm1, sys.executable, "-c", CLIENT.format(n=CONNECTIONS))
        stdout, stderr = proc.communicate(timeout=60)       # the kernel's garbage collector reports
        records = [r for r in map(json.loads, stdout.splitlines())        # expired entries ~10 s late
                   if r["type"] == "flow" and r["dport"] == 8000]
    finally:
        proc.kill()
        if server is not None:
            server.kill()
    assert len(records) == CONNECTIONS, records
    assert len({r["sport"] for r in records}) == CONNECTIONS
    for r in records:
        assert (r["event"], r["protocol"], r["src"], r["dst"], r["dport"]) == ("end", "tcp", "10.77.1.2", "10.77.2.2", 8000)
        src, dst = r["source"], r["destination"]
        assert (src["interface"], src["instance"], dst["interface"], dst["instance"]) == ("tap1", "vm1", "tap2", "vm2")
        assert (src["rule"]["group"], src["rule"]["rule"], src["rule"]["stage"]) == ("sg-app", "app-out", "user")
        assert (dst["rule"]["group"], dst["rule"]["rule"], dst["rule"]["priority"]) == ("sg-db", "db-in", 5)
        assert r["orig"]["packets"] >= 4 and r["reply"]["packets"] >= 3       # handshake, data, fin both ways
        assert r["orig"]["bytes"] > 100 and r["reply"]["bytes"] > 200
        assert r["start"] and r["end"] and r["start"] <= r["end"] and r["revoked"] is None
        assert r["start"] >= time.strftime("%Y-%m-%dT%H:%M", time.gmtime(start - 60))


def subprocess_in(hv: Hypervisor, ns: str, code: str):
    import subprocess
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
