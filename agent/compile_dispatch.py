"""Base chains and interface dispatch (part of the pure compiler).

Routed ports are dispatched by name (iifname/oifname verdict maps). Bridged ports are
seen by the inet hooks only as the bridge, so a `bridge` table marks each packet with
its ports' ids and the inet base chains dispatch on the mark (see docs/datapath.md).
"""
from __future__ import annotations

from typing import Optional

from agent.compile import TABLE, Chain, NftSet, Table
from agent.model import BRIDGED, EGRESS, INGRESS, DesiredState

FORWARD_PRIORITY = 0          # filter
INGRESS_PRIORITY = 10         # after the egress chain: a second, independent judgement


def _quote(name: str) -> str:
    return '"' + name.replace('"', '') + '"'


def dispatch_objects(state: DesiredState, dispatch: dict[str, list[tuple[str, str]]]):
    routed = {n for n, nic in state.local_interfaces.items() if nic.attachment != BRIDGED}
    maps = []
    for direction, mapname in ((EGRESS, "egress_ports"), (INGRESS, "ingress_ports")):
        elements = tuple(f"{_quote(n)} : goto {chain}" for n, chain in dispatch[direction] if n in routed)
        maps.append(NftSet(mapname, "ifname", elements, interval=False, map_to="verdict"))
    for v, typ in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        addrs = sorted({str(a) for nic in state.local_interfaces.values() for a in nic.addresses
                        if a.version == v})
        maps.append(NftSet(f"local_addr{v}", typ, tuple(addrs), interval=False))
    chains = [
        Chain("forward_egress", ("iifname vmap @egress_ports",),
              f"type filter hook forward priority {FORWARD_PRIORITY}; policy accept;"),
        Chain("forward_ingress", ("oifname vmap @ingress_ports",),
              f"type filter hook forward priority {INGRESS_PRIORITY}; policy accept;"),
        Chain("input_egress", ("iifname vmap @egress_ports",),
              f"type filter hook input priority {FORWARD_PRIORITY}; policy accept;"),
    ]
    return maps, chains


def bridge_table(state: DesiredState) -> Optional[Table]:
    bridged = [n for n, nic in state.local_interfaces.items() if nic.attachment == BRIDGED]
    if not bridged:
        return None
    raise NotImplementedError("bridged attachment: pending")
