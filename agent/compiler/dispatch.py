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

from agent.compiler.builder import safe_name
from agent.compiler.guard import port_guard_objects
from agent.compiler.ruleset import TABLE, Chain, NftSet, Table
from agent.compiler.unknown import BRIDGE_PORTS, bridge_output, build_unknown_rules, inet_output, ports_set
from agent.model.objects import BRIDGED, EGRESS, INGRESS, DesiredState

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


def dispatch_objects(state: DesiredState, dispatch: dict[str, list[tuple[str, str]]],
                     unknown: Optional[dict[str, str]] = None):
    """The dispatch maps and base chains; `unknown`: per direction, the statement that
    drops an unknown instance interface's packets (a jump to its verdict chain)."""
    unknown = unknown or {}
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
        owners = _address_owners(state, [nic for nic in nics if nic.name in ids], v, chain_of[INGRESS])
        # An address held by two bridged ports cannot say whose ingress list judges it:
        # drop (fail closed) rather than emit one key twice, which the kernel rejects
        # ("File exists") together with the whole ruleset. A shared VIP (an allowed
        # address of every port that has it) whose holders have the same policy is
        # judged by the first one's chain: their lists are the same.
        maps.append(NftSet(f"ingress_addr{v}", typ, tuple(
            f"{a} : goto {min(chains)}" if len(chains) == 1 or _shared_vip(chains) else f"{a} : drop"
            for a, chains in sorted(owners.items())), interval=False, map_to="verdict"))
        addrs = sorted({str(a) for nic in nics for a in nic.addresses if a.version == v})
        maps.append(NftSet(f"local_addr{v}", typ, tuple(addrs), interval=False))
    out_sets, out_chains = inet_output(state.instance_interfaces, routed, _quote,
                                       unknown.get(INGRESS, "counter drop"))
    return maps + out_sets, _base_chains(bool(ids), state.instance_interfaces, unknown) + out_chains


def _address_owners(state: DesiredState, nics: list, version: int, chains: dict[str, str]) -> dict:
    """address -> {ingress chain: (own address?, policy of the instance)} over `nics`;
    allowed addresses count where they are single addresses (a wider allowed network
    cannot be a key of this map: traffic the host routes to it is not dispatched)."""
    owners: dict = {}
    for nic in nics:
        inst = state.instance_by_id[nic.instance_id]
        policy = (inst.network, nic.nic_type, tuple(sorted(inst.groups)))
        own = [(a, True) for a in nic.addresses if a.version == version]
        vips = [(p.network.network_address, False) for p in nic.allowed
                if p.network.version == version and p.network.num_addresses == 1]
        for a, is_own in own + vips:
            owners.setdefault(a, {}).setdefault(chains[nic.name], (is_own, policy))
    return owners


def _shared_vip(chains: dict) -> bool:
    return not any(own for own, _ in chains.values()) and len({p for _, p in chains.values()}) == 1


def _base_chains(bridged: bool, patterns: tuple[str, ...] = (), unknown: Optional[dict[str, str]] = None
                 ) -> list[Chain]:
    then = unknown or {}
    egress = ["iifname vmap @egress_ports"] + [f"meta mark & 0x{FROM_MASK:08x} vmap @egress_marks"] * bridged + \
        build_unknown_rules("iifname", patterns, then=then.get(EGRESS, "counter drop"))
    ingress = ["oifname vmap @ingress_ports"] + [
        f"meta mark & 0x{TO_MASK:08x} vmap @ingress_marks",
        "ip daddr vmap @ingress_addr4",
        "ip6 daddr vmap @ingress_addr6"] * bridged + \
        build_unknown_rules("oifname", patterns, then=then.get(INGRESS, "counter drop"))
    return [
        Chain("forward_egress", tuple(egress),
              f"type filter hook forward priority {FORWARD_PRIORITY}; policy accept;"),
        Chain("forward_ingress", tuple(ingress),
              f"type filter hook forward priority {INGRESS_PRIORITY}; policy accept;"),
        Chain("input_egress", tuple(egress),
              f"type filter hook input priority {FORWARD_PRIORITY}; policy accept;"),
    ]


def bridge_table(state: DesiredState) -> Optional[Table]:
    """The `bridge` table that stamps bridged frames with port ids and drops the frames of
    unknown instance interfaces (None: no bridged port and no `instance_interfaces`)."""
    ids, patterns = bridged_port_ids(state), state.instance_interfaces
    if not ids and not patterns:
        return None
    if not ids:
        return unknown_bridge_table(state, patterns)
    overflow = sorted(n for n, nic in state.local_interfaces.items()
                      if nic.attachment == BRIDGED and n not in ids)
    port_from = NftSet("port_from", "ifname", tuple(f"{_quote(n)} : 0x{from_mark(i):08x}" for n, i in ids.items()),
                       interval=False, map_to="mark")
    to_chains = {n: f"to_{safe_name(n)}" for n in ids}
    port_to = NftSet("port_to", "ifname", tuple(f"{_quote(n)} : goto {to_chains[n]}" for n in ids),
                     interval=False, map_to="verdict")
    pre = build_unknown_rules("iifname", patterns, BRIDGE_PORTS)
    pre += [f"iifname {{ {', '.join(_quote(n) for n in overflow)} }} drop"] if overflow else []
    pre.append("meta mark set iifname map @port_from")
    guard_maps, guard_chains = port_guard_objects({n: state.local_interfaces[n] for n in ids}, state.anti_spoofing,
                                                  _quote, safe_name)
    pre += ["iifname vmap @port_guard"] * bool(guard_maps)      # first-hop guard (compile_guard)
    chains = [
        Chain("prerouting", tuple(pre), f"type filter hook prerouting priority {BRIDGE_PRIORITY}; policy accept;"),
        Chain("forward", tuple(build_unknown_rules("oifname", patterns, BRIDGE_PORTS)) + ("oifname vmap @port_to",),
              f"type filter hook forward priority {BRIDGE_PRIORITY}; policy accept;"),
    ] + bridge_output(patterns, BRIDGE_PRIORITY) + \
        [Chain(to_chains[n], (f"meta mark set meta mark | 0x{to_mark(i):08x}",)) for n, i in ids.items()]
    known = [ports_set(BRIDGE_PORTS, [n for n, nic in state.local_interfaces.items() if nic.attachment == BRIDGED],
                       _quote)] if patterns else []
    return Table("bridge", TABLE, (*known, port_from, port_to, *guard_maps), tuple(chains + guard_chains))


def unknown_bridge_table(state: DesiredState, patterns: tuple[str, ...]) -> Table:
    """The bridge table of a host with no bridged port: only the unknown-port drops."""
    chains = [Chain(name, tuple(build_unknown_rules(key, patterns, BRIDGE_PORTS)),
                    f"type filter hook {name} priority {BRIDGE_PRIORITY}; policy accept;")
              for name, key in (("prerouting", "iifname"), ("forward", "oifname"))]
    chains += bridge_output(patterns, BRIDGE_PRIORITY)
    return Table("bridge", TABLE, (ports_set(BRIDGE_PORTS, [], _quote),), tuple(chains))
