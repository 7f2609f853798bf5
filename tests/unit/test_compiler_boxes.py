"""agent.compiler.boxes against brute force over small integer universes.

Every box here lives in {0..7}^d (d = 1..4), so the union of a handful of boxes can be
enumerated point by point and compared with what `disjoint_union` / `covers` say.
"""
from __future__ import annotations

import itertools
import random
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from profiles import examples

from agent.compiler.boxes import (
    contains,
    covers,
    disjoint_union,
    first_match_region,
    intersect,
    meets,
    volume,
)

N = 8                               # coordinates 0..7
SETTINGS = settings(max_examples=examples(400), deadline=None)


@st.composite
def intervals(draw):
    lo = draw(st.integers(0, N - 1))
    hi = draw(st.integers(lo, N - 1))
    return (lo, hi)


def boxes_of(dim: int, max_size: int = 8):
    return st.lists(st.tuples(*[intervals()] * dim), max_size=max_size)


@st.composite
def dim_and_boxes(draw, max_size: int = 8):
    dim = draw(st.integers(1, 4))
    return dim, draw(boxes_of(dim, max_size))


def points(box):
    return set(itertools.product(*[range(lo, hi + 1) for lo, hi in box]))


def point_union(boxes):
    out = set()
    for b in boxes:
        out |= points(b)
    return out


@SETTINGS
@given(dim_and_boxes())
def test_disjoint_union_is_exact_disjoint_sorted_and_deterministic(case):
    dim, boxes = case
    out = disjoint_union(boxes)
    # well-formed boxes of the same dimension, inside the universe
    for b in out:
        assert len(b) == dim
        assert all(0 <= lo <= hi < N for lo, hi in b)
    # pairwise disjoint
    for a, b in itertools.combinations(out, 2):
        assert intersect(a, b) is None, (a, b)
    # same union, point for point (and no point counted twice)
    expected = point_union(boxes)
    assert point_union(out) == expected
    assert sum(volume(b) for b in out) == len(expected)
    # sorted, no duplicates
    assert list(out) == sorted(set(out))
    # deterministic: independent of input order and duplicates
    shuffled = list(boxes) * 2
    random.Random(len(boxes)).shuffle(shuffled)
    assert disjoint_union(shuffled) == out
    assert disjoint_union(iter(boxes)) == out


@SETTINGS
@given(dim_and_boxes(max_size=3))
def test_disjoint_union_trivial_cases(case):
    """No box gives nothing; a single box stays itself."""
    dim, boxes = case
    if len(boxes) == 1:
        assert disjoint_union(boxes) == (boxes[0],)
    if not boxes:
        assert disjoint_union(boxes) == ()


@SETTINGS
@given(st.data())
def test_covers_equals_brute_force(data):
    dim = data.draw(st.integers(1, 4))
    boxes = data.draw(boxes_of(dim))
    box = data.draw(st.tuples(*[intervals()] * dim))
    assert covers(boxes, box) == (points(box) <= point_union(boxes))


@SETTINGS
@given(st.data())
def test_intersect_volume_contains_brute_force(data):
    dim = data.draw(st.integers(1, 4))
    a = data.draw(st.tuples(*[intervals()] * dim))
    b = data.draw(st.tuples(*[intervals()] * dim))
    both = points(a) & points(b)
    inter = intersect(a, b)
    assert (set() if inter is None else points(inter)) == both
    assert volume(a) == len(points(a))
    p = tuple(data.draw(st.integers(0, N - 1)) for _ in range(dim))
    assert contains(a, p) == (p in points(a))


def test_covers_examples():
    assert covers([((0, 3),), ((4, 7),)], ((0, 7),))
    assert not covers([((0, 3),), ((5, 7),)], ((0, 7),))
    assert covers([((0, 7), (0, 7))], ((2, 3), (4, 5)))
    assert not covers([], ((0, 0),))
    # two halves in different dimensions together cover the square
    assert covers([((0, 3), (0, 7)), ((4, 7), (0, 7))], ((0, 7), (0, 7)))
    assert not covers([((0, 3), (0, 7)), ((4, 7), (0, 6))], ((0, 7), (0, 7)))


def test_adjacent_segments_are_merged():
    # [0,3]x[0,7] and [4,7]x[0,7] are one box
    assert disjoint_union([((0, 3), (0, 7)), ((4, 7), (0, 7))]) == (((0, 7), (0, 7)),)
    # overlapping ranges collapse
    assert disjoint_union([((0, 5),), ((3, 9),)]) == (((0, 9),),)


def test_scale_10000_mostly_disjoint_4d_boxes():
    """Realistic block sizes: addresses x protocol x sport x dport, mostly disjoint
    (distinct /32s and ports) with some overlapping wide ranges. Not a benchmark:
    the bound is generous; it exists to catch a quadratic blow-up."""
    rng = random.Random(1234)
    boxes = []
    for i in range(10_000):
        addr = 0x0A000000 + i * 4
        if rng.random() < 0.9:
            a = (addr, addr)                                   # a /32
        else:
            a = (addr, addr + rng.choice((3, 255, 4095)))        # a wider range
        proto = rng.choice(((6, 6), (17, 17), (0, 255)))
        sport = rng.choice(((0, 65535), (1024, 65535)))
        lo = rng.randrange(1, 65000)
        dport = rng.choice(((lo, lo), (lo, lo + rng.randrange(1, 500)), (0, 65535)))
        boxes.append((a, proto, sport, dport))
    start = time.monotonic()
    out = disjoint_union(boxes)
    elapsed = time.monotonic() - start
    assert elapsed < 20, f"disjoint_union of 10,000 boxes took {elapsed:.1f}s"
    # spot-check the result: disjoint neighbours and the volume of the union
    assert list(out) == sorted(out)
    for a, b in zip(out, out[1:]):
        assert intersect(a, b) is None
    # every input box is covered by the output (sample, brute force would be too slow)
    for box in rng.sample(boxes, 50):
        assert covers(out, box)


# -- first_match_region: the compiler's one-lookup encoding of an ordered list ---------

@st.composite
def ordered_lines(draw):
    dims = draw(st.integers(1, 3))
    iv = st.tuples(st.integers(0, 6), st.integers(0, 6)).map(lambda t: (min(t), max(t)))
    box = st.tuples(*[iv] * dims)
    return dims, draw(st.lists(st.tuples(box, st.booleans()), max_size=7))


@settings(max_examples=examples(300), deadline=None)
@given(ordered_lines())
def test_first_match_region_is_the_first_match_verdict(case):
    """A point is in the region exactly when the first line containing it accepts, and
    the region's boxes are pairwise disjoint (the kernel refuses overlaps)."""
    dims, lines = case
    region = first_match_region(lines)
    for a, b in itertools.combinations(region, 2):
        assert intersect(a, b) is None
    for point in itertools.product(range(8), repeat=dims):
        first = next((acc for box, acc in lines if contains(box, point)), False)
        assert sum(contains(b, point) for b in region) == (1 if first else 0), (lines, point)


@SETTINGS
@given(st.integers(1, 4).flatmap(lambda dim: st.tuples(*[st.tuples(*[intervals()] * dim)] * 2)))
def test_meets_is_a_non_empty_intersection(pair):
    a, b = pair
    assert meets(a, b) == (intersect(a, b) is not None) == meets(b, a)
