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
import socket
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from agent.compiler.boxes import Interval, merge_intervals
from agent.compiler.runs import ADDR_TYPE
from agent.compiler.ruleset import NftSet

if TYPE_CHECKING:
    from agent.compiler.compile import Builder

def net_interval(net) -> tuple[int, int]:
    lo = int(net.network_address)
    return lo, lo | ((1 << (net.max_prefixlen - net.prefixlen)) - 1)     # == broadcast


def _interval(item) -> tuple[int, int]:
    """A group member's address or a prefix-list entry as [lo, hi]."""
    if isinstance(item, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        value = int(item)
        return value, value
    return net_interval(item)


def wanted_shared_sets(b: "Builder") -> tuple[dict[tuple, str], dict[int, list[tuple]]]:
    """The shared sets the build's policy chains look up, by (kind, id, version), and per
    version the (kind, id) of the sets the union `peers<v>` covers."""
    wanted: dict[tuple, str] = {}
    union: dict[int, set] = {4: set(), 6: set()}
    for entry in b.memo.regions.values():
        for key, name, in_union in entry[1].refs + entry[3]:
            wanted[key] = name
            if in_union:
                union[key[2]].add(key[:2])
    return wanted, {v: sorted(refs) for v, refs in union.items()}


def build_shared_sets(b: "Builder") -> None:
    """Add every shared set the chains name to `b.sets` (and only those). The sets of
    groups and prefix lists first: the union of a version merges their intervals."""
    wanted, union = wanted_shared_sets(b)
    for key, name in b.shared.items():
        if key not in wanted:
            b.sets.pop(name, None)
    b.shared = {key: b.shared[key] for key in wanted}
    intervals: dict[tuple, list[tuple[int, int]]] = {}
    for key, name in sorted(wanted.items(), key=lambda kv: kv[0][0] == "peers"):
        kind, _ident, v = key
        if kind == "peers":
            inputs = tuple(_nets(b, ref) for ref in union[v])
            parts = [intervals[ref + (v,)] for ref in union[v]]
            b.sets[name] = _union_set(b, key, name, inputs, tuple(union[v]), parts)
        else:
            inputs = _nets(b, key[:2])
            b.sets[name] = _shared_set(b, key, name, inputs,
                                       lambda: merge_intervals(_interval(n) for n in inputs if n.version == v))
        intervals[key] = b.memo.shared_sets[key][2]


def _nets(b: "Builder", ref: tuple) -> tuple:
    """A group's member addresses, or a prefix list's networks (canonical objects)."""
    kind, ident = ref
    return (b.memo.networks if kind == "group" else b.memo.prefix_lists).get(ident, ())


def _shared_set(b: "Builder", key: tuple, name: str, inputs: tuple,
                make: Callable[[], list[tuple[int, int]]]) -> NftSet:
    """The set `key` from `inputs` (its networks, or for a union the networks of each
    set it covers); the previous build's object when the inputs are the same objects."""
    hit = b.previous.shared_sets.get(key) if b.previous else None
    if hit is not None and hit[1].name == name and _same_objects(hit[0], inputs, key[0] == "peers"):
        made, merged = hit[1], hit[2]
    else:
        merged = make()
        made = NftSet(name, ADDR_TYPE[key[2]], tuple(render_interval(key[2], iv) for iv in merged))
    b.memo.shared_sets[key] = (inputs, made, merged)      # type: ignore[index]
    return made


def _union_set(b: "Builder", key: tuple, name: str, inputs: tuple, refs: tuple, parts: list) -> NftSet:
    """The union `peers<v>`: patched from the previous build's where the same sets make
    it and few of their intervals changed (a member joining: `splice_union`), instead of
    merging every member of every set again (~10 ms per 10,000 members)."""
    hit = b.previous.shared_sets.get(key) if b.previous else None
    if hit is not None and hit[1].name == name and len(hit) > 3 and hit[3] == refs and \
            not _same_objects(hit[0], inputs, True):
        old_parts = [b.previous.shared_sets[ref + (key[2],)][2] for ref in refs]
        splices = splice_union(hit[2], old_parts, parts)
        if splices is not None:
            merged, elements = _spliced(key[2], hit[2], hit[1].elements, splices)
            made = NftSet(name, ADDR_TYPE[key[2]], elements)
            b.memo.shared_sets[key] = (inputs, made, merged, refs)      # type: ignore[index]
            return made
    made = _shared_set(b, key, name, inputs, lambda: merge_intervals(iv for part in parts for iv in part))
    b.memo.shared_sets[key] = b.memo.shared_sets[key] + (refs,)         # type: ignore[index]
    return made


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
    out, texts, at = [], [], 0
    for start, end, pieces in splices:
        out += merged[at:start] + pieces
        texts += elements[at:start] + tuple(render_interval(version, iv) for iv in pieces)
        at = end
    return out + merged[at:], tuple(texts) + elements[at:]


def _same_objects(old: tuple, new: tuple, nested: bool) -> bool:
    if not nested:
        return old is new
    return len(old) == len(new) and all(a is c for a, c in zip(old, new))


def render_interval(version: int, iv: tuple[int, int]) -> str:
    """version 4/6: an address range; 0: a plain integer range (protocol, port)."""
    lo, hi = iv
    if version:
        text = _ADDR_TEXT[version]
        return text(lo) if lo == hi else f"{text(lo)}-{text(hi)}"
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _ipv4_text(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "big"))      # == str(IPv4Address(value))


def _ipv6_text(value: int) -> str:
    """RFC 5952, as nft and ipaddress print it; inet_ntop (C) is ~10x faster than
    ipaddress and agrees with it except for the embedded-IPv4 forms it prints dotted."""
    text = socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))
    return text if "." not in text else str(ipaddress.IPv6Address(value))


_ADDR_TEXT = {4: _ipv4_text, 6: _ipv6_text}
