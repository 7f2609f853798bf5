"""Base chains and interface dispatch (part of the pure compiler).

Routed ports are dispatched by name (iifname/oifname verdict maps). For bridged ports
the inet hooks (reached through br_netfilter) only see the bridge, and conntrack does
not exist in the bridge family; so a `bridge` table stamps each frame with its ports'
ids in the packet mark, and the inet base chains dispatch on the mark:

    mark = 0xA5000000 | from_port << 12 | to_port        (ids 1..4095, 0 = not a port)

* bridge prerouting (priority -300, before br_netfilter): mark = tag | from_port(iif)
* bridge forward (priority -300): mark |= to_port(oif), through a one-rule chain per port
* inet: egress by `mark & 0xfffff000`, ingress by `mark & 0xff000fff`; packets the host
  routes into a bridge carry no to_port, so ingress falls back to the destination
  address (the bridged interfaces' own addresses).
The tag byte keeps foreign marks from dispatching unrelated traffic. The agent owns the
mark of frames that enter from its bridged ports.
"""
from __future__ import annotations

from typing import Optional

from agent.compile import safe_name
from agent.ruleset import TABLE, Chain, NftSet, Table
from agent.model import BRIDGED, EGRESS, INGRESS, DesiredState

FORWARD_PRIORITY = 0          # filter
INGRESS_PRIORITY = 10         # after the egress chain: a second, independent judgement
BRIDGE_PRIORITY = -300        # before br_netfilter hands the frame to the inet hooks
MARK_TAG = 0xA5000000
FROM_MASK, TO_MASK = 0xFFFFF000, 0xFF000FFF
MAX_BRIDGED_PORTS = 4095


def _quote(name: str) -> str:
    return '"' + name.replace('"', '') + '"'


def bridged_port_ids(state: DesiredState) -> dict[str, int]:
    names = sorted(n for n, nic in state.local_interfaces.items() if nic.attachment == BRIDGED)
    return {n: i for i, n in enumerate(names[:MAX_BRIDGED_PORTS], 1)}


def from_mark(port_id: int) -> int:
    return MARK_TAG | port_id << 12


def to_mark(port_id: int) -> int:
    return MARK_TAG | port_id


def dispatch_objects(state: DesiredState, dispatch: dict[str, list[tuple[str, str]]]):
    ids = bridged_port_ids(state)
    chain_of = {d: dict(pairs) for d, pairs in dispatch.items()}
    routed = [n for n, nic in sorted(state.local_interfaces.items()) if nic.attachment != BRIDGED]
    maps = [
        NftSet("egress_ports", "ifname", tuple(f"{_quote(n)} : goto {chain_of[EGRESS][n]}" for n in routed),
               interval=False, map_to="verdict"),
        NftSet("ingress_ports", "ifname", tuple(f"{_quote(n)} : goto {chain_of[INGRESS][n]}" for n in routed),
               interval=False, map_to="verdict"),
        NftSet("egress_marks", "mark", tuple(f"0x{from_mark(i):08x} : goto {chain_of[EGRESS][n]}"
                                             for n, i in ids.items()), interval=False, map_to="verdict"),
        NftSet("ingress_marks", "mark", tuple(f"0x{to_mark(i):08x} : goto {chain_of[INGRESS][n]}"
                                              for n, i in ids.items()), interval=False, map_to="verdict"),
    ]
    for v, typ in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        nics = state.local_interfaces.values()
        owners: dict = {}
        for nic in nics:
            if nic.name in ids:
                for a in nic.addresses:
                    if a.version == v:
                        owners.setdefault(a, set()).add(chain_of[INGRESS][nic.name])
        # An address held by two bridged ports cannot say whose ingress list judges it:
        # drop (fail closed) rather than emit one key twice, which the kernel rejects
        # ("File exists") together with the whole ruleset.
        maps.append(NftSet(f"ingress_addr{v}", typ, tuple(
            f"{a} : goto {min(chains)}" if len(chains) == 1 else f"{a} : drop"
            for a, chains in sorted(owners.items())), interval=False, map_to="verdict"))
        addrs = sorted({str(a) for nic in nics for a in nic.addresses if a.version == v})
        maps.append(NftSet(f"local_addr{v}", typ, tuple(addrs), interval=False))
    return maps, _base_chains(bool(ids))


def _base_chains(bridged: bool) -> list[Chain]:
    egress = ["iifname vmap @egress_ports"] + \
        [f"meta mark & 0x{FROM_MASK:08x} vmap @egress_marks"] * bridged
    ingress = ["oifname vmap @ingress_ports"] + [
        f"meta mark & 0x{TO_MASK:08x} vmap @ingress_marks",
        "ip daddr vmap @ingress_addr4",
        "ip6 daddr vmap @ingress_addr6"] * bridged
    return [
        Chain("forward_egress", tuple(egress),
              f"type filter hook forward priority {FORWARD_PRIORITY}; policy accept;"),
        Chain("forward_ingress", tuple(ingress),
              f"type filter hook forward priority {INGRESS_PRIORITY}; policy accept;"),
        Chain("input_egress", tuple(egress),
              f"type filter hook input priority {FORWARD_PRIORITY}; policy accept;"),
    ]


def bridge_table(state: DesiredState) -> Optional[Table]:
    """The `bridge` table that stamps bridged frames with port ids (None: no bridged port)."""
    ids = bridged_port_ids(state)
    if not ids:
        return None
    overflow = sorted(n for n, nic in state.local_interfaces.items()
                      if nic.attachment == BRIDGED and n not in ids)
    port_from = NftSet("port_from", "ifname", tuple(f"{_quote(n)} : 0x{from_mark(i):08x}" for n, i in ids.items()),
                       interval=False, map_to="mark")
    to_chains = {n: f"to_{safe_name(n)}" for n in ids}
    port_to = NftSet("port_to", "ifname", tuple(f"{_quote(n)} : goto {to_chains[n]}" for n in ids),
                     interval=False, map_to="verdict")
    pre = [f"iifname {{ {', '.join(_quote(n) for n in overflow)} }} drop"] if overflow else []
    pre.append("meta mark set iifname map @port_from")
    chains = [
        Chain("prerouting", tuple(pre), f"type filter hook prerouting priority {BRIDGE_PRIORITY}; policy accept;"),
        Chain("forward", ("oifname vmap @port_to",),
              f"type filter hook forward priority {BRIDGE_PRIORITY}; policy accept;"),
    ] + [Chain(to_chains[n], (f"meta mark set meta mark | 0x{to_mark(i):08x}",)) for n, i in ids.items()]
    return Table("bridge", TABLE, (port_from, port_to), tuple(chains))
