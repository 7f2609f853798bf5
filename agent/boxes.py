"""Interval boxes: the match space of rules as products of closed integer intervals
(address x protocol x source port x destination port, one IP version at a time).

The kernel refuses overlapping elements in one concatenated interval set, so the
compiler turns each block's union of boxes into pairwise-disjoint boxes with
`disjoint_union`; `lint` asks whether earlier rules `cover` a later one. Exact, no
heuristics: every function here is checked against brute force in the tests.
"""
from __future__ import annotations

from functools import reduce
from typing import Iterable, Optional, Sequence

Interval = tuple[int, int]          # inclusive bounds
Box = tuple[Interval, ...]


def intersect(a: Box, b: Box) -> Optional[Box]:
    out = []
    for (alo, ahi), (blo, bhi) in zip(a, b):
        lo, hi = max(alo, blo), min(ahi, bhi)
        if lo > hi:
            return None
        out.append((lo, hi))
    return tuple(out)


def volume(box: Box) -> int:
    return reduce(lambda acc, iv: acc * (iv[1] - iv[0] + 1), box, 1)


def contains(box: Box, point: tuple[int, ...]) -> bool:
    return all(lo <= p <= hi for (lo, hi), p in zip(box, point))


def disjoint_union(boxes: Iterable[Box]) -> tuple[Box, ...]:
    """The union of `boxes` as sorted, pairwise-disjoint boxes.

    A sweep along the first dimension: between consecutive boundaries the set of
    boxes present is constant, so the rest of the dimensions are solved recursively
    for that set (memoized), and neighbouring segments with equal sub-solutions are
    merged, which keeps the result close to the smallest such decomposition."""
    return tuple(_union(frozenset(boxes), {}))


def _union(boxes: frozenset, memo: dict) -> tuple[Box, ...]:
    if not boxes:
        return ()
    if boxes in memo:
        return memo[boxes]
    if len(next(iter(boxes))) == 0:
        return ((),)
    if len(boxes) == 1:
        return tuple(boxes)
    points = sorted({b[0][0] for b in boxes} | {b[0][1] + 1 for b in boxes})
    by_start = sorted(boxes, key=lambda b: b[0][0])
    active: list[Box] = []
    segments: list[list] = []           # [lo, hi, sub-solution]
    i = 0
    for lo, nxt in zip(points, points[1:]):
        while i < len(by_start) and by_start[i][0][0] <= lo:
            active.append(by_start[i])
            i += 1
        active = [b for b in active if b[0][1] >= lo]
        if not active:
            continue
        sub = _union(frozenset(b[1:] for b in active), memo)
        if segments and segments[-1][1] + 1 == lo and segments[-1][2] == sub:
            segments[-1][1] = nxt - 1
        else:
            segments.append([lo, nxt - 1, sub])
    result = tuple(((lo, hi),) + tail for lo, hi, sub in segments for tail in sub)
    memo[boxes] = result
    return result


def covers(boxes: Iterable[Box], box: Box) -> bool:
    """True when the union of `boxes` contains every point of `box`."""
    parts = [p for b in boxes if (p := intersect(b, box)) is not None]
    return sum(volume(p) for p in disjoint_union(parts)) == volume(box)


def first_match_region(items: Sequence[tuple[Box, bool]]) -> tuple[Box, ...]:
    """`items` are the lines of an ordered list, each (box, accepts). Returns the points
    whose FIRST containing box accepts, as sorted, pairwise-disjoint boxes.

    This is what lets a whole priority-ordered rule list compile to one set lookup: a
    point in the region is accepted by the list, any other point is not (it is dropped
    by an earlier drop line or matches nothing). Same sweep as `disjoint_union`, with the
    order of the lines kept: at a leaf the lowest-numbered present line decides."""
    return _region(frozenset((i, box, acc) for i, (box, acc) in enumerate(items)), {}, {})


def _region(items: frozenset, memo: dict, union_memo: dict) -> tuple[Box, ...]:
    if not items or not any(acc for _, _, acc in items):
        return ()
    if items in memo:
        return memo[items]
    if len(next(iter(items))[1]) == 0:
        return ((),) if min(items)[2] else ()
    if all(acc for _, _, acc in items):
        result = _union(frozenset(b for _, b, _ in items), union_memo)
    else:
        result = _region_sweep(items, memo, union_memo)
    memo[items] = result
    return result


def _region_sweep(items: frozenset, memo: dict, union_memo: dict) -> tuple[Box, ...]:
    points = sorted({b[0][0] for _, b, _ in items} | {b[0][1] + 1 for _, b, _ in items})
    by_start = sorted(items, key=lambda it: it[1][0][0])
    active: list = []
    segments: list[list] = []
    i = 0
    for lo, nxt in zip(points, points[1:]):
        while i < len(by_start) and by_start[i][1][0][0] <= lo:
            active.append(by_start[i])
            i += 1
        active = [it for it in active if it[1][0][1] >= lo]
        if not active:
            continue
        sub = _region(frozenset((o, b[1:], a) for o, b, a in active), memo, union_memo)
        if not sub:
            continue
        if segments and segments[-1][1] + 1 == lo and segments[-1][2] == sub:
            segments[-1][1] = nxt - 1
        else:
            segments.append([lo, nxt - 1, sub])
    return tuple(((lo, hi),) + tail for lo, hi, sub in segments for tail in sub)
