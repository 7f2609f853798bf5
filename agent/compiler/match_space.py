"""Exact match spaces and first-match regions of effective lists, as interval boxes.

A new connection, seen by one effective list, is a point of
    peer address x protocol x source port x destination port
per IP version (the peer is the source on ingress, the destination on egress). Every
line of a list matches a union of boxes (`agent.compiler.boxes`) of that space:

* `match` lines (intra-group, user, default): one box per peer network;
* the final drop: the whole space;
* anti-spoofing by address (egress): the whole IPv4 space when the interface has no
  IPv4 address (every IPv4 packet it could send has a foreign source); nothing
  otherwise, because a packet from the interface's own address never matches it and
  IPv6 link-local sources are always allowed;
* the first-hop guard's DHCP line (egress): UDP from source port 67 (IPv4) / 547 (IPv6);
  its other lines judge ND messages or sources that are not the interface's: nothing;
* connection state, neighbour discovery and anti-spoofing by MAC: nothing. They never
  judge a new connection from the interface's own addresses, except neighbour
  discovery, which takes ICMPv6 types 133-136 only: rules cannot restrict the ICMP
  type, so for every other type the lines below decide the same point.

`Space` keeps what no line has matched yet; `list_space` / `list_regions` split a
whole space into disjoint boxes, each tagged with the index of the line that decides
it. Exact integer arithmetic throughout; no sampling.
"""
from __future__ import annotations

import bisect
import functools
import ipaddress
from typing import Callable, Iterable, Optional, Sequence

from agent.compiler.boxes import Box, disjoint_union, intersect, merge_intervals
from agent.model.objects import IPNetwork
from agent.policy.guard import DHCP_SERVER_PORT
from agent.policy.effective import (PROTOCOL_FAMILY, PROTOCOL_NAMES, PROTOCOL_NUMBERS, EffectiveList, Entry, Match,
                          net_text)

VERSIONS = (4, 6)
ADDR_MAX = {4: 2 ** 32 - 1, 6: 2 ** 128 - 1}
ALL_PROTO, ALL_PORTS = (0, 255), (0, 65535)


def full_box(version: int) -> Box:
    return ((0, ADDR_MAX[version]), ALL_PROTO, ALL_PORTS, ALL_PORTS)


def match_tail(match: Match, version: int, with_sport: bool = True, with_dport: bool = True) -> Optional[Box]:
    """The protocol x ports box of a match (its peer aside); None if not of this
    version. Without `with_sport` / `with_dport` that axis is left out (the compiler's
    lookups carry port fields only when some line of the list restricts them)."""
    if PROTOCOL_FAMILY.get(match.protocol, version) != version:
        return None
    tail = [ALL_PROTO if match.protocol == "all" else (PROTOCOL_NUMBERS[match.protocol],) * 2]
    if with_sport:
        tail.append((match.sports.lo, match.sports.hi) if match.sports else ALL_PORTS)
    if with_dport:
        tail.append((match.ports.lo, match.ports.hi) if match.ports else ALL_PORTS)
    return tuple(tail)


def match_boxes(match: Match, version: int, with_sport: bool = True, with_dport: bool = True) -> list[Box]:
    """The boxes a match covers: one per peer network of the version (the one
    match -> boxes of the code base: `explain`, lint and the compiler use it)."""
    tail = match_tail(match, version, with_sport, with_dport)
    if tail is None:
        return []
    return [(_interval(n),) + tail for n in match.networks if n.version == version]


@functools.lru_cache(maxsize=65536)
def _interval(net: IPNetwork) -> tuple[int, int]:
    return int(net.network_address), int(net.broadcast_address)


def entry_boxes(entry: Entry, elist: EffectiveList, version: int) -> list[Box]:
    """The part of the space that `entry` matches in `elist` (see the module doc)."""
    if entry.kind == "match":
        return match_boxes(entry.match, version)
    if entry.kind == "final":
        return [full_box(version)]
    if entry.kind == "spoof-ip" and version == 4 and not elist.interface.source_networks(4):
        return [full_box(4)]
    if entry.kind == "guard-dhcp":      # a new UDP flow from the DHCP server port
        port = DHCP_SERVER_PORT[version]
        return [((0, ADDR_MAX[version]), (17, 17), (port, port), ALL_PORTS)]
    return []


def subtract(a: Box, b: Box) -> list[Box]:
    """a minus b as at most 2 x dimensions disjoint boxes."""
    if intersect(a, b) is None:
        return [a]
    out: list[Box] = []
    core = list(a)
    for d, ((alo, ahi), (blo, bhi)) in enumerate(zip(a, b)):
        if alo < blo:
            out.append(tuple(core[:d] + [(alo, blo - 1)] + core[d + 1:]))
        if ahi > bhi:
            out.append(tuple(core[:d] + [(bhi + 1, ahi)] + core[d + 1:]))
        core[d] = (max(alo, blo), min(ahi, bhi))
    return out


def _cut(p: Box, q: Box) -> Optional[Box]:
    """`agent.compiler.boxes.intersect` for 3-D boxes, unrolled (the hot path of `Space`)."""
    (a0, a1), (b0, b1), (c0, c1) = p
    (x0, x1), (y0, y1), (z0, z1) = q
    lo, hi = (a0 if a0 > x0 else x0), (a1 if a1 < x1 else x1)
    if lo > hi:
        return None
    lo2, hi2 = (b0 if b0 > y0 else y0), (b1 if b1 < y1 else y1)
    if lo2 > hi2:
        return None
    lo3, hi3 = (c0 if c0 > z0 else z0), (c1 if c1 < z1 else z1)
    if lo3 > hi3:
        return None
    return (lo, hi), (lo2, hi2), (lo3, hi3)


def _minus(p: Box, x: Box) -> list[Box]:
    """3-D p minus x, where x lies inside p (unrolled `subtract`)."""
    (a0, a1), (b0, b1), (c0, c1) = p
    (x0, x1), (y0, y1), (z0, z1) = x
    out = []
    if a0 < x0:
        out.append(((a0, x0 - 1), (b0, b1), (c0, c1)))
    if a1 > x1:
        out.append(((x1 + 1, a1), (b0, b1), (c0, c1)))
    if b0 < y0:
        out.append(((x0, x1), (b0, y0 - 1), (c0, c1)))
    if b1 > y1:
        out.append(((x0, x1), (y1 + 1, b1), (c0, c1)))
    if c0 < z0:
        out.append(((x0, x1), (y0, y1), (c0, z0 - 1)))
    if c1 > z1:
        out.append(((x0, x1), (y0, y1), (z1 + 1, c1)))
    return out


class Space:
    """A shrinking part of one IP version's space: what no line has matched yet.

    Kept as address segments (sorted starts), each holding the disjoint 3-D boxes
    (protocol x source port x destination port) still free for every address of the
    segment. Taking a box splits segments at its address bounds and subtracts the rest
    of the box from each segment it spans: the cost follows the number of distinct
    address bounds, not the product of all dimensions' bounds. With `record`, each
    segment also keeps which line took which part (for `takers`)."""

    def __init__(self, version: int, record: bool = False):
        self.top = ADDR_MAX[version]
        self.starts: list[int] = [0]
        self.parts: list[list[Box]] = [[full_box(version)[1:]]]
        self.owners: Optional[list[list[tuple[int, Box]]]] = [[]] if record else None

    def _split(self, at: int) -> int:
        """The index of the segment starting at `at` (splitting one if needed)."""
        if at > self.top:
            return len(self.starts)
        i = bisect.bisect_right(self.starts, at) - 1
        if self.starts[i] == at:
            return i
        self.starts.insert(i + 1, at)
        self.parts.insert(i + 1, list(self.parts[i]))
        if self.owners is not None:
            self.owners.insert(i + 1, list(self.owners[i]))
        return i + 1

    def _end(self, k: int) -> int:
        return self.starts[k + 1] - 1 if k + 1 < len(self.starts) else self.top

    def take(self, box: Box, line: int = -1) -> list[Box]:
        """Remove `box` from the space; returns the parts of it that were still free."""
        (lo, hi), rest = box[0], box[1:]
        i, j = self._split(lo), self._split(hi + 1)
        taken: list[Box] = []
        for k in range(i, j):
            kept: list[Box] = []
            for p in self.parts[k]:
                x = _cut(p, rest)
                if x is None:
                    kept.append(p)
                    continue
                taken.append(((self.starts[k], self._end(k)),) + x)
                kept.extend(_minus(p, x))
                if self.owners is not None:
                    self.owners[k].append((line, x))
            self.parts[k] = kept
        return taken

    def _segments(self, box: Box) -> range:
        lo, hi = box[0]
        first = bisect.bisect_right(self.starts, lo) - 1
        return range(first, bisect.bisect_right(self.starts, hi))

    def meets(self, box: Box) -> bool:
        """Whether some point of `box` is still free (the space is unchanged)."""
        rest = box[1:]
        return any(_cut(p, rest) is not None for k in self._segments(box) for p in self.parts[k])

    def pieces(self, box: Box) -> list[tuple[int, Box]]:
        """(line, part) for every recorded part of `box` (needs `record`)."""
        (lo, hi), rest = box[0], box[1:]
        out = []
        for k in self._segments(box):
            addr = (max(lo, self.starts[k]), min(hi, self._end(k)))
            out += [(line, (addr,) + x) for line, p in self.owners[k] if (x := _cut(p, rest)) is not None]
        return out

    def takers(self, box: Box) -> set[int]:
        """The lines that took some point of `box` (needs `record`)."""
        rest = box[1:]
        return {line for k in self._segments(box) for line, p in self.owners[k]
                if _cut(p, rest) is not None}


def first_match_space(lines: Sequence[Iterable[Box]], version: int) -> Space:
    """The whole space of `version` split by first match over `lines` (each a union of
    boxes), recorded: `pieces(box)` tells which line decides each part of a box."""
    space = Space(version, record=True)
    for index, boxes in enumerate(lines):
        for box in boxes:
            space.take(box, index)
    return space


def list_space(elist: EffectiveList, version: int) -> Space:
    """The space of one IP version split by the line of `elist` that decides it."""
    return first_match_space([entry_boxes(e, elist, version) for e in elist.entries], version)


def list_regions(elist: EffectiveList, version: int) -> list[tuple[int, Box]]:
    """[(line index, region)]: the space of one IP version split by deciding line."""
    return list_space(elist, version).pieces(full_box(version))


# --- plain words ------------------------------------------------------------------

def _proto_name(n: int) -> str:
    return PROTOCOL_NAMES.get(n, f"protocol {n}")


def describe_protocols(intervals: Iterable[tuple[int, int]]) -> str:
    protos = sorted({p for lo, hi in intervals for p in range(lo, hi + 1)})
    if len(protos) == 256:
        return "any protocol"
    missing = sorted(set(range(256)) - set(protos))
    if len(protos) > 128 and len(missing) <= 3:
        return "any protocol but " + " and ".join(_proto_name(p) for p in missing)
    if len(protos) <= 3:
        return "/".join(_proto_name(p) for p in protos)
    spans: list[list[int]] = []
    for p in protos:
        if spans and spans[-1][1] + 1 == p:
            spans[-1][1] = p
        else:
            spans.append([p, p])
    return "protocols " + ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in spans)


def describe_interval(version: int, iv: tuple[int, int]) -> str:
    addr = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    lo, hi = addr(iv[0]), addr(iv[1])
    if lo == hi:
        return str(lo)
    nets = list(ipaddress.summarize_address_range(lo, hi))
    return ", ".join(net_text(n) for n in nets) if len(nets) <= 2 else f"{lo}-{hi}"


def _set_words(intervals: Iterable[tuple[int, int]], word: Callable, limit: int = 6
               ) -> tuple[str, list[str]]:
    """(outer, holes) where 'outer except holes' is short; else (the words, [])."""
    merged = merge_intervals(intervals)
    holes = [(a[1] + 1, b[0] - 1) for a, b in zip(merged, merged[1:])]
    if len(merged) > 1 and len(holes) <= 3:
        return word((merged[0][0], merged[-1][1])), [word(h) for h in holes]
    more = f" and {len(merged) - limit} more ranges" if len(merged) > limit else ""
    return ", ".join(word(iv) for iv in merged[:limit]) + more, []


def describe_addresses(version: int, intervals: Iterable[tuple[int, int]]) -> str:
    """Plain words for a set of addresses: CIDRs or ranges, or 'X except Y'."""
    outer, holes = _set_words(intervals, lambda iv: describe_interval(version, iv))
    return f"{outer} except {', '.join(holes)}" if holes else outer


def _ports(iv: tuple[int, int]) -> str:
    return str(iv[0]) if iv[0] == iv[1] else f"{iv[0]}-{iv[1]}"


def describe_ports(intervals: Iterable[tuple[int, int]]) -> str:
    """'' for every port, else ' 5432', ' 1000-2000', ' except ports 22, 80'."""
    merged = merge_intervals(intervals)
    if merged == [ALL_PORTS]:
        return ""
    outer, holes = _set_words(merged, _ports)
    if holes and outer == _ports(ALL_PORTS):
        return f" except ports {', '.join(holes)}"
    return f" {outer} except {', '.join(holes)}" if holes else f" {outer}"


def describe_parts(boxes: Iterable[Box], version: int, direction: str) -> list[tuple[str, tuple[Box, ...]]]:
    """Plain words for a union of boxes, one phrase per protocol set, source ports and
    addresses, each with the boxes it tells of: 'tcp 5432 from 10.0.1.0/24', 'tcp except
    ports 22, 80 from 10.0.1.12', 'any protocol but tcp to ::/0 except fd00::1'."""
    protos: dict[tuple, list[tuple[int, int]]] = {}
    for addr, proto, sports, dports in disjoint_union(boxes):
        protos.setdefault((addr, sports, dports), []).append(proto)
    addrs: dict[tuple, list[tuple[int, int]]] = {}
    for (addr, sports, dports), ps in protos.items():
        addrs.setdefault((describe_protocols(ps), sports, dports), []).append(addr)
    ports: dict[tuple, list[tuple[int, int]]] = {}
    for (words, sports, dports), ivs in addrs.items():
        ports.setdefault((words, sports, tuple(sorted(ivs))), []).append(dports)
    side = "from" if direction == "ingress" else "to"
    out = []
    for (words, sports, ivs), dps in sorted(ports.items(), key=lambda kv: (kv[0][2][0], kv[0][:2])):
        sport = f" sport {_ports(sports)}" if sports != ALL_PORTS else ""
        parts = tuple((a, p, sports, d) for a in ivs for d in dps for p in protos[(a, sports, d)])
        out.append((f"{words}{describe_ports(dps)}{sport} {side} {describe_addresses(version, ivs)}",
                    parts))
    return out
