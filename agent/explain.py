"""What the operator reads: `show` (an effective list as a table) and `explain`
(the verdict for one new connection and what decided it). Pure rendering."""
from __future__ import annotations

import ipaddress
from typing import Any, Optional

from agent.errors import InputError, InvalidInput
from agent.model import EGRESS, INGRESS, DesiredState, Interface
from agent.policy import (PROTOCOL_NAMES, PROTOCOL_NUMBERS, Decision, EffectiveList, Entry,
                          Packet, build_effective_list, evaluate)


def describe_match(entry: Entry, direction: str) -> str:
    if entry.match is None:
        return entry.description
    m = entry.match
    side = "from" if direction == INGRESS else "to"
    parts = [m.protocol]
    if m.ports:
        parts.append(f"dport {m.ports}")
    if m.sports:
        parts.append(f"sport {m.sports}")
    who = str(entry.peer) if entry.peer else ", ".join(str(n) for n in m.networks)
    if entry.peer and entry.peer.kind != "cidr":
        count = len(m.networks)
        who += f" ({count} network{'' if count == 1 else 's'})"
    parts.append(f"{side} {who}")
    return " ".join(parts)


def render_list(elist: EffectiveList) -> list[str]:
    head = f"  {'#':>3}  {'stage':<11} {'verdict':<7} {'prio':>4}  {'group/rule':<28} match"
    lines = [head]
    for i, e in enumerate(elist.entries, 1):
        who = f"{e.group_id}/{e.rule_id}" if e.rule_id else (e.group_id or "-")
        prio = str(e.priority) if e.priority is not None else "-"
        what = describe_match(e, elist.direction)
        if e.match is not None and e.description and e.stage != "user":
            what = f"{what}  [{e.description}]"
        elif e.description and e.stage == "user":
            what = f"{what}  # {e.description}"
        lines.append(f"  {i:>3}  {e.stage:<11} {e.verdict:<7} {prio:>4}  {who:<28} {what}")
    return lines


def _guard_text(nic) -> str:
    pairs = ", ".join(f"{p.network}" + (f" ({p.mac})" if p.mac else "") for p in nic.allowed)
    return (f", allowed {pairs}" if pairs else "") + ("" if nic.spoofing_guard else ", spoofing guard OFF")


def render_show(state: DesiredState, nic_name: str) -> str:
    nic = local_interface(state, nic_name)
    inst = state.instance_by_id[nic.instance_id]
    addrs = ", ".join(str(a) for a in nic.addresses) or "none"
    out = [f"interface {nic.name}: instance {inst.id} ({inst.network}), {nic.nic_type}, "
           f"{nic.attachment}, groups {', '.join(inst.groups)}, addresses {addrs}"
           + (f", mac {nic.mac}" if nic.mac else "") + _guard_text(nic)]
    for direction in (INGRESS, EGRESS):
        elist = build_effective_list(state, nic.name, direction)
        out.append("")
        out.append(f"{direction} ({'traffic to the instance' if direction == INGRESS else 'traffic from the instance'})"
                   " - first match decides:")
        out += render_list(elist)
    return "\n".join(out) + "\n"


def local_interface(state: DesiredState, name: str) -> Interface:
    try:
        return state.local_interfaces[name]
    except KeyError:
        known = ", ".join(sorted(state.local_interfaces)) or "none"
        remote = [f"instance {i.id} on host {i.host}" for i in state.instances
                  if i.host not in (None, state.host) and any(n.name == name for n in i.interfaces)]
        where = f"; it belongs to {', '.join(remote)}" if remote else ""
        raise InvalidInput([InputError("interface", name, f"not a local interface on host {state.host}"
                                       f"{where} (known: {known})")]) from None


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
    errors = []
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


def _address(flag: str, text: Optional[str], errors: list, required: bool):
    if text is None:
        if required:
            errors.append(InputError(flag, "(missing)", "is required: the peer's address"))
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        errors.append(InputError(flag, text, "not an IPv4 or IPv6 address"))
        return None


def explain(state: DesiredState, nic_name: str, direction: str, packet: Packet) -> tuple[Decision, EffectiveList]:
    local_interface(state, nic_name)
    elist = build_effective_list(state, nic_name, direction)
    return evaluate(elist, packet), elist


def decision_json(decision: Decision, elist: EffectiveList, packet: Packet) -> dict[str, Any]:
    e = decision.entry
    return {
        "verdict": decision.verdict, "stage": e.stage, "rule": e.rule_id, "group": e.group_id,
        "priority": e.priority, "line": decision.index + 1, "reason": e.description or None,
        "interface": elist.interface.name, "direction": elist.direction,
        "packet": {"src": str(packet.src), "dst": str(packet.dst),
                   "protocol": PROTOCOL_NAMES.get(packet.protocol, packet.protocol),
                   "sport": packet.sport, "dport": packet.dport, "icmp_type": packet.icmp_type},
    }


def render_decision(decision: Decision, elist: EffectiveList, packet: Packet) -> str:
    d = decision_json(decision, elist, packet)
    p = d["packet"]
    ports = f" {p['sport']} -> {p['dport']}" if p["dport"] is not None else ""
    e = decision.entry
    why = {"user": f"rule {e.rule_id} of group {e.group_id} (priority {e.priority})",
           "default": f"default rule of group {e.group_id} (priority {e.priority}): {e.description}",
           "intra-group": f"intra-group access: both are members of {e.group_id}"}.get(
        e.stage, f"{e.stage}: {e.description}")
    return (f"{elist.interface.name} {elist.direction}: {p['protocol']} {p['src']} -> {p['dst']}{ports}\n"
            f"verdict: {decision.verdict.upper()}\n"
            f"decided by line {decision.index + 1}: {why}\n")
