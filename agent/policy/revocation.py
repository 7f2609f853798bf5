"""Revocation planning (SPEC §3, pure): which tracked connections the new state no
longer allows. A flow is judged as a new connection by the sender's egress list and
the receiver's ingress list, wherever those are local interfaces; flows touching an
address that a local interface held before but none holds now are revoked too.
Flows still allowed are never touched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from agent.model.objects import DROP, EGRESS, INGRESS, DesiredState, IPAddress
from agent.policy.effective import EffectiveList, Packet, build_effective_list, evaluate, forget_hosts


@dataclass(frozen=True, order=True)
class Flow:
    """A conntrack entry's original-direction tuple."""
    src: IPAddress
    dst: IPAddress
    protocol: int
    sport: Optional[int] = None
    dport: Optional[int] = None
    icmp_type: Optional[int] = None
    icmp_id: Optional[int] = None


@dataclass(frozen=True)
class Revocation:
    flow: Flow
    reason: str


def address_owners(state: DesiredState) -> dict[IPAddress, str]:
    return {a: nic.name for nic in state.local_interfaces.values() for a in nic.addresses}


def plan_revocations(state: DesiredState, flows: Iterable[Flow],
                     previous_addresses: frozenset = frozenset()) -> list[Revocation]:
    owners = address_owners(state)
    lists: dict[tuple[str, str], EffectiveList] = {}

    def verdict(nic: str, direction: str, packet: Packet) -> str:
        key = (nic, direction)
        if key not in lists:
            lists[key] = build_effective_list(state, nic, direction)
        return evaluate(lists[key], packet).verdict

    out = []
    try:
        for flow in flows:
            reason = _revocation_reason(flow, owners, previous_addresses, verdict)
            if reason:
                out.append(Revocation(flow, reason))
    finally:
        forget_hosts()
    return out


def _revocation_reason(flow: Flow, owners: dict, previous: frozenset, verdict) -> Optional[str]:
    for addr in (flow.src, flow.dst):
        if addr in previous and addr not in owners:
            return f"{addr} no longer belongs to a local interface"
    packet = Packet(flow.src, flow.dst, flow.protocol, flow.sport, flow.dport, flow.icmp_type)
    if flow.src in owners and verdict(owners[flow.src], EGRESS, packet) == DROP:
        return f"egress of {owners[flow.src]} no longer allows it"
    if flow.dst in owners and verdict(owners[flow.dst], INGRESS, packet) == DROP:
        return f"ingress of {owners[flow.dst]} no longer allows it"
    return None
