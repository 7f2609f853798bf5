"""Exact shadowing analysis for `lint` (pure).

A user rule is *shadowed* on one effective list when the lines before it, together,
match every new connection it matches: it can never decide a packet there. "Before it"
is the evaluation order of SPEC §3 for that interface and direction: connection state,
essentials (neighbour discovery, anti-spoofing), intra-group accepts, then every user
rule of every group of the instance that sorts earlier (priority ascending, drop before
accept at equal priority, then group id and rule id). See agent.compiler.match_space for which
lines take part in the box arithmetic and why the others cannot matter.

Fleet-wide: every instance of the document is judged as if it were local. A rule is
reported shadowed only when it is shadowed on *every* interface whose list holds it;
a rule no interface uses is unused, not shadowed, and so is a rule that matches no
packet at all (its peer group has no member addresses, its prefix list is empty).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable

from agent.policy.host_views import Port
from agent.model.objects import VPC, DesiredState
from agent.policy.effective import INTRA_GROUP, USER, EffectiveList, Entry
from agent.compiler.match_space import VERSIONS, Space, entry_boxes

log = logging.getLogger(__name__)
LIVE, SHADOWED, EMPTY = "live", "shadowed", "empty"

RuleKey = tuple[str, str]                 # (group id, rule id)


@dataclass(frozen=True)
class RuleUse:
    """How one rule fares across the fleet."""
    interfaces: tuple[str, ...] = ()      # labels of the interfaces whose lists hold it
    shadowed_on: tuple[str, ...] = ()
    covered_by: tuple[str, ...] = ()      # the earlier lines that decide its packets
    empty: bool = False                   # matches no packet at all

    @property
    def shadowed(self) -> bool:
        return bool(self.interfaces) and not self.empty and self.shadowed_on == self.interfaces


@dataclass
class _Acc:
    interfaces: list[str] = field(default_factory=list)
    shadowed_on: list[str] = field(default_factory=list)
    covered_by: dict[str, None] = field(default_factory=dict)
    empty: bool = False


def line_label(entry: Entry) -> str:
    """How `covered_by` names a line of an effective list."""
    if entry.stage == USER:
        return f"{entry.group_id}/{entry.rule_id}"
    if entry.stage == INTRA_GROUP:
        return f"intra-group {entry.group_id}"
    if entry.kind == "spoof-ip":
        return "anti-spoofing (no IPv4 address)"
    return entry.description or entry.kind


def _list_key(view: DesiredState, elist: EffectiveList) -> tuple:
    """Lists with equal keys have equal lines as far as the box arithmetic goes."""
    inst = view.instance_by_id[elist.interface.instance_id]
    nic_type = elist.interface.nic_type if inst.network != VPC else ""
    has_v4 = any(a.version == 4 for a in elist.addresses)
    return inst.groups, inst.network, nic_type, elist.direction, has_v4


def analyse_rules(lists: Iterable[tuple[Port, DesiredState, EffectiveList]]) -> dict[RuleKey, RuleUse]:
    """Every rule used by some list of the fleet -> how it fares. Lists that differ only
    in what the box arithmetic ignores are analysed once; the covering lines are worked
    out afterwards, for the rules shadowed everywhere only."""
    memo: dict[tuple, tuple[EffectiveList, dict[RuleKey, tuple[str, tuple[str, ...]]]]] = {}
    acc: dict[RuleKey, _Acc] = {}
    seen: list[tuple[Port, tuple]] = []
    for port, view, elist in lists:
        key = _list_key(view, elist)
        if key not in memo:
            memo[key] = (elist, analyse_list(elist))
        seen.append((port, key))
    for port, key in seen:
        for rkey, (status, _) in memo[key][1].items():
            a = acc.setdefault(rkey, _Acc())
            a.interfaces.append(port.label)
            a.empty = status == EMPTY
            if status == SHADOWED:
                a.shadowed_on.append(port.label)
    shadowed = frozenset(k for k, a in acc.items() if not a.empty and a.shadowed_on == a.interfaces)
    for elist, statuses in memo.values():
        if shadowed & statuses.keys():
            for rkey, (_, lines) in analyse_list(elist, shadowed).items():
                if rkey in shadowed:
                    acc[rkey].covered_by.update(dict.fromkeys(lines))
    return {k: RuleUse(tuple(a.interfaces), tuple(a.shadowed_on), tuple(a.covered_by), a.empty)
            for k, a in acc.items()}


def analyse_list(elist: EffectiveList, explain: frozenset = frozenset()
                 ) -> dict[RuleKey, tuple[str, tuple[str, ...]]]:
    """Each user rule of one list -> (live | shadowed | empty, covering lines). The
    covering lines are worked out for the rules in `explain` only.

    Walks the list keeping the space no line has matched yet: a rule is shadowed
    exactly when none of its boxes meets that space."""
    spaces = {v: Space(v, record=bool(explain)) for v in VERSIONS}
    out: dict[RuleKey, tuple[str, tuple[str, ...]]] = {}
    for index, entry in enumerate(elist.entries):
        boxes = {v: entry_boxes(entry, elist, v) for v in VERSIONS}
        free = [t for v in VERSIONS for b in boxes[v] for t in spaces[v].take(b, index)]
        if entry.stage != USER:
            continue
        key = (entry.group_id, entry.rule_id)
        if not any(boxes.values()):
            out[key] = (EMPTY, ())
        elif free:
            out[key] = (LIVE, ())
        else:
            lines = sorted({i for v in VERSIONS for b in boxes[v] for i in spaces[v].takers(b)}) \
                if key in explain else []
            out[key] = (SHADOWED, tuple(line_label(elist.entries[i]) for i in lines))
    return out
