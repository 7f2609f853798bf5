"""Stages 1-2 of the per-interface chains, and the bridge table's first-hop guard (part
of the pure compiler; see docs/datapath.md).

Per-interface chain (inet), in order: connection state, invalid TCP, then on egress
anti-spoofing by MAC, the first-hop guard (agent.policy.guard: router advertisements
and redirects, neighbour advertisements / DAD solicitations for foreign targets,
solicitations and advertisements from foreign sources, DHCP/DHCPv6 server replies), neighbour discovery, DHCP client requests, anti-spoofing
by address (own addresses and allowed addresses). nft 1.0.6 has no `icmpv6 taddr`: the
ND target is read raw, `@th,64,128` (bytes 8-23 of the ICMPv6 header), against 128-bit
integers.

Bridge table, per bridged port with the guard on (prerouting, after the mark is
stamped, before the bridge learns the source MAC): only IPv4, IPv6 and ARP frames; the
port's MAC as frame source and as ARP sender hardware address (when known); one of its
IPv4 addresses, allowed addresses or 0.0.0.0 (a probe) as ARP sender protocol address.
"""
from __future__ import annotations

import ipaddress
from typing import Callable, Iterable, Optional

from agent.model.objects import BRIDGED, Interface, IPNetwork
from agent.policy.effective import Entry
from agent.policy.guard import DHCP_CLIENT_PORTS, DHCP_SERVER_PORT, nd_sources, nd_targets
from agent.compiler.ruleset import Chain, NftSet

ND_TARGET = "@th,64,128"       # the target address of a neighbour solicitation/advertisement
ETHER_TYPES = ("arp", "ip", "ip6")


def render_network(net: IPNetwork) -> str:
    """A host network as its address, any other as a CIDR."""
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def render_target(net: IPNetwork) -> str:
    """An IPv6 network as a raw 128-bit value or range (for `@th,64,128`)."""
    lo, hi = int(net.network_address), int(net.broadcast_address)
    return f"0x{lo:032x}" if lo == hi else f"0x{lo:032x}-0x{hi:032x}"


def _not_in(key: str, items: Iterable[str]) -> str:
    """`key` in none of `items`, as a conjunction of `!=` matches in one rule. Not an
    anonymous set: each costs the kernel a `__set%d` name found by scanning every set
    of the table, quadratic in their number (12 per interface; at 1,000 interfaces the
    sets took 16 of a 39 s commit, docs/kernel-facts.md)."""
    return " ".join(f"{key} != {item}" for item in items)


def build_interface_rules(nic: Interface, essentials: list[Entry],
                          verdict: Callable[[Entry], str] = lambda e: e.verdict,
                          quota: str = "counter drop") -> list[str]:
    """Stages 1-2 of one interface and direction, from its essential entries
    (agent.policy.effective.essential_entries), one or two nft rules per entry.
    `verdict(entry)` is the statement an entry's rules end with (the compiler gives
    `goto v_<n>`, the entry's verdict chain); `quota` that of the conntrack quota."""
    # A TCP packet that opens no connection (not a SYN) and belongs to none is invalid
    # in the stateful sense; dropping it is also what makes revocation cut a TCP flow
    # (with nf_conntrack_tcp_loose, a mid-stream packet would re-create the entry).
    invalid = next((verdict(e) for e in essentials if e.kind == "invalid"), "drop")
    rules = ["ct state established,related accept", f"ct state invalid {invalid}",
             f"tcp flags & (fin | syn | rst | ack) != syn {invalid}"]
    for e in essentials:
        rules += _entry_rules(nic, e.kind, verdict(e))
    if nic.max_connections:     # the conntrack quota: new connections past it (docs/fail-closed.md)
        rules.append(f"ct count over {nic.max_connections} {quota}")
    return rules


def _targets(nic: Interface) -> str:
    return _not_in(ND_TARGET, (render_target(n) for n in nd_targets(nic)))


def _entry_rules(nic: Interface, kind: str, then: str) -> list[str]:
    if kind == "spoof-mac":
        return [f"{_not_in('ether saddr', nic.source_macs())} {then}"]
    if kind == "guard-ra":
        return [f"icmpv6 type nd-router-advert {then}", f"icmpv6 type nd-redirect {then}"]
    if kind == "guard-na":
        return [f"icmpv6 type nd-neighbor-advert {_targets(nic)} {then}"]
    if kind == "guard-dad":
        return [f"ip6 saddr :: icmpv6 type nd-neighbor-solicit {_targets(nic)} {then}"]
    if kind == "guard-nd-src":
        sources = _not_in("ip6 saddr", (render_network(n) for n in nd_sources(nic)))
        return [f"icmpv6 type nd-router-solicit {sources} {then}", f"icmpv6 type 135-136 {sources} {then}"]
    if kind == "guard-dhcp":
        return [f"meta nfproto ipv{v} udp sport {DHCP_SERVER_PORT[v]} {then}" for v in (4, 6)]
    if kind == "nd":
        return ["icmpv6 type 133-136 accept"]
    if kind == "dhcp-client":
        (s4, d4), (s6, d6) = DHCP_CLIENT_PORTS[4], DHCP_CLIENT_PORTS[6]
        return [f"ip saddr 0.0.0.0 udp sport {s4} udp dport {d4} accept",
                f"ip6 saddr fe80::/10 udp sport {s6} udp dport {d6} accept"]
    if kind == "spoof-ip":
        v4 = [render_network(n) for n in nic.source_networks(4)]
        v6 = [render_network(n) for n in ipaddress.collapse_addresses(
            nic.source_networks(6) + (ipaddress.ip_network("fe80::/10"),))]
        return [f"{_not_in('ip saddr', v4)} {then}" if v4 else f"meta nfproto ipv4 {then}",
                f"{_not_in('ip6 saddr', v6)} {then}"]
    return []           # connection state: the two fixed rules above


def guard_chain_name(port: str, safe_name) -> str:
    return f"guard_{safe_name(port)}"


def build_port_guard(nic: Interface, anti_spoofing: bool = True) -> Optional[tuple[str, ...]]:
    """The bridge-table rules of one bridged port (None: no guard here). The MAC lines
    (frame source, ARP sender) are anti-spoofing by MAC: they follow the document's
    `anti_spoofing`, like the inet chain's `ether saddr` line; the ethertype and ARP
    sender address lines are the first-hop guard's."""
    if nic.attachment != BRIDGED or not nic.spoofing_guard:
        return None
    rules = [f"{_not_in('ether type', ETHER_TYPES)} drop"]
    macs = nic.source_macs()
    if macs and anti_spoofing:
        rules += [f"{_not_in('ether saddr', macs)} drop", f"{_not_in('arp saddr ether', macs)} drop"]
    probe = ipaddress.ip_network("0.0.0.0/32")
    senders = [render_network(n) for n in ipaddress.collapse_addresses((probe,) + nic.source_networks(4))]
    rules.append(f"{_not_in('arp saddr ip', senders)} drop")
    return tuple(rules)


def port_guard_objects(nics: dict[str, Interface], anti_spoofing: bool, quote,
                       safe_name) -> tuple[list[NftSet], list[Chain]]:
    """The `port_guard` verdict map (port -> its guard chain) and the guard chains of
    the bridged ports with the guard on ([], [] when none has it)."""
    chains = []
    for name, nic in sorted(nics.items()):
        rules = build_port_guard(nic, anti_spoofing)
        if rules is not None:
            chains.append((name, Chain(guard_chain_name(name, safe_name), rules)))
    if not chains:
        return [], []
    vmap = NftSet("port_guard", "ifname", tuple(f"{quote(n)} : goto {c.name}" for n, c in chains),
                  interval=False, map_to="verdict")
    return [vmap], [c for _, c in chains]
