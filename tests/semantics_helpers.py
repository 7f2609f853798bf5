"""Compact builders of in-memory desired-state documents and packets, shared by the
semantics and property tests. No root, no kernel: validate -> effective list -> evaluate."""
from __future__ import annotations

import ipaddress
from typing import Any, Optional

from agent.model.objects import DesiredState
from agent.policy.effective import PROTOCOL_NUMBERS, Decision, Packet, build_effective_list, evaluate
from agent.model.validate import validate_document

HOST = "hv-01"


def rule(direction: str, protocol: str = "all", policy: str = "accept", priority: int = 1,
         ports: Optional[str] = None, sports: Optional[str] = None, **peer: Any) -> dict:
    """A rule dict. The peer is a keyword: src=CIDR, dst=CIDR, src_group=G, dst_group=G,
    src_pl=PL, dst_pl=PL, or the document's own key names (source_cidr=...);
    ingress()/egress() default it to 0.0.0.0/0 when none is given."""
    keys = {"src": "source_cidr", "dst": "dest_cidr", "src_group": "source_group",
            "dst_group": "dest_group", "src_pl": "source_prefix_list", "dst_pl": "dest_prefix_list"}
    out: dict[str, Any] = {"direction": direction, "protocol": protocol, "policy": policy,
                           "priority": priority}
    if ports is not None:
        out["port_range"] = ports
    if sports is not None:
        out["source_port_range"] = sports
    for key, value in peer.items():
        out[keys.get(key, key)] = value
    return out


PEER_KEYS = {"src", "dst", "src_group", "dst_group", "src_pl", "dst_pl", "source_cidr", "dest_cidr",
             "source_group", "dest_group", "source_prefix_list", "dest_prefix_list"}


def ingress(protocol: str = "all", policy: str = "accept", priority: int = 1, **kw: Any) -> dict:
    if not PEER_KEYS & kw.keys():
        kw["src"] = "0.0.0.0/0"
    return rule("ingress", protocol, policy, priority, **kw)


def egress(protocol: str = "all", policy: str = "accept", priority: int = 1, **kw: Any) -> dict:
    if not PEER_KEYS & kw.keys():
        kw["dst"] = "0.0.0.0/0"
    return rule("egress", protocol, policy, priority, **kw)


def group(gid: str, *rules: dict, type: str = "custom", **kw: Any) -> dict:
    return {"id": gid, "type": type, "rules": list(rules), **kw}


def nic(name: str, *addresses: str, **kw: Any) -> dict:
    return {"name": name, "addresses": list(addresses), **kw}


def inst(iid: str, groups: list[str], *nics: dict, **kw: Any) -> dict:
    return {"id": iid, "security_groups": list(groups), "interfaces": list(nics), **kw}


def doc(groups: list[dict], instances: list[dict], prefix_lists: Optional[list[dict]] = None,
        **top: Any) -> dict:
    out: dict[str, Any] = {"security_groups": groups, "instances": instances, **top}
    if prefix_lists is not None:
        out["prefix_lists"] = prefix_lists
    return out


def state_of(document: dict) -> DesiredState:
    return validate_document(document, host=HOST)


def pkt(src: str, dst: str, protocol: str = "tcp", dport: Optional[int] = None,
        sport: Optional[int] = None, icmp_type: Optional[int] = None,
        mac: Optional[str] = None, state: str = "new") -> Packet:
    proto = PROTOCOL_NUMBERS[protocol] if protocol in PROTOCOL_NUMBERS else int(protocol)
    if proto in (6, 17) and sport is None:
        sport = 40000
    return Packet(ipaddress.ip_address(src), ipaddress.ip_address(dst), proto, sport, dport,
                  icmp_type, mac, state)


def decide(state: DesiredState, iface: str, direction: str, packet: Packet) -> Decision:
    return evaluate(build_effective_list(state, iface, direction), packet)
