"""`secgroup-agent diff`: what a new desired state changes, interface by interface (pure,
except `live_revocations`, which reads conntrack).

For every interface of the fleet (every instance judged as if local, as `lint` does) and
each direction, it reports the effective lines added, removed, moved (their order
relative to the lines both lists share changed) and changed (same rule, other content,
e.g. a peer group's addresses), and the *verdict changes* those cause.

Verdict changes are exact, region by region: each list splits the space of new
connections (peer address x protocol x source port x destination port, per IP version;
see agent.compiler.match_space) into boxes, each decided by one line. Every old region is cut by
the new list's regions; where the two deciding lines give different verdicts, that
part of the space changed verdict. No sampling: every packet of a reported region
changes verdict, and every packet that changes verdict is in a reported region (for
new connections from the interface's own addresses; neighbour discovery aside).
"""
from __future__ import annotations

import difflib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from agent.compiler.boxes import Box
from agent.policy.explain import describe_match
from agent.policy.host_views import Port, fleet_interfaces, port_of
from agent.model.objects import DIRECTIONS, DesiredState, Interface
from agent.policy.effective import (DEFAULTS, FINAL, INTRA_GROUP, PROTOCOL_NAMES, USER, EffectiveList,
                          Entry, build_effective_list, net_text)
from agent.compiler.match_space import VERSIONS, describe_parts, full_box, list_space

if TYPE_CHECKING:                     # --live only: conntrack and revoke are imported lazily
    from agent.policy.revocation import Flow, Revocation

log = logging.getLogger(__name__)
ADDED, REMOVED, MOVED, CHANGED = "added", "removed", "moved", "changed"
VERB = {"accept": "accepted", "drop": "dropped"}


@dataclass(frozen=True)
class LineChange:
    change: str                           # added | removed | moved | changed
    line: str                             # which line: "sg-db/db-from-web", "default sg-ops"
    old_position: Optional[int]           # 1-based, as `show` numbers them
    new_position: Optional[int]
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"change": self.change, "line": self.line, "old_position": self.old_position,
                "new_position": self.new_position, "text": self.text}


@dataclass(frozen=True)
class VerdictChange:
    traffic: str                          # "tcp 5432 from 10.0.1.0/24"
    old_verdict: str
    old_by: str
    new_verdict: str
    new_by: str
    old_line: str = ""                    # the deciding lines, named as in `lines`
    new_line: str = ""
    version: int = field(default=4, compare=False)
    boxes: tuple[Box, ...] = field(default=(), compare=False)   # the space it tells of, exactly

    @property
    def text(self) -> str:
        return (f"{self.traffic} was {VERB[self.old_verdict]} {self.old_by}, "
                f"now {VERB[self.new_verdict]} {self.new_by}")

    def to_json(self) -> dict[str, Any]:
        return {"traffic": self.traffic, "old": {"verdict": self.old_verdict, "line": self.old_line},
                "new": {"verdict": self.new_verdict, "line": self.new_line}, "text": self.text}


@dataclass(frozen=True)
class DirectionDiff:
    direction: str
    lines: tuple[LineChange, ...]
    verdicts: tuple[VerdictChange, ...]


@dataclass(frozen=True)
class InterfaceDiff:
    interface: str                        # label: name, or host:name off the document's host
    status: str                           # added | removed | changed
    notes: tuple[str, ...]
    directions: tuple[DirectionDiff, ...]

    def to_json(self) -> dict[str, Any]:
        return {"interface": self.interface, "status": self.status, "notes": list(self.notes),
                "directions": [{"direction": d.direction,
                                "lines": [c.to_json() for c in d.lines],
                                "verdict_changes": [v.to_json() for v in d.verdicts]}
                               for d in self.directions]}


# --- effective lines ---------------------------------------------------------------

def line_id(e: Entry) -> tuple:
    return e.stage, e.kind, e.group_id, e.rule_id if e.stage == USER else e.description


def line_name(e: Entry) -> str:
    if e.stage == USER:
        return f"{e.group_id}/{e.rule_id}"
    if e.stage in (DEFAULTS, INTRA_GROUP):
        return f"{e.stage} {e.group_id}: {e.description}"
    return f"{e.stage}: {e.description}"


def line_text(e: Entry, direction: str) -> str:
    prio = f" priority {e.priority}" if e.priority is not None else ""
    verdict = "audit (would drop; accepted, logged)" if e.audit else e.verdict
    return f"{verdict}{prio}: {describe_match(e, direction)}" + (" [log]" if e.log else "")


def _content(e: Entry) -> tuple:
    return e.verdict, e.match, e.priority, e.peer, e.audit, e.log


def line_changes(old: EffectiveList, new: EffectiveList) -> list[LineChange]:
    """Lines removed, added, moved (out of the longest common order) and changed."""
    old_pos = {line_id(e): i for i, e in enumerate(old.entries)}
    new_pos = {line_id(e): i for i, e in enumerate(new.entries)}
    out = [_change(REMOVED, e, i, None, old.direction) for i, e in enumerate(old.entries)
           if line_id(e) not in new_pos]
    out += [_change(ADDED, e, None, i, new.direction) for i, e in enumerate(new.entries)
            if line_id(e) not in old_pos]
    common_old = [k for k in old_pos if k in new_pos]
    common_new = [k for k in new_pos if k in old_pos]
    matcher = difflib.SequenceMatcher(None, common_old, common_new, autojunk=False)
    kept = {common_old[b.a + k] for b in matcher.get_matching_blocks() for k in range(b.size)}
    for key in common_new:
        o, n = old.entries[old_pos[key]], new.entries[new_pos[key]]
        if key not in kept:
            out.append(_change(MOVED, n, old_pos[key], new_pos[key], new.direction))
        if _content(o) != _content(n):
            out.append(LineChange(CHANGED, line_name(n), old_pos[key] + 1, new_pos[key] + 1,
                                  _what_changed(o, n, new.direction)))
    return out


def _change(change: str, e: Entry, old: Optional[int], new: Optional[int], direction: str) -> LineChange:
    return LineChange(change, line_name(e), None if old is None else old + 1,
                      None if new is None else new + 1, line_text(e, direction))


def _what_changed(o: Entry, n: Entry, direction: str) -> str:
    """'before -> after', or the peer addresses that came and went when only they did."""
    only_peers = (o.match is not None and n.match is not None and o.verdict == n.verdict
                  and o.priority == n.priority and o.peer == n.peer
                  and o.match.networks != n.match.networks
                  and (o.match.protocol, o.match.ports, o.match.sports) ==
                  (n.match.protocol, n.match.ports, n.match.sports))
    if not only_peers:
        return f"{line_text(o, direction)} -> {line_text(n, direction)}"
    came = [f"+{net_text(x)}" for x in n.match.networks if x not in o.match.networks]
    went = [f"-{net_text(x)}" for x in o.match.networks if x not in n.match.networks]
    return f"{line_text(n, direction)}; peer addresses {' '.join(came + went)}"


# --- verdict changes --------------------------------------------------------------

def decided_by(e: Entry) -> str:
    if e.stage == USER:
        return f"by {e.group_id}/{e.rule_id}" + (" (audit: would drop)" if e.audit else "")
    if e.stage == DEFAULTS:
        return f"by the default rule of {e.group_id} ({e.description.removeprefix('default: ')})"
    if e.stage == INTRA_GROUP:
        return f"by intra-group access of {e.group_id}"
    if e.stage == FINAL:
        return "(final)"
    return f"({e.description})"


def verdict_changes(old: EffectiveList, new: EffectiveList) -> list[VerdictChange]:
    """Exact: every part of the space whose first-match verdict differs."""
    out = []
    for v in VERSIONS:
        old_regions = list_space(old, v).pieces(full_box(v))
        new_space = list_space(new, v)
        changed: dict[tuple[int, int], list[Box]] = defaultdict(list)
        for i, region in old_regions:
            for j, part in new_space.pieces(region):
                if old.entries[i].verdict != new.entries[j].verdict:
                    changed[(i, j)].append(part)
        for (i, j), boxes in sorted(changed.items()):
            o, n = old.entries[i], new.entries[j]
            out += [VerdictChange(words, o.verdict, decided_by(o), n.verdict, decided_by(n),
                                  line_name(o), line_name(n), v, parts)
                    for words, parts in describe_parts(boxes, v, new.direction)]
    return out


def _same_space(old: EffectiveList, new: EffectiveList) -> bool:
    has4 = [any(a.version == 4 for a in x.addresses) for x in (old, new)]
    return old.entries == new.entries and has4[0] == has4[1]


def direction_diff(old: EffectiveList, new: EffectiveList) -> Optional[DirectionDiff]:
    if _same_space(old, new):
        return None
    lines, verdicts = line_changes(old, new), verdict_changes(old, new)
    return DirectionDiff(new.direction, tuple(lines), tuple(verdicts)) if lines or verdicts else None


# --- documents --------------------------------------------------------------------

def _ports(state: DesiredState, home: str) -> dict[tuple[str, str], tuple[Port, DesiredState, Interface]]:
    return {(p.host, p.name): (port_of(p.host, p.name, home), view, nic)
            for p, view, nic in fleet_interfaces(state)}


def _interface_notes(old: DesiredState, new: DesiredState, a: Interface, b: Interface) -> list[str]:
    notes = []
    ia, ib = old.instance_by_id[a.instance_id], new.instance_by_id[b.instance_id]
    if ia.id != ib.id:
        notes.append(f"instance {ia.id} -> {ib.id}")
    if ia.groups != ib.groups:
        notes.append(f"groups {', '.join(ia.groups)} -> {', '.join(ib.groups)}")
    if a.addresses != b.addresses:
        show = lambda nic: ", ".join(str(x) for x in nic.addresses) or "none"  # noqa: E731
        notes.append(f"addresses {show(a)} -> {show(b)}")
    if a.nic_type != b.nic_type or a.mac != b.mac:
        notes.append(f"nic {a.nic_type} {a.mac or '-'} -> {b.nic_type} {b.mac or '-'}")
    return notes


def diff_states(old: DesiredState, new: DesiredState) -> list[InterfaceDiff]:
    """Every interface whose effective lists or verdicts differ, sorted by label."""
    before, after = _ports(old, new.host), _ports(new, new.host)
    out = []
    for key in sorted(before.keys() | after.keys()):
        if key not in after:
            port, view, nic = before[key]
            out.append(InterfaceDiff(port.label, REMOVED, (f"instance {nic.instance_id}",), ()))
            continue
        port, new_view, b = after[key]
        if key not in before:
            groups = ", ".join(new_view.instance_by_id[b.instance_id].groups)
            out.append(InterfaceDiff(port.label, ADDED, (f"instance {b.instance_id}, groups {groups}",), ()))
            continue
        _, old_view, a = before[key]
        dirs = [d for direction in DIRECTIONS
                if (d := direction_diff(build_effective_list(old_view, a.name, direction),
                                        build_effective_list(new_view, b.name, direction)))]
        notes = _interface_notes(old, new, a, b)
        if dirs or notes:
            out.append(InterfaceDiff(port.label, CHANGED, tuple(notes), tuple(dirs)))
    return out


def render_text(diffs: list[InterfaceDiff], limit: int = 20) -> str:
    lines = []
    for d in diffs:
        if d.status != CHANGED:
            lines.append(f"{d.interface}: interface {d.status} ({'; '.join(d.notes)})")
            continue
        lines += [f"{d.interface}: {note}" for note in d.notes]
        for dd in d.directions:
            head = f"{d.interface} {dd.direction}"
            for c in dd.lines:
                where = f"line {c.old_position}" if c.new_position is None else \
                    (f"line {c.new_position}" if c.old_position is None or c.old_position == c.new_position
                     else f"line {c.old_position} -> {c.new_position}")
                lines.append(f"{head}: {c.change} {c.line} ({where}): {c.text}")
            lines += [f"{head}: {v.text}" for v in dd.verdicts[:limit]]
            if len(dd.verdicts) > limit:
                lines.append(f"{head}: ... and {len(dd.verdicts) - limit} more verdict changes (see --json)")
    return "\n".join(lines) + "\n" if lines else "no differences\n"


# --- live connections -------------------------------------------------------------

def live_revocations(old: DesiredState, new: DesiredState) -> list[Revocation]:
    """The established connections (conntrack; needs root) that applying `new` on this
    host would cut: agent.policy.revocation's plan, with `old`'s local addresses as the previous."""
    from agent.kernel import conntrack
    from agent.policy.revocation import plan_revocations
    previous = frozenset(a for nic in old.local_interfaces.values() for a in nic.addresses)
    flows = conntrack.list_flows()
    log.debug("conntrack: %d tracked connections", len(flows))
    return plan_revocations(new, flows, previous)


def flow_text(flow: Flow) -> str:
    proto = PROTOCOL_NAMES.get(flow.protocol, str(flow.protocol))
    src = f"{flow.src}:{flow.sport}" if flow.sport is not None else str(flow.src)
    dst = f"{flow.dst}:{flow.dport}" if flow.dport is not None else str(flow.dst)
    return f"{proto} {src} -> {dst}"
