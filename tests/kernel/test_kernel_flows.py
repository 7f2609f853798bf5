"""Flow records from real conntrack events: `secgroup-agent logs --flows` in a hypervisor
namespace; vm1 -> vm2 TCP connections through a hand-written table whose verdict chains
set the connection mark (tests/kernel/records_ns.py): one record per closed connection,
naming the admitting identity at both ends (egress of vm1, ingress of vm2), both ends'
interface and instance, packets and bytes both ways (the agent turned accounting on in
the namespace), start and end."""
from __future__ import annotations

import json
import signal
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


HOLD_SERVER = """
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.77.2.2", 8000)); s.listen(); print("up", flush=True)
c, _ = s.accept(); c.settimeout(30)
try:
    while c.recv(100):
        pass
except OSError:
    pass
"""
HOLD_CLIENT = """
import socket, time
c = socket.create_connection(("10.77.2.2", 8000), timeout=5); c.sendall(b"hello")
print("connected", flush=True); time.sleep(30)
"""


def test_revoked_connection_record_names_the_change(hv):
    """The daemon (`run --records --flows`) applies the document; an established vm1 -> vm2
    connection loses its rule in a new revision; revocation deletes it and the flow
    record of its end says so, with the revision."""
    from agent.service.status import query
    out_file, sock = hv.tmp / "flows.jsonl", str(hv.tmp / "agent.sock")
    proc = hv.agent("run", "-c", str(hv.doc), "--socket", sock, "--records", "--flows", "--no-packets",
                    "--log-file", str(out_file))
    server = client = None
    try:
        assert _wait(lambda: _status(query, sock) is not None and _status(query, sock).ready, proc)
        server = subprocess_in(hv, hv.vm2, HOLD_SERVER)
        assert server.stdout.readline().strip() == "up"
        client = subprocess_in(hv, hv.vm1, HOLD_CLIENT)
        assert client.stdout.readline().strip() == "connected", client.communicate()
        before = _status(query, sock).revision
        tmp = hv.doc.with_suffix(".tmp")
        tmp.write_text(hv.doc.read_text().replace("      - {id: db-in,", "      # db-in removed\n      - {id: gone,")
                       .replace("port_range: 8000/8000", "port_range: 8001/8001"))
        tmp.rename(hv.doc)
        assert _wait(lambda: _status(query, sock).revision != before, proc)
        after = _status(query, sock).revision
        assert _wait(lambda: any(r.get("dport") == 8000 and r.get("revoked") for r in _records(out_file)), proc), \
            _records(out_file)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        for p in (proc, server, client):
            if p is not None:
                p.kill()
    (record,) = [r for r in _records(out_file) if r.get("dport") == 8000 and r["type"] == "flow"]
    assert record["event"] == "end" and record["revoked"]["revision"] == after
    assert record["source"]["instance"] == "vm1" and record["destination"]["instance"] == "vm2"
    assert record["orig"]["packets"] >= 3


def _status(query, sock: str):
    try:
        return query(sock, timeout=1)
    except Exception:  # noqa: BLE001 - not up yet
        return None


def _wait(check, proc, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.1)
    return False


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
