"""The first-hop spoofing guard through the real kernel (SPEC §3 stage 2), routed and
bridged, with frames crafted by scapy (in this process) and sent / sniffed raw inside
the instances' namespaces (tests/kernel/l2tool.py).

Bridged: i1 forges ARP, NA, RA, DAD and DHCP server traffic; i3 (the neighbour) keeps
its ARP/ND entries for i2 and never sees the forged messages. Each drop is paired with a
control: the same frame with i1's `spoofing_guard: false` does arrive (or does poison
the cache), so the test can tell a guard from a frame that never worked.
Routed: the host answers ARP (proxy ARP) and keeps one neighbour table per tap, so a
forged ARP reply or NA from i1 cannot change the host's entry for i2 (on tap-i2); DHCP
server replies from an instance are dropped; DHCP client requests reach the host.
Allowed addresses: a VIP listed by i1 and i2 moves between them (bridged: with
gratuitous ARP, and the neighbour's traffic follows; routed: with the host route).
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from khelpers import PYTHON, both, group

scapy_l2 = pytest.importorskip("scapy.layers.l2")
from scapy.layers.dhcp import BOOTP, DHCP  # noqa: E402
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.inet6 import (ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6NDOptDstLLAddr,  # noqa: E402
                                ICMPv6NDOptPrefixInfo, ICMPv6NDOptSrcLLAddr, IPv6)
from scapy.layers.l2 import ARP, Ether  # noqa: E402

pytestmark = pytest.mark.kernel

L2TOOL = str(Path(__file__).resolve().parent / "l2tool.py")
BCAST, ALL_NODES_MAC = "ff:ff:ff:ff:ff:ff", "33:33:00:00:00:01"
INSTANCES = ("i1", "i2", "i3", "i4")


def open_doc(t, guard: bool = True, vip: str | None = None) -> dict:
    """Everything open (the guard alone decides); i1's guard on or off; i1 and i2 list `vip`."""
    doc = t.doc([group("sg-open", both("ingress"))], {name: ["sg-open"] for name in INSTANCES})
    for inst in doc["instances"]:
        nic = inst["interfaces"][0]
        if inst["id"] == "i1" and not guard:
            nic["spoofing_guard"] = False
        if vip and inst["id"] in ("i1", "i2"):
            nic["allowed_addresses"] = [vip]
    return doc


def link_local(mac: str) -> str:
    b = [int(x, 16) for x in mac.split(":")]
    b[0] ^= 2
    words = [b[0] << 8 | b[1], b[2] << 8 | 0xFF, 0xFE << 8 | b[3], b[4] << 8 | b[5]]
    return "fe80::" + ":".join(f"{w:x}" for w in words)


def send(t, name: str, *frames) -> None:
    t.sb.exec(t.ns[name], PYTHON, L2TOOL, "send", "eth0", *[bytes(f).hex() for f in frames])


class Listen:
    """l2tool sniff/udp in a namespace, running while the test sends."""

    def __init__(self, t, ns: str, *args: str, seconds: float = 1.5):
        self.seconds = seconds
        self.proc = t.sb.popen(ns, PYTHON, L2TOOL, *args, str(seconds), stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
        ready = self.proc.stdout.readline().strip()
        assert ready == "READY", f"l2tool {args} in {ns}: {ready!r}"

    def lines(self) -> list[str]:
        out, _ = self.proc.communicate(timeout=self.seconds + 10)
        return out.split("\n")[:-1]

    def frames(self) -> list:
        return [Ether(bytes.fromhex(x)) for x in self.lines()]


def neigh(t, ns: str, addr: str, dev: str = "eth0") -> str | None:
    out = t.sb.exec(ns, "ip", "-j", "neigh", "show", "to", addr, "dev", dev).stdout
    rows = json.loads(out or "[]")
    return rows[0].get("lladdr") if rows else None


def ping(t, name: str, addr: str, src: str | None = None) -> bool:
    cmd = ["ping", "-c", "1", "-W", "1"] + (["-I", src] if src else []) + [addr]
    return t.sb.exec(t.ns[name], *cmd, check=False).returncode == 0


def settle() -> None:
    time.sleep(1.1)      # past the neighbour table's locktime (1 s): a reply may override


def bridged_only(t) -> None:
    if t.attachment != "bridged":
        pytest.skip("a bridged-port behaviour (routed: the host is the only neighbour)")


def forge_arp(t) -> list:
    """i1 claims i2's IPv4 address: a gratuitous ARP and a reply aimed at i3."""
    i1, i2, i3 = (t.nodes[n] for n in ("i1", "i2", "i3"))
    garp = Ether(src=i1.mac, dst=BCAST) / ARP(op=1, hwsrc=i1.mac, psrc=i2.v4, hwdst="00:00:00:00:00:00", pdst=i2.v4)
    reply = Ether(src=i1.mac, dst=i3.mac) / ARP(op=2, hwsrc=i1.mac, psrc=i2.v4, hwdst=i3.mac, pdst=i3.v4)
    return [garp, reply]


def forge_na(t) -> list:
    """i1 claims i2's IPv6 address: an unsolicited override NA, and an NS from i2's
    address carrying i1's MAC (a receiver records the solicitor's link-layer address)."""
    i1, i2, i3 = (t.nodes[n] for n in ("i1", "i2", "i3"))
    na = (Ether(src=i1.mac, dst=ALL_NODES_MAC) / IPv6(src=i1.v6, dst="ff02::1", hlim=255)
          / ICMPv6ND_NA(tgt=i2.v6, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=i1.mac))
    ns = (Ether(src=i1.mac, dst=i3.mac) / IPv6(src=i2.v6, dst=i3.v6, hlim=255)
          / ICMPv6ND_NS(tgt=i3.v6) / ICMPv6NDOptSrcLLAddr(lladdr=i1.mac))
    return [na, ns]


# -- ARP -----------------------------------------------------------------------------------
def test_forged_arp_does_not_change_the_neighbours_cache(topo):
    t, i2 = topo, topo.nodes["i2"]
    t.apply(open_doc(t))
    if t.attachment == "bridged":
        viewer, dev = t.ns["i3"], "eth0"
        assert ping(t, "i3", i2.v4)
    else:                   # routed: the host's entry for i2 lives on tap-i2
        viewer, dev = t.hv, i2.tap
        assert ping(t, "i3", i2.v4)
    assert neigh(t, viewer, i2.v4, dev) == i2.mac
    settle()
    send(t, "i1", *forge_arp(t))
    time.sleep(0.3)
    assert neigh(t, viewer, i2.v4, dev) == i2.mac
    assert ping(t, "i3", i2.v4)


def test_forged_arp_poisons_without_the_guard(topo):
    """The control: the same frames with i1's guard off do change i3's entry (bridged)."""
    t, i2 = topo, topo.nodes["i2"]
    bridged_only(t)
    t.apply(open_doc(t, guard=False))
    try:
        assert ping(t, "i3", i2.v4) and neigh(t, t.ns["i3"], i2.v4) == i2.mac
        settle()
        send(t, "i1", *forge_arp(t))
        time.sleep(0.3)
        assert neigh(t, t.ns["i3"], i2.v4) == t.nodes["i1"].mac
    finally:
        t.sb.exec(t.ns["i3"], "ip", "neigh", "flush", "dev", "eth0")


def test_arp_from_a_foreign_mac_or_other_ethertype_is_dropped(topo):
    t, i1 = topo, topo.nodes["i1"]
    bridged_only(t)
    t.apply(open_doc(t))
    own = Ether(src=i1.mac, dst=BCAST) / ARP(op=1, hwsrc=i1.mac, psrc=i1.v4, pdst="10.1.0.250")
    foreign_sha = Ether(src=i1.mac, dst=BCAST) / ARP(op=1, hwsrc="02:00:00:00:00:66", psrc=i1.v4, pdst="10.1.0.250")
    lldp = Ether(src=i1.mac, dst=BCAST, type=0x88B5) / (b"x" * 46)     # local experimental ethertype
    listen = Listen(t, t.ns["i3"], "sniff", "eth0")
    send(t, "i1", own, foreign_sha, lldp)
    got = [f for f in listen.frames() if f.src == i1.mac]
    arps = [f[ARP] for f in got if f.haslayer(ARP)]
    assert [a.hwsrc for a in arps] == [i1.mac], got          # the legitimate request only
    assert not [f for f in got if f.type == 0x88B5]
    assert neigh(t, t.ns["i3"], i1.v4) in (None, i1.mac)


# -- IPv6 neighbour discovery -----------------------------------------------------------------
def test_forged_na_does_not_change_the_neighbours_cache(topo):
    t, i2 = topo, topo.nodes["i2"]
    t.apply(open_doc(t))
    viewer, dev = (t.ns["i3"], "eth0") if t.attachment == "bridged" else (t.hv, i2.tap)
    assert ping(t, "i3", i2.v6)
    assert neigh(t, viewer, i2.v6, dev) == i2.mac
    send(t, "i1", *forge_na(t))
    time.sleep(0.3)
    assert neigh(t, viewer, i2.v6, dev) == i2.mac
    assert ping(t, "i3", i2.v6)


def test_forged_na_poisons_without_the_guard(topo):
    t, i2 = topo, topo.nodes["i2"]
    bridged_only(t)
    t.apply(open_doc(t, guard=False))
    try:
        assert ping(t, "i3", i2.v6) and neigh(t, t.ns["i3"], i2.v6) == i2.mac
        send(t, "i1", *forge_na(t))
        time.sleep(0.3)
        assert neigh(t, t.ns["i3"], i2.v6) == t.nodes["i1"].mac
    finally:
        t.sb.exec(t.ns["i3"], "ip", "-6", "neigh", "flush", "dev", "eth0")


@pytest.mark.parametrize("guard", [True, False])
def test_router_advertisement_does_not_reach_the_neighbour(topo, guard):
    """RA (and a DAD probe for i2's address) from i1 never reach i3; i1's DAD probe for
    its own address and its solicitations do. Without the guard, all of them do."""
    t, i1, i2 = topo, topo.nodes["i1"], topo.nodes["i2"]
    bridged_only(t)
    t.apply(open_doc(t, guard=guard))
    ll = link_local(i1.mac)
    ra = (Ether(src=i1.mac, dst=ALL_NODES_MAC) / IPv6(src=ll, dst="ff02::1", hlim=255)
          / ICMPv6ND_RA(routerlifetime=0) / ICMPv6NDOptSrcLLAddr(lladdr=i1.mac)
          / ICMPv6NDOptPrefixInfo(prefix="2001:db8:99::", prefixlen=64, L=1, A=0))
    dad = [Ether(src=i1.mac, dst=ALL_NODES_MAC) / IPv6(src="::", dst="ff02::1", hlim=255) / ICMPv6ND_NS(tgt=tgt)
           for tgt in (i1.v6, i2.v6)]
    listen = Listen(t, t.ns["i3"], "sniff", "eth0")
    send(t, "i1", ra, *dad)
    got = [f for f in listen.frames() if f.src == i1.mac]
    ras = [f for f in got if f.haslayer(ICMPv6ND_RA)]
    targets = sorted(f[ICMPv6ND_NS].tgt for f in got if f.haslayer(ICMPv6ND_NS) and f[IPv6].src == "::")
    if guard:
        assert ras == [] and targets == [i1.v6], got
    else:
        assert len(ras) == 1 and targets == sorted([i1.v6, i2.v6]), got


# -- DHCP -----------------------------------------------------------------------------------
def udp_send(t, name: str, src: str, sport: int, dst: str, dport: int) -> None:
    code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.bind(({src!r}, {sport})); s.sendto(b'offer', ({dst!r}, {dport}))")
    t.sb.exec(t.ns[name], PYTHON, "-c", code)


def test_dhcp_offer_from_an_instance_is_dropped(topo):
    """A DHCP server reply (udp source port 67) from i1 does not reach i2; the same
    datagram from another source port does."""
    t, i1, i2 = topo, topo.nodes["i1"], topo.nodes["i2"]
    t.apply(open_doc(t))
    listen = Listen(t, t.ns["i2"], "udp", "68")
    udp_send(t, "i1", i1.v4, 67, i2.v4, 68)
    udp_send(t, "i1", i1.v4, 1067, i2.v4, 68)
    assert listen.lines() == [f"{i1.v4} 1067"]


def test_dhcp_discover_reaches_the_host(topo):
    """A DHCP client request from 0.0.0.0 (which anti-spoofing would drop) reaches the host."""
    t, i1 = topo, topo.nodes["i1"]
    t.apply(open_doc(t))
    discover = (Ether(src=i1.mac, dst=BCAST) / IP(src="0.0.0.0", dst="255.255.255.255")
                / UDP(sport=68, dport=67) / BOOTP(chaddr=bytes.fromhex(i1.mac.replace(":", "")))
                / DHCP(options=[("message-type", "discover"), "end"]))
    fake = discover.copy()
    fake[IP].src = "10.9.9.9"            # a spoofed source is still dropped
    del fake[IP].chksum, fake[UDP].chksum
    listen = Listen(t, t.hv, "udp", "67")
    send(t, "i1", discover, fake)
    assert listen.lines() == ["0.0.0.0 68"]


# -- allowed addresses: a VIP moves ------------------------------------------------------------
def garp(node, vip: str):
    return Ether(src=node.mac, dst=BCAST) / ARP(op=1, hwsrc=node.mac, psrc=vip, hwdst="00:00:00:00:00:00", pdst=vip)


def take_vip(t, name: str, vip: str, previous: str | None) -> None:
    node = t.nodes[name]
    if previous:
        t.sb.exec(t.ns[previous], "ip", "addr", "del", f"{vip}/32", "dev", "eth0")
    t.sb.exec(t.ns[name], "ip", "addr", "add", f"{vip}/32", "dev", "eth0")
    if t.attachment == "bridged":
        send(t, name, garp(node, vip))           # what keepalived does on a takeover
    else:
        t.sb.exec(t.hv, "ip", "route", "replace", f"{vip}/32", "dev", node.tap)


def test_vip_moves_between_instances(topo):
    t = topo
    net = "10.1.0" if t.attachment == "bridged" else "10.0.0"
    vip = f"{net}.100"
    t.apply(open_doc(t, vip=vip))
    i1, i2, i4 = t.nodes["i1"], t.nodes["i2"], t.nodes["i4"]
    try:
        take_vip(t, "i1", vip, None)
        assert ping(t, "i3", vip)
        assert ping(t, "i1", t.nodes["i3"].v4, src=vip)           # the VIP passes anti-spoofing
        if t.attachment == "bridged":
            assert neigh(t, t.ns["i3"], vip) == i1.mac
            settle()
        take_vip(t, "i2", vip, "i1")
        time.sleep(0.3)
        if t.attachment == "bridged":
            assert neigh(t, t.ns["i3"], vip) == i2.mac           # the gratuitous ARP moved it
        assert ping(t, "i3", vip)
        assert ping(t, "i2", t.nodes["i3"].v4, src=vip)
        # i4 does not list the VIP: its claims and its packets from the VIP are dropped
        t.sb.exec(t.ns["i4"], "ip", "addr", "add", f"{vip}/32", "dev", "eth0")
        if t.attachment == "bridged":
            settle()
            send(t, "i4", garp(i4, vip))
            time.sleep(0.3)
            assert neigh(t, t.ns["i3"], vip) == i2.mac
        assert not ping(t, "i4", t.nodes["i3"].v4, src=vip)
    finally:
        for name in ("i1", "i2", "i4"):
            t.sb.exec(t.ns[name], "ip", "addr", "del", f"{vip}/32", "dev", "eth0", check=False)
        t.sb.exec(t.ns["i3"], "ip", "neigh", "flush", "dev", "eth0", check=False)
        if t.attachment == "routed":
            t.sb.exec(t.hv, "ip", "route", "del", f"{vip}/32", check=False)


def test_legitimate_traffic_still_passes(topo):
    """Connectivity with the guard on: ARP and ND resolution (fresh caches), both ways."""
    t = topo
    t.apply(open_doc(t))
    for name in INSTANCES:
        t.sb.exec(t.ns[name], "ip", "neigh", "flush", "dev", "eth0")
    for src, dst in (("i1", "i2"), ("i2", "i3"), ("i4", "i1")):
        for version in (4, 6):
            addr = t.addr(dst, version)
            assert ping(t, src, addr), f"{src} -> {dst} {addr}"

