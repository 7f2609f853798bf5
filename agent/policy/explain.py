"""What the operator reads: `show` (an effective list as a table) and `explain`
(the verdict for one new connection and what decided it). Pure rendering."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Optional

from agent.errors import InputError, InvalidInput
from agent.policy.host_views import fleet_interfaces
from agent.model.objects import DROP, EGRESS, INGRESS, DesiredState, Interface
from agent.policy.near_miss import NearMiss, near_misses
from agent.policy.effective import (PROTOCOL_NAMES, PROTOCOL_NUMBERS, Decision, EffectiveList, Entry,
                          Packet, build_effective_list, evaluate, net_text)


def describe_match(entry: Entry, direction: str, addresses: bool = False) -> str:
    """The line's match in words; `addresses` lists a group's or prefix list's members
    instead of counting them."""
    if entry.match is None:
        return entry.description
    m = entry.match
    side = "from" if direction == INGRESS else "to"
    parts = [m.protocol]
    if m.ports:
        parts.append(f"dport {m.ports}")
    if m.sports:
        parts.append(f"sport {m.sports}")
    cidr = entry.peer is None or entry.peer.kind == "cidr"
    who = ", ".join(net_text(n) for n in m.networks) if cidr else str(entry.peer)
    if not cidr:
        count = len(m.networks)
        if addresses:
            who += f" ({', '.join(net_text(n) for n in m.networks) or 'no members'})"
        else:
            who += f" ({count} network{'' if count == 1 else 's'})"
    parts.append(f"{side} {who}")
    return " ".join(parts)


def render_list(elist: EffectiveList, addresses: bool = False) -> list[str]:
    head = f"  {'#':>3}  {'stage':<11} {'verdict':<7} {'prio':>4}  {'group/rule':<28} match"
    lines = [head]
    for i, e in enumerate(elist.entries, 1):
        who = f"{e.group_id}/{e.rule_id}" if e.rule_id else (e.group_id or "-")
        prio = str(e.priority) if e.priority is not None else "-"
        what = describe_match(e, elist.direction, addresses)
        if e.match is not None and e.description and e.stage != "user":
            what = f"{what}  [{e.description}]"
        elif e.description and e.stage == "user":
            what = f"{what}  # {e.description}"
        verdict = "audit" if e.audit else e.verdict      # audit: would drop; accepted, counted, logged
        what += "  [log]" if e.log else ""
        lines.append(f"  {i:>3}  {e.stage:<11} {verdict:<7} {prio:>4}  {who:<28} {what}")
    return lines


def _guard_text(nic) -> str:
    pairs = ", ".join(f"{p.network}" + (f" ({p.mac})" if p.mac else "") for p in nic.allowed)
    return (f", allowed {pairs}" if pairs else "") + ("" if nic.spoofing_guard else ", spoofing guard OFF")


def render_show(state: DesiredState, nic_name: str, addresses: bool = False) -> str:
    view, nic, label = find_interface(state, nic_name)
    inst = view.instance_by_id[nic.instance_id]
    addrs = ", ".join(str(a) for a in nic.addresses) or "none"
    out = [f"interface {label}: instance {inst.id} ({inst.network}), {nic.nic_type}, "
           f"{nic.attachment}, groups {', '.join(inst.groups)}, addresses {addrs}"
           + (f", mac {nic.mac}" if nic.mac else "") + _guard_text(nic)]
    for direction in (INGRESS, EGRESS):
        elist = build_effective_list(view, nic.name, direction)
        out.append("")
        out.append(f"{direction} ({'traffic to the instance' if direction == INGRESS else 'traffic from the instance'})"
                   " - first match decides:")
        out += render_list(elist, addresses)
    return "\n".join(out) + "\n"


def local_interface(state: DesiredState, name: str) -> Interface:
    return find_interface(state, name)[1]


def find_interface(state: DesiredState, name: str) -> tuple[DesiredState, Interface, str]:
    """(the view it is local in, the interface, its label) for `name` (a local interface)
    or `host:name` (an interface on any host of the document, this one included)."""
    if name in state.local_interfaces:
        return state, state.local_interfaces[name], name
    host, sep, bare = name.partition(":")
    if sep:
        for port, view, nic in fleet_interfaces(state):
            if (port.host, port.name) == (host, bare):
                return view, nic, port.label
    known = ", ".join(sorted(state.local_interfaces)) or "none"
    remote = [f"instance {i.id} on host {i.host} (name it {i.host}:{name})" for i in state.instances
              if i.host not in (None, state.host) and any(n.name == name for n in i.interfaces)]
    where = f"; it belongs to {', '.join(remote)}" if remote else ""
    raise InvalidInput([InputError("interface", name, f"not a local interface on host {state.host}"
                                   f"{where} (known: {known})")])


def parse_protocol(text: str) -> int:
    text = text.strip().lower()
    if text in PROTOCOL_NUMBERS:
        return PROTOCOL_NUMBERS[text]
    if text.isdigit() and 0 <= int(text) <= 255:
        return int(text)
    raise InvalidInput([InputError("--protocol", text, "must be tcp, udp, icmp, icmpv6, gre or a number 0-255")])


def build_packet(nic: Interface, direction: str, protocol: str, src: Optional[str], dst: Optional[str],
                 sport: Optional[int], dport: Optional[int], icmp_type: Optional[int]) -> Packet:
    """The local side defaults to the interface's own address of the peer's IP version;
    the peer side must be given. tcp/udp need --dport; --sport defaults to 40000."""
    proto = parse_protocol(protocol)
    peer_flag, peer_text = ("--src", src) if direction == INGRESS else ("--dst", dst)
    local_flag, local_text = ("--dst", dst) if direction == INGRESS else ("--src", src)
    errors: list[InputError] = []
    peer = _address(peer_flag, peer_text, errors, required=True)
    local = _address(local_flag, local_text, errors, required=False)
    if proto in (6, 17) and dport is None:
        errors.append(InputError("--dport", "(missing)", "is required for tcp and udp"))
    if errors:
        raise InvalidInput(errors)
    if local is None:
        same = [a for a in nic.addresses if a.version == peer.version]
        if not same:
            raise InvalidInput([InputError(local_flag, "(missing)", f"{nic.name} has no IPv{peer.version} address; give one")])
        local = same[0]
    if local.version != peer.version:
        raise InvalidInput([InputError(local_flag, str(local), "IPv4 and IPv6 mixed in one packet")])
    ported = proto in (6, 17)
    src_addr, dst_addr = (peer, local) if direction == INGRESS else (local, peer)
    return Packet(src_addr, dst_addr, proto, sport if sport is not None else (40000 if ported else None),
                  dport if ported else None, icmp_type)


def _address(flag: str, text: Optional[str], errors: list[InputError], required: bool):
    if text is None:
        if required:
            errors.append(InputError(flag, "(missing)", "is required: the peer's address"))
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        errors.append(InputError(flag, text, "not an IPv4 or IPv6 address"))
        return None


@dataclass(frozen=True)
class Judgement:
    """One list's verdict on a new connection: where (`label`, as the fleet tools name
    interfaces), the deciding line, and the near misses of a drop."""
    label: str
    decision: Decision
    elist: EffectiveList
    hints: tuple[NearMiss, ...] = ()


def explain(state: DesiredState, nic_name: str, direction: str, packet: Packet) -> tuple[Decision, EffectiveList]:
    j = explain_at(state, nic_name, direction, packet)
    return j.decision, j.elist


def explain_at(state: DesiredState, nic_name: str, direction: str, packet: Packet) -> Judgement:
    """The judgement of `nic_name` (local, or host:name anywhere in the document)."""
    view, nic, label = find_interface(state, nic_name)
    return judge(view, nic, label, direction, packet)


def judge(view: DesiredState, nic: Interface, label: str, direction: str, packet: Packet) -> Judgement:
    elist = build_effective_list(view, nic.name, direction)
    decision = evaluate(elist, packet)
    return Judgement(label, decision, elist, near_misses(view, elist, packet, decision))


def packet_json(packet: Packet) -> dict[str, Any]:
    return {"src": str(packet.src), "dst": str(packet.dst),
            "protocol": PROTOCOL_NAMES.get(packet.protocol, packet.protocol),
            "sport": packet.sport, "dport": packet.dport, "icmp_type": packet.icmp_type}


def decision_json(j: Judgement, packet: Packet) -> dict[str, Any]:
    decision, e = j.decision, j.decision.entry
    return {
        "verdict": decision.verdict, "stage": e.stage, "rule": e.rule_id, "group": e.group_id,
        "priority": e.priority, "line": decision.index + 1, "reason": e.description or None,
        "audit": e.audit, "log": e.log,
        "interface": j.label, "direction": j.elist.direction, "packet": packet_json(packet),
    } | ({"near_misses": [h.to_json() for h in j.hints]} if decision.verdict == DROP else {})


def decided_why(e: Entry) -> str:
    audit = " in audit mode: it would drop; the kernel accepts, counts and logs" if e.audit else ""
    return {"user": f"rule {e.rule_id} of group {e.group_id} (priority {e.priority}){audit}",
            "default": f"default rule of group {e.group_id} (priority {e.priority}): {e.description}",
            "intra-group": f"intra-group access: both are members of {e.group_id}"}.get(
        e.stage, f"{e.stage}: {e.description}")


def hint_lines(j: Judgement, indent: str = "") -> list[str]:
    return [f"{indent}near miss: {h.text}" for h in j.hints]


def render_decision(j: Judgement, packet: Packet) -> str:
    p = packet_json(packet)
    ports = f" {p['sport']} -> {p['dport']}" if p["dport"] is not None else ""
    lines = [f"{j.label} {j.elist.direction}: {p['protocol']} {p['src']} -> {p['dst']}{ports}",
             f"verdict: {j.decision.verdict.upper()}",
             f"decided by line {j.decision.index + 1}: {decided_why(j.decision.entry)}", *hint_lines(j)]
    return "\n".join(lines) + "\n"
