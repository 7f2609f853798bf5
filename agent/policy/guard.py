"""The first-hop spoofing guard of SPEC §3 stage 2 (egress): what an instance may send
to set up other hosts' view of the link. Shared by the semantics engine (agent.policy.effective)
and the compiler (agent.compiler.guard), so both speak of the same lines.

Lines, in order, each (kind, verdict, description); `guard_matches` says whether a
packet matches one. ARP is not an IP packet: its guard lives in the bridge table only
(agent.compiler.guard.build_port_guard); `frame_verdict` is its reference.
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache
from dataclasses import dataclass
from typing import Optional

from agent.model.objects import IPAddress, IPNetwork, Interface

RA, REDIRECT, NS, NA = 134, 137, 135, 136
UDP = 17
DHCP_SERVER_PORT = {4: 67, 6: 547}          # server replies come from here
DHCP_CLIENT_PORTS = {4: (68, 67), 6: (546, 547)}
UNSPECIFIED = {4: ipaddress.ip_address("0.0.0.0"), 6: ipaddress.ip_address("::")}
LINK_LOCAL6 = ipaddress.ip_network("fe80::/10")

# kind -> (verdict, description)
GUARD_LINES = {
    "guard-ra": ("drop", "first-hop guard: router advertisement or redirect from an instance"),
    "guard-na": ("drop", "first-hop guard: neighbour advertisement for an address not the interface's"),
    "guard-dad": ("drop", "first-hop guard: DAD solicitation for an address not the interface's"),
    "guard-nd-src": ("drop", "first-hop guard: solicitation or advertisement from an address not the "
                             "interface's"),
    "guard-dhcp": ("drop", "first-hop guard: DHCP/DHCPv6 server reply from an instance"),
}
BEFORE_ND = ("guard-ra", "guard-na", "guard-dad", "guard-nd-src", "guard-dhcp")
ND_SOURCE_TYPES = (133, NS, NA)             # RS, NS, NA: their source must be the interface's
DHCP_CLIENT = ("dhcp-client", "accept", "DHCP/DHCPv6 client request (from 0.0.0.0 or link-local)")


def nd_targets(nic: Interface) -> tuple[IPNetwork, ...]:
    """The addresses an interface may advertise or probe with ND: its own IPv6
    addresses, its allowed IPv6 networks, and link-local (as anti-spoofing allows)."""
    return _collapsed(nic.source_networks(6) + (LINK_LOCAL6,))


def nd_sources(nic: Interface) -> tuple[IPNetwork, ...]:
    """The sources an interface may send RS/NS/NA from: `nd_targets` and `::` (DAD)."""
    return _collapsed(nd_targets(nic) + (ipaddress.ip_network("::/128"),))


@lru_cache(maxsize=1 << 14)
def _collapsed(nets: tuple[IPNetwork, ...]) -> tuple[IPNetwork, ...]:
    """Merged networks, once per distinct input (a compile asks ~7 times per interface)."""
    return tuple(ipaddress.collapse_addresses(nets))


def guard_matches(kind: str, nic: Interface, packet) -> Optional[bool]:
    """Whether `packet` (agent.policy.effective.Packet) matches guard line `kind`; None: not a
    guard kind."""
    version = packet.src.version
    icmp6 = version == 6 and packet.protocol == 58
    if kind == "guard-ra":
        return icmp6 and packet.icmp_type in (RA, REDIRECT)
    if kind == "guard-na":
        return icmp6 and packet.icmp_type == NA and not _own_target(nic, packet.nd_target)
    if kind == "guard-dad":
        return (icmp6 and packet.icmp_type == NS and packet.src == UNSPECIFIED[6]
                and not _own_target(nic, packet.nd_target))
    if kind == "guard-nd-src":
        return icmp6 and packet.icmp_type in ND_SOURCE_TYPES and not any(packet.src in n for n in nd_sources(nic))
    if kind == "guard-dhcp":
        return packet.protocol == UDP and packet.sport == DHCP_SERVER_PORT[version]
    if kind == "dhcp-client":
        sport, dport = DHCP_CLIENT_PORTS[version]
        source_ok = packet.src == UNSPECIFIED[4] if version == 4 else packet.src in LINK_LOCAL6
        return packet.protocol == UDP and source_ok and (packet.sport, packet.dport) == (sport, dport)
    return None


def _own_target(nic: Interface, target: Optional[IPAddress]) -> bool:
    return target is not None and target.version == 6 and any(target in n for n in nd_targets(nic))


ETHER_IP, ETHER_ARP, ETHER_IP6 = 0x0800, 0x0806, 0x86DD


@dataclass(frozen=True)
class Frame:
    """A frame a bridged port sends, as the bridge table's guard sees it: its
    ethertype, source MAC and, for ARP, the sender hardware / protocol addresses."""
    ethertype: int
    src_mac: str
    arp_sha: Optional[str] = None
    arp_spa: Optional[ipaddress.IPv4Address] = None


def frame_verdict(nic: Interface, frame: Frame, anti_spoofing: bool = True) -> str:
    """The bridge guard's verdict on a frame from a bridged port with the guard on:
    'drop' or 'pass' (to the inet table's stages, for IP). The frame's source MAC and
    the ARP sender MAC are checked with anti-spoofing (the document's `anti_spoofing`)."""
    if frame.ethertype not in (ETHER_IP, ETHER_ARP, ETHER_IP6):
        return "drop"
    macs = nic.source_macs()
    if anti_spoofing and macs and frame.src_mac.lower() not in macs:
        return "drop"
    if frame.ethertype != ETHER_ARP:
        return "pass"
    if anti_spoofing and macs and (frame.arp_sha or "").lower() not in macs:
        return "drop"
    spa = frame.arp_spa
    ok = spa is not None and (spa == UNSPECIFIED[4] or any(spa in n for n in nic.source_networks(4)))
    return "pass" if ok else "drop"
