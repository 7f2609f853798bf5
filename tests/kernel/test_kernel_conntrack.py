"""agent.kernel.conntrack against the real conntrack table of the hypervisor namespace:
list_flows sees IPv4 and IPv6 entries of every protocol, delete_flows removes TCP, UDP,
ICMP and ICMPv6 entries (and skips ones already gone)."""
from __future__ import annotations

import ipaddress

import pytest

from khelpers import assert_connection, both, group

pytestmark = pytest.mark.kernel


def open_doc(topo) -> dict:
    return topo.doc([group("sg-open", both("ingress"))], {"i1": ["sg-open"]})


def find(flows, src: str, dst: str, protocol: int, dport=None, icmp_type=None):
    src, dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return [f for f in flows if (f.src, f.dst, f.protocol) == (src, dst, protocol)
            and (dport is None or f.dport == dport) and (icmp_type is None or f.icmp_type == icmp_type)]


def test_list_and_delete_every_protocol_and_family(topo):
    topo.apply(open_doc(topo))
    holds = [topo.hold("out", "i1", 7001, v) for v in (4, 6)]
    try:
        for h in holds:
            h.wait_up()
        for v in (4, 6):
            assert_connection(topo, "out", "i1", "udp", 9999, v)
            assert_connection(topo, "out", "i1", "icmp", 0, v)
        flows = topo.flows()
        wanted = []
        for v in (4, 6):
            src, dst = topo.addr("out", v), topo.addr("i1", v)
            tcp = find(flows, src, dst, 6, dport=7001)
            udp = find(flows, src, dst, 17, dport=9999)
            icmp = find(flows, src, dst, 1 if v == 4 else 58, icmp_type=8 if v == 4 else 128)
            for name, got in (("tcp", tcp), ("udp", udp), ("icmp", icmp)):
                assert got, f"IPv{v} {name}: no entry {src} -> {dst} among {flows}"
            assert holds[v == 6].flow() in tcp
            assert all(f.icmp_id is not None and f.sport is None for f in icmp)
            wanted += tcp + udp + icmp
        assert topo.delete_flows(wanted) == len(wanted)
        left = set(topo.flows())
        assert not left & set(wanted), sorted(left & set(wanted), key=str)
        assert topo.delete_flows(wanted) == 0          # already gone: skipped, not counted
        for h in holds:                                 # the TCP flows were cut, too
            h.proc.wait(timeout=3)
            assert h.broken_at is not None
    finally:
        for h in holds:
            h.close()


def test_listing_some_addresses_is_the_same_filtered_by_the_kernel_or_here(topo):
    """list_flows(addresses) through the kernel's filter (two dumps an address) and
    through one dump filtered in the agent (chosen for a small table) list the same
    flows: those from or to the addresses, IPv4 and IPv6."""
    topo.apply(open_doc(topo))
    for v in (4, 6):
        assert_connection(topo, "out", "i1", "udp", 9999, v)
        assert_connection(topo, "out", "i1", "icmp", 0, v)
    addrs = [topo.addr("i1", 4), topo.addr("i1", 6)]
    rows = topo.hv_python(
        "import json; from agent.kernel import conntrack\n"
        f"addrs = {addrs!r}\n"
        "def listed(cheaper):\n"
        "    conntrack._one_dump_cheaper = lambda n: cheaper\n"
        "    return sorted(map(str, conntrack.list_flows(addrs)))\n"
        "print(json.dumps([listed(False), listed(True)]))")
    kernel, here = rows
    assert kernel == here and len(kernel) >= 4, rows
    assert all(any(a in row for a in addrs) for row in kernel), kernel
