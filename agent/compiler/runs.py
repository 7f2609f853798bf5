"""Stages 4-5 of one policy chain and IP version, with peers that are shared sets (pure).

A line whose peer is a group or a prefix list does not carry its addresses: it names the
shared set of that group (`grp4_<group>`, the set the intra-group stage uses too) or
prefix list (`pl4_<list>`), one per host, so a member joining or leaving anywhere in the
fleet is one element in the sets it belongs to and nothing else (no chain, no region).
Its verdict then depends on a membership the compiler does not know, so the list is
compiled into two paths (docs/datapath.md, "Policy chains"):

* the *static path*, for an address in no shared set that any line of this host names
  (`@peers4`, the union of those sets, says which): dynamic lines cannot match it, so the
  first match among the CIDR lines decides, painted into ONE region lookup as before
  (`agent.compiler.boxes.first_match_region`), preceded by a hashed verdict map of the points
  of the lines that match one address, protocol and a few ports, when there are many
  (`build_points`);
* the *member path* (`<chain>_m4`), for the other addresses: the list in order, as
  *runs*: consecutive lines with the same lookup (CIDRs; or one shared set). The order
  is kept even among lines of one verdict, because the line that decides is what its
  verdict chain counts (agent.compiler.attribution). A run of CIDR lines is one
  verdict-map lookup (first match within the run, each point jumping to the deciding
  line's verdict chain; no element: next run); a run on one shared set is `@set` and a
  verdict map over protocol and ports; a run of at most INLINE_MAX boxes is written as
  plain rules instead (a concatenated interval set costs the kernel ~113 KB however
  small). Lookups per packet on this path: at most the number of runs, plus the plain
  rules of short runs.

Exactness rests on the union set holding every address any named set holds, and on
the list order being kept. Checked in tests by the strict
simulator against the semantics engine (tests/unit/test_compiler_properties.py, tests/unit/test_policy_properties.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from agent.compiler.attribution import chain_name
from agent.compiler.boxes import Box, first_match_labels

ADDR_BITS = {4: 32, 6: 128}
FULL_ADDRESSES = {v: (0, 2 ** bits - 1) for v, bits in ADDR_BITS.items()}   # every address of a version
FAMILY_KW = {4: "ip", 6: "ip6"}
NFPROTO = {4: "ipv4", 6: "ipv6"}
ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
FULL_PORTS, FULL_PROTO = (0, 65535), (0, 255)
# A concatenated interval set (pipapo) costs the kernel ~113 KB however few its elements
# (measured on 6.18: 2,000 one-element sets, docs/kernel-facts.md), a plain rule ~0.5 KB:
# runs and regions of at most this many boxes are written as plain rules.
INLINE_MAX = 16
POINTS_MIN = 256        # point lines (build_points) worth a hashed map before the region
POINTS_SPAN = 16        # a point line has at most this many destination ports, each a point
POINTS_BUDGET = 2_000_000   # points x earlier wide lines checked, at most


@dataclass(frozen=True)
class Line:
    """One line of the list for one IP version: `ref` is the shared set a dynamic line
    looks up (None: a CIDR line); `boxes` are address x tail (CIDR line) or tail only."""
    order: int
    accept: bool
    ref: Optional[str]
    boxes: tuple[Box, ...]
    label: int = 0                  # the number of the line's verdict chain (`v_<label>`)


@dataclass(frozen=True)
class Run:
    ref: Optional[str]
    lines: tuple[Line, ...]


@dataclass(frozen=True)
class MapSpec:
    """A verdict map a run needs: its key types and `box : verdict` items."""
    name: str
    types: tuple[str, ...]
    items: tuple[tuple[Box, str], ...]


def build_runs(lines: list[Line]) -> list[Run]:
    """The member path's runs: the lines in their order, consecutive lines with the same
    lookup (one shared set, or CIDRs) in one run. The order is kept also among lines of
    equal verdict: which line decides is what the verdict chain counts, so two lines of
    one verdict that overlap must be met in the list's order."""
    runs: list[list] = []
    for line in lines:
        if runs and runs[-1][0] == line.ref:
            runs[-1][1].append(line)
        else:
            runs.append([line.ref, [line]])
    return [Run(ref, tuple(ls)) for ref, ls in runs]


def first_match_items(lines: tuple[Line, ...]) -> tuple[tuple[Box, str], ...]:
    """The run as disjoint `box : goto v_<n>` items: each point where some line of the
    run matches, with the verdict chain of the first such line (original order)."""
    items = [(bx, line.label) for line in sorted(lines, key=lambda l: l.order) for bx in line.boxes]
    return tuple(sorted((bx, f"goto {chain_name(label)}") for bx, label in first_match_labels(items)))


def render_match(v: int, addr: Optional[str], tail: Box, key_kw: str, with_sport: bool,
                 with_dport: bool) -> str:
    """A plain rule's match: the address (an interval text or `@set`; None: any of
    version v), then protocol and ports where they are not the full range."""
    parts = [f"{FAMILY_KW[v]} {key_kw} {addr}" if addr else f"meta nfproto {NFPROTO[v]}"]
    proto, rest = tail[0], list(tail[1:])
    sport = rest.pop(0) if with_sport else FULL_PORTS
    dport = rest.pop(0) if with_dport else FULL_PORTS
    if proto != FULL_PROTO:
        parts.append(f"meta l4proto {_range(proto)}")
    if sport != FULL_PORTS:
        parts.append(f"th sport {_range(sport)}")
    if dport != FULL_PORTS:
        parts.append(f"th dport {_range(dport)}")
    return " ".join(parts)


def _range(iv: tuple[int, int]) -> str:
    return str(iv[0]) if iv[0] == iv[1] else f"{iv[0]}-{iv[1]}"


def key_types(v: int, with_addr: bool, with_sport: bool, with_dport: bool) -> tuple[tuple[str, ...], str]:
    """Key types of a lookup and its key expression."""
    types = ([ADDR_TYPE[v]] if with_addr else []) + ["inet_proto"] + ["inet_service"] * (with_sport + with_dport)
    return tuple(types), "meta l4proto" + " . th sport" * with_sport + " . th dport" * with_dport


def build_member_rules(runs: list[Run], v: int, key_kw: str, with_sport: bool, with_dport: bool,
                       map_name: Callable[[int], str], render_addr: Callable[[tuple[int, int]], Optional[str]]
                       ) -> tuple[list[str], list[MapSpec]]:
    """The member path's rules (without the final drop) and the maps they look up."""
    rules: list[str] = []
    maps: list[MapSpec] = []
    for i, run in enumerate(runs):
        boxes = [(bx, line) for line in run.lines for bx in line.boxes]
        if len(boxes) <= INLINE_MAX:        # in the run's order: exact as they stand
            for bx, line in boxes:
                addr, tail = (f"@{run.ref}", bx) if run.ref else (render_addr(bx[0]), bx[1:])
                rules.append(f"{render_match(v, addr, tail, key_kw, with_sport, with_dport)} "
                             f"goto {chain_name(line.label)}")
            continue
        items = first_match_items(run.lines)
        if not items:
            continue
        types, tail_key = key_types(v, run.ref is None, with_sport, with_dport)
        name = map_name(i)
        maps.append(MapSpec(name, types, items))
        head = f"{FAMILY_KW[v]} {key_kw} @{run.ref} {tail_key}" if run.ref else \
            f"{FAMILY_KW[v]} {key_kw} . {tail_key}"
        rules.append(f"{head} vmap @{name}")
    return rules, maps


def build_points(items: list[tuple[Box, int]], with_sport: bool, with_dport: bool
                 ) -> tuple[dict[tuple[int, int, int], int], list[tuple[Box, int]]]:
    """Point lines (one address, tcp or udp, at most POINTS_SPAN destination ports, any
    source port) for a hashed verdict map looked up before the region, each expanded into
    its points: {(address, protocol, port): label} where the list's deciding line is the
    same for every source port there, and the lines left for the region (a point line
    all of whose points are hashed is removed: the map decides them, and it matches no
    other point; one with a point left unhashed stays whole, the map deciding the rest
    before the region is looked up). Empty when fewer than POINTS_MIN lines fit (lines,
    not points: each line removed is an element less in the region, the lookup the map
    is there to shorten) or when points x earlier wide lines exceed POINTS_BUDGET."""
    if not with_dport:
        return {}, items
    fits = [i for i, (bx, _) in enumerate(items) if _is_point_line(bx, with_sport)]
    wide = [i for i, (bx, _) in enumerate(items) if not _is_point_line(bx, with_sport)]
    n_points = sum(items[i][0][-1][1] - items[i][0][-1][0] + 1 for i in fits)
    if len(fits) < POINTS_MIN or n_points * len(wide) > POINTS_BUDGET:
        return {}, items
    verdicts: dict[tuple[int, int, int], Optional[int]] = {}
    for i in fits:                                  # the first line of a point decides it
        for key in _point_keys(items[i][0]):
            if key not in verdicts:
                verdicts[key] = _slab_verdict(items, wide, i, key, items[i][1], with_sport)
    hashed = {k: label for k, label in verdicts.items() if label is not None}
    kept = [i for i in fits if any(k not in hashed for k in _point_keys(items[i][0]))]
    return hashed, [items[i] for i in sorted(wide + kept)]


def _is_point_line(bx: Box, with_sport: bool) -> bool:
    return (bx[0][0] == bx[0][1] and bx[1][0] == bx[1][1] and bx[1][0] in (6, 17)
            and bx[-1][1] - bx[-1][0] < POINTS_SPAN and (not with_sport or bx[2] == FULL_PORTS))


def _point_keys(bx: Box) -> list[tuple[int, int, int]]:
    return [(bx[0][0], bx[1][0], port) for port in range(bx[-1][0], bx[-1][1] + 1)]


def _slab_verdict(items: list[tuple[Box, int]], wide: list[int], upto: int, key: tuple[int, int, int],
                  label: int, with_sport: bool) -> Optional[int]:
    """The deciding line's label at (address, protocol, port) for every source port: the first line
    (before `upto`, else the point line itself) that meets it must contain it whole."""
    addr, proto, port = key
    for j in wide:
        if j > upto:
            break
        bx = items[j][0]
        if bx[0][0] <= addr <= bx[0][1] and bx[1][0] <= proto <= bx[1][1] and bx[-1][0] <= port <= bx[-1][1]:
            return items[j][1] if not with_sport or bx[2] == FULL_PORTS else None
    return label
