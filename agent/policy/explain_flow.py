"""`explain --from A --to B` and `explain --matrix` (pure): a new connection between two
endpoints, judged at each end that is an instance interface of the document -- the
sender's egress list, then the receiver's ingress list (SPEC §3: both must accept).

An endpoint is an instance id (its first intranet interface, else its first), `host:iface`,
an interface name (this host's, or one unique in the document), or an address: an
instance interface's (then that interface) or an outside one (not judged). Each end is
judged in the view of its own host, as that host's agent enforces it (`fleet_views`).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Optional

from agent.errors import InputError, InvalidInput
from agent.policy.explain import (Judgement, decided_why, find_interface, hint_lines, judge, packet_json,
                           parse_protocol)
from agent.policy.host_views import fleet_interfaces
from agent.model.objects import ACCEPT, DROP, EGRESS, INGRESS, INTRANET, DesiredState, Interface, IPAddress
from agent.policy.effective import Packet, build_effective_list, evaluate

ECHO = {4: 8, 6: 128}


@dataclass(frozen=True)
class Endpoint:
    label: str                           # "web-1 (tap-web1)", "hv-02:tap-db2", "198.51.100.7"
    view: Optional[DesiredState]         # the view the interface is local in; None: outside
    nic: Optional[Interface]
    address: Optional[IPAddress]         # pinned by the operator (an address was given)
    interface: str = ""                  # the interface's label: "tap-web1", "hv-02:tap-db2"

    def address_of(self, version: int) -> Optional[IPAddress]:
        if self.address is not None:
            return self.address if self.address.version == version else None
        return next((a for a in self.nic.addresses if a.version == version), None)

    def versions(self) -> tuple[int, ...]:
        if self.address is not None:
            return (self.address.version,)
        return tuple(v for v in (4, 6) if self.address_of(v) is not None)


@dataclass(frozen=True)
class FlowExplanation:
    src: Endpoint
    dst: Endpoint
    packet: Packet
    judgements: tuple[Judgement, ...]    # in order: sender's egress, receiver's ingress

    @property
    def verdict(self) -> str:
        return DROP if any(j.decision.verdict == DROP for j in self.judgements) else ACCEPT


def resolve_endpoint(state: DesiredState, text: str, flag: str) -> Endpoint:
    inst = state.instance_by_id.get(text)
    if inst is not None and inst.interfaces:
        nic = next((n for n in inst.interfaces if n.nic_type == INTRANET), inst.interfaces[0])
        return _interface_endpoint(state, f"{inst.host or state.host}:{nic.name}", flag)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        address = None
    if address is not None:
        for port, view, nic in fleet_interfaces(state):
            if address in nic.addresses:
                return Endpoint(f"{nic.instance_id} ({port.label})", view, nic, address, port.label)
        return Endpoint(f"{address} (outside)", None, None, address)
    if text in state.local_interfaces or ":" in text:
        return _interface_endpoint(state, text, flag)
    named = [port for port, _, _ in fleet_interfaces(state) if port.name == text]
    if len(named) == 1:
        return _interface_endpoint(state, f"{named[0].host}:{text}", flag)
    choices = f" (one of: {', '.join(p.label for p in named)})" if named else ""
    raise InvalidInput([InputError(flag, text, "not an instance id, host:interface, interface name or "
                                   f"address of the document{choices}")])


def _interface_endpoint(state: DesiredState, name: str, flag: str) -> Endpoint:
    try:
        view, nic, label = find_interface(state, name)
    except InvalidInput as exc:
        raise InvalidInput([InputError(flag, name, e.message) for e in exc.errors]) from None
    return Endpoint(f"{nic.instance_id} ({label})", view, nic, None, label)


def choose_version(src: Endpoint, dst: Endpoint, wanted: Optional[int]) -> int:
    common = [v for v in (4, 6) if v in src.versions() and v in dst.versions()]
    if wanted is not None and wanted in common:
        return wanted
    if wanted is None and common:
        return common[0]
    have = f"IPv{wanted}" if wanted else "a common IP version"
    raise InvalidInput([InputError("--from/--to", f"{src.label} -> {dst.label}", f"the two ends have no {have}")])


def flow_packet(src: Endpoint, dst: Endpoint, version: int, protocol: str, dport: Optional[int],
                sport: Optional[int], icmp_type: Optional[int]) -> Packet:
    """The first packet: `icmp` means ICMPv6 between IPv6 ends; tcp/udp need a port."""
    proto = parse_protocol(protocol)
    if proto == 1 and version == 6:
        proto = 58
    if proto == 58 and version == 4:
        raise InvalidInput([InputError("--protocol", protocol, "ICMPv6 between IPv4 ends")])
    ported = proto in (6, 17)
    if ported and dport is None:
        raise InvalidInput([InputError("--dport", "(missing)", "is required for tcp and udp")])
    if icmp_type is None and proto in (1, 58):
        icmp_type = ECHO[version]
    return Packet(src.address_of(version), dst.address_of(version), proto,
                  (sport if sport is not None else 40000) if ported else None,
                  dport if ported else None, icmp_type if proto in (1, 58) else None)


def explain_flow(state: DesiredState, src_text: str, dst_text: str, protocol: str,
                 dport: Optional[int] = None, sport: Optional[int] = None,
                 icmp_type: Optional[int] = None, version: Optional[int] = None) -> FlowExplanation:
    src = resolve_endpoint(state, src_text, "--from")
    dst = resolve_endpoint(state, dst_text, "--to")
    if src.nic is None and dst.nic is None:
        raise InvalidInput([InputError("--from/--to", f"{src_text} -> {dst_text}",
                                       "neither end is an instance interface of the document")])
    packet = flow_packet(src, dst, choose_version(src, dst, version), protocol, dport, sport, icmp_type)
    return judge_flow(src, dst, packet)


def judge_flow(src: Endpoint, dst: Endpoint, packet: Packet) -> FlowExplanation:
    ends = [(e, d) for e, d in ((src, EGRESS), (dst, INGRESS)) if e.nic is not None]
    return FlowExplanation(src, dst, packet, tuple(
        judge(e.view, e.nic, e.interface, d, packet) for e, d in ends))


def flow_json(f: FlowExplanation) -> dict[str, Any]:
    return {"verdict": f.verdict, "from": f.src.label, "to": f.dst.label, "packet": packet_json(f.packet),
            "ends": [{"interface": j.label, "direction": j.elist.direction, "verdict": j.decision.verdict,
                      "stage": j.decision.entry.stage, "group": j.decision.entry.group_id,
                      "rule": j.decision.entry.rule_id, "priority": j.decision.entry.priority,
                      "line": j.decision.index + 1, "reason": j.decision.entry.description or None,
                      "near_misses": [h.to_json() for h in j.hints]} for j in f.judgements]}


def render_flow(f: FlowExplanation) -> str:
    p = packet_json(f.packet)
    ports = f" {p['sport']} -> {p['dport']}" if p["dport"] is not None else ""
    out = [f"{p['protocol']} {f.src.label} -> {f.dst.label}: {p['src']} -> {p['dst']}{ports}"]
    for n, j in enumerate(f.judgements, 1):
        out.append(f"{n}. {j.label} {j.elist.direction}: {j.decision.verdict.upper()} by line "
                   f"{j.decision.index + 1}: {decided_why(j.decision.entry)}")
        out += hint_lines(j, "   ")
    if f.src.nic is None or f.dst.nic is None:
        outside = f.src if f.src.nic is None else f.dst
        out.append(f"   ({outside.label.split()[0]} is outside the document: nothing of this agent judges it)")
    out.append(f"verdict: {f.verdict.upper()}")
    return "\n".join(out) + "\n"


# --- the matrix -------------------------------------------------------------------

def reachability_matrix(state: DesiredState, protocol: str, dport: Optional[int]
                        ) -> tuple[list[str], dict[str, dict[str, dict[int, str]]]]:
    """(instance ids, {from: {to: {version: verdict}}}) for every ordered pair of distinct
    instances with an interface, per IP version both have: the same verdict as
    explain_flow, with each effective list built once."""
    ends = {i.id: resolve_endpoint(state, i.id, "--matrix") for i in state.instances if i.interfaces}
    lists = {(k, d): build_effective_list(e.view, e.nic.name, d) for k, e in ends.items() for d in (EGRESS, INGRESS)}
    ids = list(ends)
    cells: dict[str, dict[str, dict[int, str]]] = {a: {} for a in ids}
    for a in ids:
        for b in (b for b in ids if b != a):
            cells[a][b] = {}
            for v in (v for v in (4, 6) if v in ends[a].versions() and v in ends[b].versions()):
                packet = flow_packet(ends[a], ends[b], v, protocol, dport, None, None)
                drop = any(evaluate(lists[key], packet).verdict == DROP for key in ((a, EGRESS), (b, INGRESS)))
                cells[a][b][v] = DROP if drop else ACCEPT
    return ids, cells


def cell_text(verdicts: dict[int, str]) -> str:
    accepted = [v for v, verdict in verdicts.items() if verdict != DROP]
    if not verdicts:
        return "-"
    if len(accepted) == len(verdicts):
        return "yes"
    return f"v{accepted[0]}" if accepted else "no"


def render_matrix(ids: list[str], cells: dict, protocol: str, dport: Optional[int]) -> str:
    what = f"{protocol}{f' {dport}' if dport is not None else ''}"
    width = max([len(i) for i in ids] + [8])
    out = [f"new {what} connections: row = from, column = to "
           "(yes: accepted, no: dropped, v4/v6: only that IP version, -: no common IP version)",
           " " * width + "  " + "  ".join(f"{b:>{width}}" for b in ids)]
    for a in ids:
        row = [f"{(cell_text(cells[a][b]) if b != a else '.'):>{width}}" for b in ids]
        out.append(f"{a:<{width}}  " + "  ".join(row))
    return "\n".join(out) + "\n"


def matrix_json(ids: list[str], cells: dict, protocol: str, dport: Optional[int]) -> dict[str, Any]:
    return {"protocol": protocol, "dport": dport, "instances": ids,
            "matrix": {a: {b: {f"ipv{v}": verdict for v, verdict in c.items()} for b, c in row.items()}
                       for a, row in cells.items()}}

