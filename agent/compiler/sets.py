"""The shared address sets of a build (pure): one per group and IP version
(`grp4_<group>`: its members' addresses, for the intra-group stage and for every line
naming the group as a peer), one per prefix list and version (`pl4_<list>`), and per
version the union of those the lines name (`peers4`), which sends an address to a policy
chain's member path (agent.compiler.runs).

They are built after the chains, from what the chains' region parts say they name, so a
set exists exactly while something looks it up; and they do not depend on the chains:
a member joining or leaving changes elements here and nothing else. A set whose inputs
are the very objects of the previous build is the previous set (agent.compiler.memo), so
a build with 100,000 remote members rebuilds only the sets whose members changed.
"""
from __future__ import annotations

import bisect
import ipaddress
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence

from agent.compiler.boxes import Interval, merge_intervals
from agent.compiler.intervals import net_interval, render_interval
from agent.compiler.memo import RegionEntry, SharedSetEntry, SharedWanted
from agent.compiler.runs import ADDR_TYPE
from agent.compiler.ruleset import NftSet

if TYPE_CHECKING:
    from agent.compiler.builder import Builder


def _interval(item) -> tuple[int, int]:
    """A group member's address or a prefix-list entry as [lo, hi]."""
    if isinstance(item, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        value = int(item)
        return value, value
    return net_interval(item)


def wanted_shared_sets(regions: Iterable[RegionEntry]) -> SharedWanted:
    """The shared sets the build's policy chains look up, by (kind, id, version), and per
    version the (kind, id) of the sets the union `peers<v>` covers."""
    wanted: dict[tuple, str] = {}
    union: dict[int, set] = {4: set(), 6: set()}
    for entry in regions:
        for key, name, in_union in entry.refs():
            wanted[key] = name
            if in_union:
                union[key[2]].add(key[:2])
    return SharedWanted(wanted, {v: sorted(refs) for v, refs in union.items()})


def build_shared_sets(b: "Builder") -> None:
    """Add every shared set the chains name to `b.sets` (and only those). The sets of
    groups and prefix lists first: the union of a version merges their intervals. What
    the chains name is the previous build's when a patched build says it did not change."""
    wanted = b.reuse.wanted = b.reuse.wanted or wanted_shared_sets(b.reuse.regions.values())
    for key, name in b.shared.items():
        if key not in wanted.names:
            b.sets.pop(name, None)
    b.shared = {key: b.shared[key] for key in wanted.names}
    for key, name in sorted(wanted.names.items(), key=lambda kv: kv[0][0] == "peers"):
        kind, _ident, v = key
        if kind == "peers":
            covers = tuple(wanted.union[v])
            b.sets[name] = _union_set(b, key, name, tuple(_nets(b, ref) for ref in covers), covers)
        else:
            inputs = _nets(b, key[:2])
            b.sets[name] = _shared_set(b, key, name, inputs, lambda: _merged(kind, inputs, v))


_ADDRESS_CLASS = {4: ipaddress.IPv4Address, 6: ipaddress.IPv6Address}


def _merged(kind: str, inputs: tuple, v: int) -> list[Interval]:
    """The merged intervals of a group's members or a prefix list's entries of version v.
    A group's addresses come sorted and distinct (DesiredState.group_addresses), so
    they merge in one pass over their integers (100,000 members: ~0.1 s, not ~1.5 s)."""
    if kind != "group":
        return merge_intervals(_interval(n) for n in inputs if n.version == v)
    out: list[Interval] = []
    lo = hi = -2
    kind_of = _ADDRESS_CLASS[v]
    for x in [a._ip for a in inputs if isinstance(a, kind_of)]:       # == int(a), without a call
        if x == hi + 1:
            hi = x
            continue
        if x <= hi:                             # not sorted and distinct after all: merge in full
            return merge_intervals(_interval(n) for n in inputs if n.version == v)
        if hi >= 0:
            out.append((lo, hi))
        lo = hi = x
    if hi >= 0:
        out.append((lo, hi))
    return out


def _nets(b: "Builder", ref: tuple) -> tuple:
    """A group's member addresses, or a prefix list's networks (canonical objects)."""
    kind, ident = ref
    return (b.reuse.inputs.networks if kind == "group" else b.reuse.inputs.prefix_lists).get(ident, ())


def _shared_set(b: "Builder", key: tuple, name: str, inputs: tuple,
                make: Callable[[], list[Interval]], covers: tuple = ()) -> NftSet:
    """The set `key` from `inputs` (its networks, or for a union the networks of each
    set it covers); the previous build's object when the inputs are the same objects."""
    hit = b.reuse.previous_shared(key)
    if hit is not None and hit.made.name == name and _same_objects(hit.inputs, inputs, key[0] == "peers"):
        made, merged = hit.made, hit.merged
    else:
        merged = make()
        made = NftSet(name, ADDR_TYPE[key[2]], tuple(render_interval(key[2], iv) for iv in merged))
    b.reuse.shared_sets[key] = SharedSetEntry(inputs, made, merged, covers)
    return made


def _union_set(b: "Builder", key: tuple, name: str, inputs: tuple, covers: tuple) -> NftSet:
    """The union `peers<v>`: patched from the previous build's where the same sets make
    it and few of their intervals changed (a member joining: `splice_union`), instead of
    merging every member of every set again (~10 ms per 10,000 members)."""
    v = key[2]
    parts = [b.reuse.shared_sets[ref + (v,)].merged for ref in covers]
    hit, previous = b.reuse.previous_shared(key), b.reuse.previous
    if hit is not None and previous is not None and hit.made.name == name and hit.covers == covers and \
            not _same_objects(hit.inputs, inputs, True):
        old_parts = [previous.shared_sets[ref + (v,)].merged for ref in covers]   # the union covered them
        splices = splice_union(hit.merged, old_parts, parts)
        if splices is not None:
            merged, elements = _spliced(v, hit.merged, hit.made.elements, splices)
            made = NftSet(name, ADDR_TYPE[v], elements)
            b.reuse.shared_sets[key] = SharedSetEntry(inputs, made, merged, covers)
            return made
    return _shared_set(b, key, name, inputs, lambda: merge_intervals(iv for part in parts for iv in part), covers)


def _hi(iv: Interval) -> int:
    return iv[1]


def _lo(iv: Interval) -> int:
    return iv[0]


def _within(merged: Sequence[Interval], lo: int, hi: int) -> tuple[int, int]:
    """The slice of the sorted, disjoint intervals `merged` that meet [lo, hi]."""
    return bisect.bisect_left(merged, lo, key=_hi), bisect.bisect_right(merged, hi, key=_lo)


def splice_union(union: list[Interval], old_parts: Sequence[list[Interval]], new_parts: Sequence[list[Interval]]
                 ) -> Optional[list[tuple[int, int, list[Interval]]]]:
    """The merged union of `new_parts` as replacements of slices of `union` (the merged
    union of `old_parts`, part by part the same sets): [(start, end, intervals)], sorted,
    disjoint. None when many intervals changed (merge everything instead).

    The intervals that changed (in a part's old or new list, not both) and the old union
    intervals meeting or touching them make *windows*; an interval of any part that
    meets a window lies inside it (a union interval is maximal, so whatever it merged
    is inside it, and it touches no other), so each window is merged again from the
    parts' intervals inside it and nothing outside moves. Exact: checked against the
    full merge on random parts (tests/unit/test_shared_sets.py)."""
    delta: list[Interval] = []
    for old, new in zip(old_parts, new_parts):
        if old is not new:
            before, after = set(old), set(new)
            delta += [iv for iv in old if iv not in after] + [iv for iv in new if iv not in before]
    if len(delta) > len(union) // 4 + 16:
        return None
    around = list(delta)
    for lo, hi in delta:
        start, end = _within(union, lo - 1, hi + 1)
        around += union[start:end]
    splices = []
    for lo, hi in merge_intervals(around):
        inside = [iv for part in new_parts for iv in part[slice(*_within(part, lo, hi))]]
        splices.append(_within(union, lo, hi) + (merge_intervals(inside),))
    return splices


def _spliced(version: int, merged: list[Interval], elements: tuple[str, ...],
             splices: list[tuple[int, int, list[Interval]]]) -> tuple[list[Interval], tuple[str, ...]]:
    """`merged` and its rendered `elements` with the slices replaced."""
    out: list[Interval] = []
    texts: list[str] = []
    at = 0
    for start, end, pieces in splices:
        out += merged[at:start] + pieces
        texts += elements[at:start] + tuple(render_interval(version, iv) for iv in pieces)
        at = end
    return out + merged[at:], tuple(texts) + elements[at:]


def _same_objects(old: tuple, new: tuple, nested: bool) -> bool:
    if not nested:
        return old is new
    return len(old) == len(new) and all(a is c for a, c in zip(old, new))
