"""The semantics engine (SPEC §3): the effective ordered rule list of one interface and
direction, and the verdict of the first line that matches a packet.

Pure: everything comes from a DesiredState; results are frozen. The compiler turns the
same lists into nftables, and its tests check that compile -> evaluate == evaluate here.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Optional

from agent.model.objects import (ACCEPT, DEFAULT_PRIORITY, DROP, EGRESS, INGRESS, INTRANET, VPC,
                         AllowedAddress, DesiredState, Group, Interface, IPAddress, IPNetwork, Peer,
                         PortRange, Rule)
from agent.policy.guard import BEFORE_ND, DHCP_CLIENT, GUARD_LINES, guard_matches

# Stages of SPEC §3, in evaluation order.
STATE, ESSENTIALS, INTRA_GROUP, USER, DEFAULTS, FINAL = (
    "state", "essentials", "intra-group", "user", "default", "final")
STAGES = (STATE, ESSENTIALS, INTRA_GROUP, USER, DEFAULTS, FINAL)

PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "gre": 47}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOL_NUMBERS.items()}
PROTOCOL_FAMILY = {"icmp": 4, "icmpv6": 6}      # protocols bound to one IP version
ND_TYPES = range(133, 137)                       # RS, RA, NS, NA
ANY4, ANY6 = ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")
LINK_LOCAL6 = ipaddress.ip_network("fe80::/10")


@dataclass(frozen=True, order=True)
class Match:
    """The match of one line on a new connection. `networks` is the peer side (ingress:
    source, egress: destination), already split by IP version; None means any value."""
    networks: tuple[IPNetwork, ...]
    protocol: str = "all"
    ports: Optional[PortRange] = None
    sports: Optional[PortRange] = None

    def matches(self, peer: IPAddress, packet: "Packet") -> bool:
        if self.protocol != "all":
            if packet.protocol != PROTOCOL_NUMBERS[self.protocol]:
                return False
            if PROTOCOL_FAMILY.get(self.protocol, peer.version) != peer.version:
                return False
        if self.ports and (packet.dport is None or packet.dport not in self.ports):
            return False
        if self.sports and (packet.sport is None or packet.sport not in self.sports):
            return False
        hosts, nets = self._by_kind
        return (peer.version, int(peer)) in hosts or any(peer in net for net in nets if net.version == peer.version)

    @cached_property
    def _by_kind(self) -> tuple[frozenset, tuple[IPNetwork, ...]]:
        """The single addresses (a group's members: 100,000 in a fleet) as a hashed set,
        the wider networks as they are; built on first use (a frozen dataclass keeps it in
        its __dict__, outside equality and hashing), and shared by every Match over the
        same networks tuple (a group's tuple in the state: every list naming the group)."""
        return split_hosts(self.networks)


_SPLIT: dict[int, tuple[tuple, tuple[frozenset, tuple]]] = {}    # id(networks) -> (networks, split)
_SPLIT_MAX = 1_000_000          # addresses held by the remembered tuples, at most


def split_hosts(networks: tuple[IPNetwork, ...]) -> tuple[frozenset, tuple[IPNetwork, ...]]:
    """`networks` as (single addresses as a hashed set, the wider networks). Remembered per
    tuple object: judging 1,000 flows against 200 lists that name a group of 100,000
    members built the set once per list and line (8.7 s of a revocation plan)."""
    hit = _SPLIT.get(id(networks))
    if hit is not None and hit[0] is networks:
        return hit[1]
    hosts = frozenset((n.version, int(n.network_address)) for n in networks if n.prefixlen == n.max_prefixlen)
    split = (hosts, tuple(n for n in networks if n.prefixlen != n.max_prefixlen))
    if sum(len(t) for t, _ in _SPLIT.values()) + len(networks) > _SPLIT_MAX:
        _SPLIT.clear()
    _SPLIT[id(networks)] = (networks, split)      # holding `networks` keeps its id from being reused
    return split


def forget_hosts() -> None:
    """Drop what split_hosts remembers (plan_revocations calls it when it ends, so the
    sets of a fleet's groups do not stay in a daemon's memory between changes)."""
    _SPLIT.clear()


@dataclass(frozen=True)
class Entry:
    """One line of an effective list. `kind` says how it matches: 'established',
    'invalid', 'nd', 'spoof-mac', 'spoof-ip', a first-hop guard line ('guard-ra',
    'guard-na', 'guard-dad', 'guard-dhcp', 'dhcp-client': agent.policy.guard),
    'match' (by `match`) or 'final'."""
    stage: str
    kind: str
    verdict: str
    match: Optional[Match] = None
    group_id: Optional[str] = None
    rule_id: Optional[str] = None
    priority: Optional[int] = None
    peer: Optional[Peer] = None
    description: str = ""
    audit: bool = False         # a drop rule in audit mode: the kernel accepts, counts, logs
    log: bool = False           # the rule asks for a log line per packet it decides


@dataclass(frozen=True)
class EffectiveList:
    interface: Interface
    direction: str
    entries: tuple[Entry, ...]
    addresses: tuple[IPAddress, ...]        # the interface's own (anti-spoofing)


@dataclass(frozen=True)
class Packet:
    """A new connection's first packet as seen on the interface."""
    src: IPAddress
    dst: IPAddress
    protocol: int
    sport: Optional[int] = None
    dport: Optional[int] = None
    icmp_type: Optional[int] = None
    src_mac: Optional[str] = None
    state: str = "new"                 # new | established | related | invalid
    nd_target: Optional[IPAddress] = None   # neighbour solicitation/advertisement target


@dataclass(frozen=True)
class Decision:
    verdict: str
    entry: Entry
    index: int                         # position in the effective list (0-based)


def net_text(net: IPNetwork) -> str:
    """One address format for the operator: a host network as its bare address, else the CIDR."""
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


@lru_cache(maxsize=1 << 16)
def cidr_network(text: str) -> IPNetwork:
    """A rule's CIDR (already normalised by agent.model.objects), parsed once per process."""
    return ipaddress.ip_network(text)


def peer_networks(state: DesiredState, peer: Peer) -> tuple[IPNetwork, ...]:
    if peer.kind == "cidr":
        return (cidr_network(peer.value),)
    if peer.kind == "prefix_list":
        return state.prefix_list_by_id.get(peer.value, ())
    return state.group_networks.get(peer.value, ())


def rule_order(rule: Rule) -> tuple:
    """Priority ascending; at equal priority every drop before every accept."""
    return (rule.priority, 0 if rule.policy == DROP else 1, rule.group_id, rule.id)


def applies_to(rule: Rule, network: str, nic: Interface) -> bool:
    return network == VPC or rule.nic_type == nic.nic_type


def user_rules(state: DesiredState, groups: tuple[Group, ...], network: str, nic: Interface,
               direction: str) -> list[Rule]:
    rules = {r for g in groups for r in g.rules
             if r.direction == direction and applies_to(r, network, nic)}
    return sorted(rules, key=rule_order)


def default_entries(groups: tuple[Group, ...], direction: str) -> list[Entry]:
    """Stage 5: the implicit rules of basic groups, at priority 110, deduplicated; a line
    two groups bring is the one of the group whose id sorts first (not the first in the
    instance's list: interfaces whose instances list the same groups in another order
    share one policy chain, so the group it names must not depend on the order)."""
    seen: dict[Match, Entry] = {}
    for g in sorted(groups, key=lambda g: g.id):
        for match, what in _default_matches(g, direction):
            seen.setdefault(match, Entry(DEFAULTS, "match", ACCEPT, match, g.id,
                                         priority=DEFAULT_PRIORITY, description=what))
    return list(seen.values())


def _default_matches(group: Group, direction: str) -> list[tuple[Match, str]]:
    if group.type == "enterprise":
        return []
    if direction == EGRESS:
        return [(Match((ANY4, ANY6)), "default: egress open")]
    if group.type != "default":
        return []
    out = [(Match((ANY4,), "icmp"), "default: ICMP"), (Match((ANY6,), "icmpv6"), "default: ICMPv6")]
    tcp_ports = [(22, "SSH"), (3389, "RDP")] + [(80, "HTTP")] * group.allow_http + \
        [(443, "HTTPS")] * group.allow_https
    out += [(Match((ANY4, ANY6), "tcp", PortRange(p, p)), f"default: {name}") for p, name in tcp_ports]
    return out


def essential_entries(state: DesiredState, nic: Interface, direction: str) -> list[Entry]:
    """Stages 1-2 of one interface and direction."""
    entries = [Entry(STATE, "established", ACCEPT, description="established or related connection"),
               Entry(STATE, "invalid", DROP, description="invalid packet")]
    guard = direction == EGRESS and nic.spoofing_guard
    anti_spoofing = guard and state.anti_spoofing
    if anti_spoofing and nic.mac:
        macs = ", ".join(nic.source_macs())
        entries.append(Entry(ESSENTIALS, "spoof-mac", DROP,
                             description=f"anti-spoofing: source MAC is not {macs}"))
    if guard:
        entries += [Entry(ESSENTIALS, kind, GUARD_LINES[kind][0], description=GUARD_LINES[kind][1])
                    for kind in BEFORE_ND]
    entries.append(Entry(ESSENTIALS, "nd", ACCEPT, description="IPv6 neighbour discovery (ICMPv6 133-136)"))
    if guard:
        entries.append(Entry(ESSENTIALS, DHCP_CLIENT[0], DHCP_CLIENT[1], description=DHCP_CLIENT[2]))
    if anti_spoofing:
        entries.append(Entry(ESSENTIALS, "spoof-ip", DROP,
                             description="anti-spoofing: source address is not the interface's "
                                         "(or an allowed address)"))
    return entries


def intra_group_ids(state: DesiredState, nic: Interface) -> tuple[str, ...]:
    """Stage 3: the groups of the interface's instance whose members it lets in (and out)
    before any user rule; none on a classic network's internet interface."""
    inst = state.instance_by_id[nic.instance_id]
    if inst.network != VPC and nic.nic_type != INTRANET:
        return ()
    # sorted, not in the instance's order: the policy chain is shared by instances that
    # list the same groups in any order, and which group's line admits must not depend on it
    return tuple(sorted(gid for gid in inst.groups if state.group_by_id[gid].inner_access == ACCEPT))


def build_effective_list(state: DesiredState, nic_name: str, direction: str,
                         resolve_peers: bool = True) -> EffectiveList:
    """SPEC §3 for one local interface and direction. KeyError if not local.
    `resolve_peers=False` leaves the networks of group and prefix-list peers empty (the
    compiler looks their shared sets up by name and does not need their members)."""
    nic = state.local_interfaces[nic_name]
    inst = state.instance_by_id[nic.instance_id]
    groups = tuple(state.group_by_id[g] for g in inst.groups)
    entries = essential_entries(state, nic, direction)
    for gid in intra_group_ids(state, nic):
        nets = peer_networks(state, Peer("group", gid)) if resolve_peers else ()
        entries.append(Entry(INTRA_GROUP, "match", ACCEPT, Match(nets), gid,
                             peer=Peer("group", gid), description=f"members of {gid}"))
    for r in user_rules(state, groups, inst.network, nic, direction):
        nets = peer_networks(state, r.peer) if resolve_peers or r.peer.kind == "cidr" else ()
        match = Match(nets, r.protocol, r.ports, r.sports)
        audit = r.audits(state.mode)
        entries.append(Entry(USER, "match", ACCEPT if audit else r.policy, match, r.group_id, r.id, r.priority,
                             r.peer, r.description, audit, r.log))
    entries += default_entries(groups, direction)
    entries.append(Entry(FINAL, "final", DROP, description="nothing accepted it"))
    return EffectiveList(nic, direction, tuple(entries), nic.addresses)


def entry_matches(entry: Entry, elist: EffectiveList, packet: Packet) -> bool:
    peer = packet.src if elist.direction == INGRESS else packet.dst
    kind = entry.kind
    if kind == "established":
        return packet.state in ("established", "related")
    if kind == "invalid":
        return packet.state == "invalid"
    if kind == "nd":
        return packet.protocol == 58 and packet.icmp_type in ND_TYPES and packet.src.version == 6
    if kind == "spoof-mac":
        return packet.src_mac is not None and packet.src_mac.lower() not in elist.interface.source_macs()
    if kind == "spoof-ip":
        return not is_own_source(packet.src, elist.addresses, elist.interface.allowed)
    if kind == "match":
        return entry.match.matches(peer, packet)
    guarded = guard_matches(kind, elist.interface, packet)
    if guarded is not None:
        return guarded
    return kind == "final"


def is_own_source(src: IPAddress, addresses: tuple[IPAddress, ...],
                  allowed: tuple[AllowedAddress, ...] = ()) -> bool:
    return src in addresses or (src.version == 6 and src in LINK_LOCAL6) or \
        any(src in p.network for p in allowed if p.network.version == src.version)


def evaluate(elist: EffectiveList, packet: Packet) -> Decision:
    """First match decides (SPEC §3)."""
    for index, entry in enumerate(elist.entries):
        if entry_matches(entry, elist, packet):
            return Decision(entry.verdict, entry, index)
    raise AssertionError("an effective list always ends with the final verdict")
