"""Interval boxes: the match space of rules as products of closed integer intervals
(address x protocol x source port x destination port, one IP version at a time).

The kernel refuses overlapping elements in one concatenated interval set, so the
compiler turns each block's union of boxes into pairwise-disjoint boxes with
`disjoint_union`; `lint` asks whether earlier rules `cover` a later one. Exact, no
heuristics: every function here is checked against brute force in the tests.
"""
from __future__ import annotations

import heapq
from functools import reduce
from typing import Any, Callable, Hashable, Iterable, Optional, Sequence

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


def meets(a: Box, b: Box) -> bool:
    """Whether two boxes share a point (`intersect(a, b) is not None`, without building
    it; the last axes first: the compiler's boxes mostly differ in ports)."""
    i = len(a)
    while i:
        i -= 1
        x, y = a[i], b[i]
        if x[0] > y[1] or y[0] > x[1]:
            return False
    return True


def volume(box: Box) -> int:
    return reduce(lambda acc, iv: acc * (iv[1] - iv[0] + 1), box, 1)


def contains(box: Box, point: tuple[int, ...]) -> bool:
    return all(lo <= p <= hi for (lo, hi), p in zip(box, point))


def disjoint_union(boxes: Iterable[Box]) -> tuple[Box, ...]:
    """The union of `boxes` as sorted, pairwise-disjoint boxes.

    A sweep along the first dimension: between consecutive boundaries the set of
    boxes present is constant, so the rest of the dimensions are solved recursively
    for that set (memoized), and neighbouring segments with equal sub-solutions are
    merged, which keeps the result close to the smallest such decomposition. Boxes
    that are apart (`separate`) are solved apart."""
    memo: dict = {}
    unique = sorted(set(boxes))
    parts = separate(unique)
    if len(parts) == 1:
        return _union(frozenset(unique), memo)
    return tuple(sorted(b for part in parts for b in _union(frozenset(unique[i] for i in part), memo)))


def separate(boxes: Sequence[Box]) -> list[list[int]]:
    """The indices of `boxes` split into parts that are apart: any two boxes of
    different parts are separated by a gap of at least one value in some dimension, so
    they neither overlap nor touch. Each part can then be solved on its own: no point is
    in boxes of two parts, and no output box can merge boxes of two parts.

    Why: one sweep over everything cuts every box at every boundary of every other box
    on the first axis (a /0 rule is cut at each of a thousand /32s elsewhere in the
    space); solved apart, unrelated boxes stay whole, and sets stay close to the number
    of input boxes. Repeated interval splitting per dimension (sort, merge touching
    intervals), O(n log n) per split; parts that no single dimension separates stay
    together (correct either way, just less split)."""
    if len(boxes) < 2 or not boxes[0]:
        return [list(range(len(boxes)))]
    dims = len(boxes[0])
    done: list[list[int]] = []
    todo: list[tuple[list[int], int]] = [(list(range(len(boxes))), -1)]   # (part, split by)
    while todo:
        part, made_by = todo.pop()
        if len(part) < 2:
            done.append(part)
            continue
        for d in range(dims):
            if d == made_by:
                continue
            ivs = [boxes[i][d] for i in part]
            groups: list[list[int]] = []
            reach = -2                                  # values are >= 0
            for k in sorted(range(len(part)), key=ivs.__getitem__):
                lo, hi = ivs[k]
                if lo > reach + 1:
                    current = [part[k]]
                    groups.append(current)
                    reach = hi
                else:
                    current.append(part[k])
                    if hi > reach:
                        reach = hi
            if len(groups) > 1:
                todo.extend((g, d) for g in groups)
                break
        else:
            done.append(part)
    return done


def _union(boxes: frozenset, memo: dict) -> tuple[Box, ...]:
    if not boxes:
        return ()
    if boxes in memo:
        return memo[boxes]
    dims = len(next(iter(boxes)))
    if dims == 0:
        return ((),)
    if len(boxes) == 1:
        return tuple(boxes)
    if dims == 1:
        result = _union_1d(boxes)
        memo[boxes] = result
        return result
    # Sweep the first axis: between consecutive boundaries the boxes present (their
    # tails, counted: two boxes may share a tail) are constant.
    starts: dict[int, list] = {}
    ends: dict[int, list] = {}
    for b in boxes:
        starts.setdefault(b[0][0], []).append(b[1:])
        ends.setdefault(b[0][1] + 1, []).append(b[1:])
    points = sorted(starts.keys() | ends.keys())
    active: dict[Box, int] = {}
    segments: list[list] = []           # [lo, hi, sub-solution]
    for lo, nxt in zip(points, points[1:]):
        for tail in ends.get(lo, ()):
            if active[tail] == 1:
                del active[tail]
            else:
                active[tail] -= 1
        for tail in starts.get(lo, ()):
            active[tail] = active.get(tail, 0) + 1
        if not active:
            continue
        sub = _union(frozenset(active), memo)
        if segments and segments[-1][1] + 1 == lo and segments[-1][2] == sub:
            segments[-1][1] = nxt - 1
        else:
            segments.append([lo, nxt - 1, sub])
    result = tuple(((lo, hi),) + tail for lo, hi, sub in segments for tail in sub)
    memo[boxes] = result
    return result


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, with overlapping and adjacent intervals merged."""
    out: list[list[int]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1][1] = hi
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def _union_1d(boxes: Iterable[Box]) -> tuple[Box, ...]:
    """One dimension: sorted intervals, overlapping or adjacent ones merged."""
    return tuple((iv,) for iv in merge_intervals(b[0] for b in boxes))


def covers(boxes: Iterable[Box], box: Box) -> bool:
    """True when the union of `boxes` contains every point of `box`."""
    parts = [p for b in boxes if (p := intersect(b, box)) is not None]
    return sum(volume(p) for p in disjoint_union(parts)) == volume(box)


def first_match_region(items: Sequence[tuple[Box, bool]]) -> tuple[Box, ...]:
    """`items` are the lines of an ordered list, each (box, accepts). Returns the points
    whose FIRST containing box accepts, as sorted, pairwise-disjoint boxes.

    This is what lets a whole priority-ordered rule list compile to one set lookup: a
    point in the region is accepted by the list, any other point is not (it is dropped
    by an earlier drop line or matches nothing). `first_match_labels` with the verdict as
    the label, keeping the accepting boxes."""
    return tuple(box for box, _ in first_match_labels(items, bool))


def first_match_labels(items: Sequence[tuple[Box, Hashable]],
                       keep: Callable[[Any], bool] = lambda label: True) -> tuple[tuple[Box, Any], ...]:
    """`items` are the lines of an ordered list, each (box, label). Returns every point
    some line contains whose FIRST containing line's label is kept, as sorted,
    pairwise-disjoint boxes each with that label; neighbouring boxes merge only when
    their labels are equal. With the deciding line's verdict identity as its label this
    paints one verdict map that says which line decides (agent.compiler.attribution).

    Same sweep as `disjoint_union`, with the order of the lines kept: at a leaf the
    lowest-numbered present line decides. Lines that are apart (`separate`: they share
    no point) are solved apart. The sub-problems are sets of line numbers (cheap to
    hash and memoize: a line's box and label are looked up by its number)."""
    boxes = [box for box, _ in items]
    painter = _Painter(boxes, [label for _, label in items], keep)
    parts = separate(boxes)
    if len(parts) == 1:
        return painter.region(frozenset(range(len(boxes))), 0)
    out = []
    for part in parts:
        if len(part) == 1:              # a line apart from every other: its box, if kept
            label = items[part[0]][1]
            if keep(label):
                out.append((boxes[part[0]], label))
        else:
            out.extend(painter.region(frozenset(part), 0))
    out.sort()
    return tuple(out)


class _Painter:
    """One `first_match_labels` call: the lines' boxes and labels by line number, and
    the memos of its sub-problems (per axis: a set of line numbers -> its solution on
    the boxes' tails from that axis on)."""

    def __init__(self, boxes: list[Box], labels: list, keep: Callable[[Any], bool]):
        self.boxes, self.labels, self.keep = boxes, labels, keep
        self.dims = len(boxes[0]) if boxes else 0
        self.memo: list[dict] = [{} for _ in range(self.dims + 1)]
        self.union_memo: dict = {}

    def region(self, lines: frozenset, axis: int) -> tuple:
        got = self.memo[axis].get(lines)
        if got is not None:
            return got
        labels = {self.labels[o] for o in lines}
        if not any(self.keep(label) for label in labels):       # no lines: no labels
            return ()
        if axis == self.dims:
            first = self.labels[min(lines)]
            return (((), first),) if self.keep(first) else ()
        if len(labels) == 1:
            (label,) = labels
            tails = frozenset(self.boxes[o][axis:] for o in lines)
            result: tuple = tuple((b, label) for b in _union(tails, self.union_memo))
        elif axis == self.dims - 1:
            result = self._region_1d(lines, axis)
        else:
            result = self._region_sweep(lines, axis)
        self.memo[axis][lines] = result
        return result

    def _region_sweep(self, lines: frozenset, axis: int) -> tuple:
        """Sweep one axis; each elementary segment is solved on the tails of the lines
        present there (memoized: neighbouring segments mostly share their lines), and
        neighbouring segments with equal solutions (labels included) are merged."""
        starts: dict[int, list] = {}
        ends: dict[int, list] = {}
        boxes = self.boxes
        for o in lines:
            lo, hi = boxes[o][axis]
            starts.setdefault(lo, []).append(o)
            ends.setdefault(hi + 1, []).append(o)
        points = sorted(starts.keys() | ends.keys())
        active: set = set()
        segments: list[list] = []
        for lo, nxt in zip(points, points[1:]):
            if lo in ends:
                active.difference_update(ends[lo])
            if lo in starts:
                active.update(starts[lo])
            if not active:
                continue
            sub = self.region(frozenset(active), axis + 1)
            if not sub:
                continue
            if segments and segments[-1][1] + 1 == lo and segments[-1][2] == sub:
                segments[-1][1] = nxt - 1
            else:
                segments.append([lo, nxt - 1, sub])
        return tuple((((lo, hi),) + tail, label) for lo, hi, sub in segments for tail, label in sub)

    def _region_1d(self, lines: frozenset, axis: int) -> tuple:
        """The last axis: each elementary segment is decided by its lowest-numbered
        line (a heap of the lines present, ended ones dropped lazily); kept segments
        that touch and have the same label are merged."""
        starts: dict[int, list] = {}
        points_set = set()
        for o in lines:
            lo, hi = self.boxes[o][axis]
            starts.setdefault(lo, []).append((o, hi))
            points_set.add(lo)
            points_set.add(hi + 1)
        points = sorted(points_set)
        heap: list = []
        out: list[list] = []
        labels, keep = self.labels, self.keep
        for lo, nxt in zip(points, points[1:]):
            for line in starts.get(lo, ()):
                heapq.heappush(heap, line)
            while heap and heap[0][1] < lo:
                heapq.heappop(heap)
            if not heap or not keep(label := labels[heap[0][0]]):
                continue
            if out and out[-1][1] + 1 == lo and out[-1][2] == label:
                out[-1][1] = nxt - 1
            else:
                out.append([lo, nxt - 1, label])
        return tuple((((lo, hi),), label) for lo, hi, label in out)
