"""Near misses of a drop (pure): the lines that would have accepted a dropped new
connection if one field of it were different, or if they came earlier.

For a decision made by a user drop rule or by the final drop, every user or default
accept line of the list (intra-group lines aside: they would only say "not a member"),
and on a classic network every accept rule the interface's nic type leaves out, is
compared with the packet field by field. A line that differs in exactly one field
-- peer membership, destination or source port, protocol, IP version, nic type -- is a
near miss; so is a line that matches but comes after the deciding drop (field
`order`). At most three, nearest to the deciding line first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from agent.model.objects import ACCEPT, INGRESS, DesiredState, IPAddress, Rule
from agent.policy.effective import (DEFAULTS, FINAL, INTRA_GROUP, PROTOCOL_FAMILY, PROTOCOL_NAMES,
                          PROTOCOL_NUMBERS, USER, Decision, EffectiveList, Entry, Match, Packet,
                          applies_to, peer_networks)

PEER, PORT, SOURCE_PORT, PROTOCOL, IP_VERSION, NIC_TYPE, ORDER = (
    "peer", "port", "source port", "protocol", "IP version", "nic type", "order")
MAX_HINTS = 3


@dataclass(frozen=True)
class NearMiss:
    line: Optional[int]          # 1-based position in the list; None: a rule not in it (nic type)
    name: str                    # "sg-db/db-from-web", "default sg-ops: SSH", "intra-group sg-a"
    field: str                   # which field differs (or `order`)
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "name": self.name, "field": self.field, "detail": self.detail}

    @property
    def text(self) -> str:
        where = f"line {self.line}" if self.line else "not in this list"
        return f"{self.name} ({where}) would accept: {self.detail}"


def entry_name(e: Entry) -> str:
    if e.stage == USER:
        return f"{e.group_id}/{e.rule_id}"
    if e.stage == DEFAULTS:
        return f"default {e.group_id}: {e.description.removeprefix('default: ')}"
    if e.stage == INTRA_GROUP:
        return f"intra-group {e.group_id}"
    return e.stage


def differences(match: Match, entry_peer, peer: IPAddress, packet: Packet) -> list[tuple[str, str]]:
    """(field, detail) for every field of `packet` that `match` does not accept."""
    out: list[tuple[str, str]] = []
    proto = PROTOCOL_NAMES.get(packet.protocol, str(packet.protocol))
    if match.protocol != "all":
        wanted = PROTOCOL_NUMBERS[match.protocol]
        if {wanted, packet.protocol} == {1, 58}:
            out.append((IP_VERSION, f"it matches {match.protocol} (IPv{PROTOCOL_FAMILY[match.protocol]}) only"))
        elif wanted != packet.protocol:
            out.append((PROTOCOL, f"it matches {match.protocol}, the connection is {proto}"))
    same = [n for n in match.networks if n.version == peer.version]
    if match.networks and not same:
        if not any(f == IP_VERSION for f, _ in out):
            out.append((IP_VERSION, f"its peer has IPv{4 if peer.version == 6 else 6} addresses only"))
    elif not any(peer in n for n in same):
        out.append((PEER, _peer_detail(entry_peer, peer, same)))
    if match.ports and (packet.dport is None or packet.dport not in match.ports):
        out.append((PORT, f"it opens port {match.ports}, the connection is to "
                          f"{packet.dport if packet.dport is not None else proto}"))
    if match.sports and (packet.sport is None or packet.sport not in match.sports):
        out.append((SOURCE_PORT, f"it needs source port {match.sports}, the connection is from {packet.sport}"))
    return out


def _peer_detail(peer_obj, peer: IPAddress, same: list) -> str:
    if peer_obj is not None and peer_obj.kind == "group":
        return f"{peer} is not an address of a member of {peer_obj.value}"
    if peer_obj is not None and peer_obj.kind == "prefix_list":
        return f"{peer} is not in prefix list {peer_obj.value}"
    nets = ", ".join(str(n) for n in same) or "no address"
    return f"{peer} is not in {nets}"


def near_misses(state: DesiredState, elist: EffectiveList, packet: Packet,
                decision: Decision) -> tuple[NearMiss, ...]:
    """At most three near misses of a drop decided by a user rule or the final verdict."""
    if decision.verdict == ACCEPT or decision.entry.stage not in (USER, FINAL):
        return ()
    peer = packet.src if elist.direction == INGRESS else packet.dst
    found: list[tuple[int, NearMiss]] = []
    for i, e in enumerate(elist.entries):
        if e.kind != "match" or e.verdict != ACCEPT or e.stage == INTRA_GROUP:
            continue
        diffs = differences(e.match, e.peer, peer, packet)
        if not diffs and i > decision.index:
            found.append((i - decision.index, NearMiss(i + 1, entry_name(e), ORDER,
                                                       f"line {decision.index + 1} "
                                                       f"({entry_name(decision.entry)}) drops it first")))
        elif len(diffs) == 1:
            found.append((abs(i - decision.index), NearMiss(i + 1, entry_name(e), *diffs[0])))
    for r in excluded_accepts(state, elist):
        match = Match(peer_networks(state, r.peer), r.protocol, r.ports, r.sports)
        if not differences(match, r.peer, peer, packet):
            detail = f"it applies to {r.nic_type} interfaces, {elist.interface.name} is {elist.interface.nic_type}"
            found.append((len(elist.entries), NearMiss(None, f"{r.group_id}/{r.id}", NIC_TYPE, detail)))
    found.sort(key=lambda t: t[0])
    return tuple(m for _, m in found[:MAX_HINTS])


def excluded_accepts(state: DesiredState, elist: EffectiveList) -> list[Rule]:
    """Accept rules of the instance's groups for this direction that the interface's nic
    type leaves out (classic network only)."""
    nic = elist.interface
    inst = state.instance_by_id[nic.instance_id]
    return [r for gid in inst.groups for r in state.group_by_id[gid].rules
            if r.direction == elist.direction and r.policy == ACCEPT
            and not applies_to(r, inst.network, nic)]
