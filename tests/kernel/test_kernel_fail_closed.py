"""Unknown instance interfaces fail closed, and per-interface conntrack quotas
(docs/fail-closed.md), with real traffic in the sandbox hypervisor (routed and bridged):

* an interface matching `instance_interfaces` that the document does not name drops
  everything, from it and to it (other instances, the outside, the host), counted;
* with no daemon running, a tap created after the apply is dropped from its first packet;
* `max_connections: 1000`: an instance opening 3,000 connections gets 1,000 tracked, its
  next new connection is dropped, while another instance's new connections pass.
"""
from __future__ import annotations

import re
import subprocess

import pytest

from khelpers import PYTHON, assert_connection, assert_no_connection, both, group
from sandbox.hypervisor import run

pytestmark = pytest.mark.kernel
PATTERNS = ["tap*", "vnet*"]
BLACKHOLE_PORT = 5555          # the outside drops SYNs to it: the flows stay SYN_SENT


def open_doc(topo, patterns=PATTERNS) -> dict:
    """i1 and i2 open both ways; i3, i4 (and any new tap) are not named."""
    return topo.doc([group("sg-open", both("ingress"), both("egress"))], {m: ["sg-open"] for m in ("i1", "i2")},
                    instance_interfaces=list(patterns))


def verdict_counter(text: str, stage: str) -> int:
    """The packets counted by the verdict chains of `stage` (their comment names it)."""
    return sum(int(n) for n in re.findall(rf'counter packets (\d+) bytes \d+ .*comment "[^"]*/{stage}/', text))


def drop_counters(topo) -> int:
    """The packets counted for unknown interfaces: the bridge table's rules and the inet
    table's unknown-interface verdict chains."""
    bridge = topo.nft_list("bridge") or ""
    total = sum(int(n) for n in re.findall(r'ifname "[^"]+\*"(?: \w+ != @\w+)? counter packets (\d+)', bridge))
    return total + verdict_counter(topo.nft_list("inet") or "", "unknown-interface")


def ping(ns: str, addr: str, tries: int = 1) -> bool:
    """One echo answered (of `tries`, 0.2 s apart: for a control that must pass after
    the neighbour entry failed while the tap was dropped; never for a drop)."""
    cmd = ["ping", "-c", str(tries), "-i", "0.2", "-W", "1", addr]
    return run(["ip", "netns", "exec", ns, *cmd], check=False).returncode == 0


def test_unknown_interface_drops_both_directions(topo):
    topo.apply(open_doc(topo))
    assert_connection(topo, "i1", "i2", "tcp", 80)
    assert_connection(topo, "out", "i1", "tcp", 80)
    before = drop_counters(topo)
    for v in (4, 6):
        assert_no_connection(topo, "i3", "i1", "tcp", 80, v)      # from the unknown tap
        assert_no_connection(topo, "i1", "i3", "tcp", 80, v)      # to it
        assert_no_connection(topo, "out", "i3", "udp", 9999, v)
        assert_no_connection(topo, "i3", "out", "tcp", 80, v)
    assert not ping(topo.hv, topo.addr("i3", 4)), "the host reached the unknown tap"
    assert drop_counters(topo) > before
    # the control: with no patterns the same tap is simply not filtered
    topo.apply(open_doc(topo, patterns=()))
    assert_connection(topo, "i3", "i1", "tcp", 80)
    assert_connection(topo, "out", "i3", "udp", 9999)


def test_tap_created_while_no_daemon_runs_is_dropped(topo):
    topo.apply(open_doc(topo))           # `apply` is one-shot: no process runs afterwards
    bridged = topo.attachment == "bridged"
    addr, addr6 = ("10.1.0.15", "fd01::15") if bridged else ("10.0.0.15", "fd00::15")
    ns = topo.sb.add_instance("n5", "vnet5", [addr, addr6], "52:54:00:00:00:15", topo.attachment)
    before = drop_counters(topo)
    assert not ping(ns, "192.0.2.2"), "the new tap reached the outside"
    assert not ping(topo.ns["out"], addr), "the outside reached the new tap"
    assert not ping(ns, topo.addr("i1", 4)), "the new tap reached i1"
    assert drop_counters(topo) > before
    topo.apply(open_doc(topo, patterns=()))     # the control: unfiltered without the patterns
    assert ping(ns, "192.0.2.2", 3) and ping(topo.ns["out"], addr, 3) and ping(ns, topo.addr("i1", 4), 3)


FLOOD = """
import resource, socket, sys, time
n, dst, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 100, n + 100))
socks = []
for i in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((dst, port))
    socks.append(s)
print("opened", flush=True)
time.sleep(float(sys.argv[4]))
"""


def conntrack_count(topo, src: str) -> int:
    out = run(["ip", "netns", "exec", topo.hv, "conntrack", "-L", "-p", "tcp", "-s", src], check=False)
    return sum(1 for line in out.stdout.splitlines() if "dport=5555" in line)


def test_quota_keeps_other_instances_working(topo):
    run(["ip", "netns", "exec", topo.ns["out"], "nft", "-f", "-"], input=(
        "table inet blackhole { chain in { type filter hook input priority 0; policy accept;\n"
        f"tcp dport {BLACKHOLE_PORT} drop\n}}\n}}\n"))
    doc = open_doc(topo)
    doc["instances"][0]["interfaces"][0]["max_connections"] = 1000
    topo.apply(doc)
    flood = subprocess.Popen(["ip", "netns", "exec", topo.ns["i1"], PYTHON, "-c", FLOOD, "3000",
                              topo.addr("out", 4), str(BLACKHOLE_PORT), "20"], stdout=subprocess.PIPE, text=True)
    try:
        assert flood.stdout.readline().strip() == "opened"
        tracked = conntrack_count(topo, topo.addr("i1", 4))
        assert 900 <= tracked <= 1000, f"i1 has {tracked} tracked connections, quota 1000"
        assert_no_connection(topo, "i1", "out", "tcp", 80)         # i1 is at its quota
        assert_connection(topo, "i2", "out", "tcp", 80)            # i2 is not
        assert_connection(topo, "out", "i2", "tcp", 80)
        quota = verdict_counter(topo.nft_list("inet") or "", "quota")
        assert quota >= 1000, quota
    finally:
        flood.kill()
        flood.wait()
        run(["ip", "netns", "exec", topo.ns["out"], "nft", "delete", "table", "inet", "blackhole"], check=False)
        run(["ip", "netns", "exec", topo.hv, "conntrack", "-F"], check=False)
