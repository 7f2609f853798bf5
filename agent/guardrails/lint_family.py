"""`lint`'s one-family check (pure): a drop rule whose peer is a whole IP family
(0.0.0.0/0 or ::/0) says nothing about the other family. When the same traffic of the
other family (protocol, ports; any peer) is accepted by a later line of a list that
holds the rule -- typically the default `egress open` -- the drop is half a drop:
`egress drop 0.0.0.0/0 tcp 25` leaves IPv6 SMTP open. Exact (agent.compiler.match_space), per
interface, fleet-wide.
"""
from __future__ import annotations

import ipaddress
from collections import defaultdict
from typing import Callable

from agent.policy.host_views import Port
from agent.model.objects import ACCEPT, DROP, DesiredState, Rule
from agent.policy.near_miss import entry_name
from agent.policy.effective import PROTOCOL_FAMILY, USER, EffectiveList, Match
from agent.compiler.match_space import list_space, match_boxes

WHOLE = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}


def one_family_rules(state: DesiredState) -> list[Rule]:
    """Drop rules whose peer is a whole IP family, on a protocol both families carry."""
    return [r for g in state.groups for r in g.rules
            if r.policy == DROP and r.peer.kind == "cidr" and r.protocol not in PROTOCOL_FAMILY
            and ipaddress.ip_network(r.peer.value).prefixlen == 0]


def twin_openers(rule: Rule, elist: EffectiveList) -> list[str]:
    """The lines of `elist` after `rule` that accept the rule's traffic in the other family."""
    version = ipaddress.ip_network(rule.peer.value).version
    twin = 6 if version == 4 else 4
    at = next((i for i, e in enumerate(elist.entries)
               if e.stage == USER and (e.group_id, e.rule_id) == (rule.group_id, rule.id)), None)
    if at is None:
        return []
    space = list_space(elist, twin)
    lines = {i for box in match_boxes(Match((WHOLE[twin],), rule.protocol, rule.ports, rule.sports), twin)
             for i, _ in space.pieces(box)}
    return [entry_name(elist.entries[i]) for i in sorted(lines)
            if i > at and elist.entries[i].verdict == ACCEPT]


def one_family_findings(state: DesiredState, lists: list[tuple[Port, DesiredState, EffectiveList]],
                        make: Callable[..., object]) -> list:
    """One finding per rule (`make(rule, interfaces, openers, twin)` builds it)."""
    rules = one_family_rules(state)
    if not rules:
        return []
    wanted = {(r.group_id, r.id): r for r in rules}
    hits: dict[tuple[str, str], tuple[list[str], dict[str, None]]] = defaultdict(lambda: ([], {}))
    for port, _view, elist in lists:
        for e in elist.entries:
            rule = wanted.get((e.group_id, e.rule_id)) if e.stage == USER else None
            if rule is None or rule.direction != elist.direction:
                continue
            openers = twin_openers(rule, elist)
            if openers:
                hits[(rule.group_id, rule.id)][0].append(port.label)
                hits[(rule.group_id, rule.id)][1].update(dict.fromkeys(openers))
    out = []
    for key, (interfaces, openers) in hits.items():
        rule = wanted[key]
        twin = 6 if ipaddress.ip_network(rule.peer.value).version == 4 else 4
        out.append(make(rule, tuple(interfaces), tuple(openers), twin))
    return out
