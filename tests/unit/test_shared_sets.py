"""agent.compiler.sets.splice_union: the union of shared sets patched where their
intervals changed equals the union merged from scratch, on random small parts (points
and ranges that overlap, touch and nest), with random edits of some parts."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.compiler.boxes import merge_intervals
from agent.compiler.sets import _spliced, render_interval, splice_union

interval = st.tuples(st.integers(0, 60), st.integers(0, 6)).map(lambda t: (t[0], t[0] + t[1]))
part = st.lists(interval, max_size=12).map(merge_intervals)


@settings(max_examples=400, deadline=None)
@given(old=st.lists(part, min_size=1, max_size=4), edits=st.lists(st.tuples(st.integers(0, 3), part), max_size=3))
def test_spliced_union_is_the_merged_union(old: list, edits: list) -> None:
    new = list(old)
    for index, replacement in edits:
        new[index % len(new)] = replacement
    union = merge_intervals(iv for p in old for iv in p)
    splices = splice_union(union, old, new)
    expected = merge_intervals(iv for p in new for iv in p)
    if splices is None:                         # many changed: the caller merges in full
        return
    merged, texts = _spliced(0, union, tuple(render_interval(0, iv) for iv in union), splices)
    assert merged == expected
    assert list(texts) == [render_interval(0, iv) for iv in expected]


def test_one_member_joining_is_one_splice() -> None:
    old = [[(10, 10), (20, 20)], [(30, 40)]]
    new = [[(10, 10), (20, 20), (25, 25)], old[1]]
    union = merge_intervals(iv for p in old for iv in p)
    assert splice_union(union, old, new) == [(2, 2, [(25, 25)])]
