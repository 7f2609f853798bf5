"""The first-hop spoofing guard (SPEC §3 stage 2) with frames crafted by scapy in the
instance containers: b1 (bridged) forges ARP and NA for b2's addresses, sends a router
advertisement and a DHCP offer; an allowed VIP moves from b1 to b2 with gratuitous ARP.
The hypervisor (br0) and b2 are the neighbours whose view must not change; every drop
has a control that does arrive.
"""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from states import BASE, variant
from topology import TopologyError

B1_MAC, B2_MAC = "52:54:00:00:01:21", "52:54:00:00:01:22"
VIP = "10.1.0.100"


@pytest.fixture(autouse=True)
def base(hv):
    hv.apply(BASE)
    yield


def scapy_send(node, *exprs: str) -> None:
    """Send scapy frames (Python expressions) from the node's eth0."""
    code = "from scapy.all import *\nfor f in [" + ", ".join(exprs) + "]:\n    sendp(f, iface='eth0', verbose=0)\n"
    p = node.exec("python3", "-c", code, check=False, timeout=60)
    if p.returncode != 0:
        raise TopologyError(f"{node.name}: scapy send failed: {p.stderr.strip()}")


class Capture:
    """tcpdump in a container for `seconds`, started before the frames are sent."""

    def __init__(self, node, bpf: str, seconds: int = 6):
        self.proc = subprocess.Popen(["docker", "exec", node.cid, "timeout", str(seconds), "tcpdump", "-n", "-l",
                                      "-e", "-i", "eth0", bpf], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        time.sleep(2.0)           # tcpdump is listening

    def lines(self) -> list[str]:
        out, _ = self.proc.communicate(timeout=30)
        return [x for x in out.splitlines() if x.strip()]


def hv_neigh(hv, addr: str) -> str | None:
    rows = json.loads(hv.exec("ip", "-j", "neigh", "show", "to", addr, "dev", "br0").stdout or "[]")
    return rows[0].get("lladdr") if rows else None


def fresh_entry(hv, addr: str) -> None:
    hv.exec("ping", "-c", "1", "-W", "1", addr, check=False)
    time.sleep(1.2)           # past the neighbour locktime: an ARP reply could override now


def test_forged_arp_does_not_change_the_hypervisors_cache(topo, hv):
    fresh_entry(hv, "10.1.0.22")
    assert hv_neigh(hv, "10.1.0.22") == B2_MAC
    scapy_send(topo.node("b1"),
               f"Ether(src='{B1_MAC}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc='{B1_MAC}', psrc='10.1.0.22', pdst='10.1.0.22')",
               f"Ether(src='{B1_MAC}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=2, hwsrc='{B1_MAC}', psrc='10.1.0.22', pdst='10.1.0.1')")
    time.sleep(0.5)
    assert hv_neigh(hv, "10.1.0.22") == B2_MAC


def test_forged_na_does_not_change_the_hypervisors_cache(topo, hv):
    fresh_entry(hv, "fd01::22")
    assert hv_neigh(hv, "fd01::22") == B2_MAC
    scapy_send(topo.node("b1"),
               f"Ether(src='{B1_MAC}', dst='33:33:00:00:00:01')/IPv6(src='fd01::21', dst='ff02::1', hlim=255)"
               f"/ICMPv6ND_NA(tgt='fd01::22', R=0, S=0, O=1)/ICMPv6NDOptDstLLAddr(lladdr='{B1_MAC}')")
    time.sleep(0.5)
    assert hv_neigh(hv, "fd01::22") == B2_MAC


def test_router_advertisement_does_not_reach_the_neighbour(topo):
    cap = Capture(topo.node("b2"), "icmp6 and (ip6[40] == 134 or ip6[40] == 135)")
    scapy_send(topo.node("b1"),
               f"Ether(src='{B1_MAC}', dst='33:33:00:00:00:01')/IPv6(src='fe80::5054:ff:fe00:121', dst='ff02::1', hlim=255)"
               f"/ICMPv6ND_RA(routerlifetime=0)/ICMPv6NDOptSrcLLAddr(lladdr='{B1_MAC}')",
               # control: a neighbour solicitation from b1's own address passes
               f"Ether(src='{B1_MAC}', dst='33:33:00:00:00:01')/IPv6(src='fd01::21', dst='ff02::1', hlim=255)"
               f"/ICMPv6ND_NS(tgt='fd01::99')")
    lines = [x for x in cap.lines() if B1_MAC in x]
    assert not [x for x in lines if "router advertisement" in x], lines
    assert [x for x in lines if "neighbor solicitation" in x], lines


def test_dhcp_offer_from_an_instance_is_dropped(topo, hv):
    def open_68(group):         # b2's lists admit udp/68, so only the guard can drop
        group["rules"].append({"id": "dhcp-client-port", "direction": "ingress", "protocol": "udp",
                               "port_range": "68/68", "source_cidr": "0.0.0.0/0"})
    hv.apply(variant(**{"group:sg-db": open_68}))
    cap = Capture(topo.node("b2"), "udp dst port 68")
    scapy_send(topo.node("b1"), *[
        f"Ether(src='{B1_MAC}', dst='{B2_MAC}')/IP(src='10.1.0.21', dst='10.1.0.22')/UDP(sport={sport}, dport=68)"
        f"/BOOTP(op=2, yiaddr='10.1.0.77')" for sport in (67, 1067)])
    lines = cap.lines()
    assert any(".1067 >" in x for x in lines), lines        # the control arrives
    assert not any(".67 >" in x for x in lines), lines       # the DHCP server reply does not


def test_vip_moves_with_gratuitous_arp(topo, hv):
    def listed(inst):
        inst["interfaces"][0]["allowed_addresses"] = [VIP]
    hv.apply(variant(**{"instance:b1": listed, "instance:b2": listed}))
    b1, b2, outside = topo.node("b1"), topo.node("b2"), topo.node("outside")

    def take(node, mac, previous=None):
        if previous:
            previous.exec("ip", "addr", "del", f"{VIP}/24", "dev", "eth0")
        node.exec("ip", "addr", "add", f"{VIP}/24", "dev", "eth0")
        scapy_send(node, f"Ether(src='{mac}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc='{mac}', psrc='{VIP}', pdst='{VIP}')")
        time.sleep(0.5)

    try:
        take(b1, B1_MAC)
        assert outside.exec("ping", "-c", "1", "-W", "2", VIP, check=False).returncode == 0
        assert hv_neigh(hv, VIP) == B1_MAC
        time.sleep(1.2)
        take(b2, B2_MAC, previous=b1)
        assert hv_neigh(hv, VIP) == B2_MAC                   # the gratuitous ARP moved it
        assert outside.exec("ping", "-c", "1", "-W", "2", VIP, check=False).returncode == 0
        # b1 no longer holds it; a claim from a port that does not list it is dropped
        hv.apply(variant(**{"instance:b2": listed}))
        time.sleep(1.2)
        scapy_send(b1, f"Ether(src='{B1_MAC}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc='{B1_MAC}', psrc='{VIP}', pdst='{VIP}')")
        time.sleep(0.5)
        assert hv_neigh(hv, VIP) == B2_MAC
    finally:
        for node in (b1, b2):
            node.exec("ip", "addr", "del", f"{VIP}/24", "dev", "eth0", check=False)
        hv.exec("ip", "neigh", "flush", "dev", "br0", check=False)
