"""The painting of one policy chain's lines for one IP version (pure; part of the
compiler, split from agent.compiler.compile): the member path for addresses in the
shared sets, the hashed points map, the region (a verdict map, or plain rules when
small) and the wide lines after it. docs/datapath.md, "Policy chains".
"""
from __future__ import annotations

from typing import Optional

from agent.compiler.attribution import chain_name
from agent.compiler.boxes import Box, first_match_labels, meets
from agent.compiler.builder import Builder
from agent.compiler.intervals import render_interval
from agent.compiler.memo import RegionPart
from agent.compiler import runs as compile_runs
from agent.compiler.runs import (ADDR_TYPE, FULL_ADDRESSES, FAMILY_KW, NFPROTO, Line, build_member_rules, build_points,
                                 build_runs, render_match)
from agent.compiler.ruleset import Chain, NftSet

# Boxes spanning every address written as rules after the region's map, at most.
WIDE_MAX = 8


def paint_version(b: Builder, prefix: str, v: int, lines: list[Line], with_sport: bool, with_dport: bool,
                   peer_kw: str, final: str) -> RegionPart:
    """One IP version: member path, points map, region; each box jumps to the verdict
    chain of the line that decides it (`Line.label`), `final` (the final drop's jump)
    ends the member path."""
    rules: list[str] = []
    sets: list[tuple[tuple, NftSet]] = []
    chains: list[tuple[tuple, Chain]] = []
    lines, tail = split_catch_all(lines, v)
    end = f"goto {chain_name(tail)}" if tail is not None else final
    refs = tuple(sorted({(_ref_key(b, ln.ref), ln.ref, True) for ln in lines if ln.ref}))
    if refs:
        chain, maps = _member_path(b, prefix, v, member_lines(v, lines), with_sport, with_dport, peer_kw)
        peers = b.shared_name("peers", "", v)
        refs += ((("peers", "", v), peers, False),)
        rules.append(f"{FAMILY_KW[v]} {peer_kw} @{peers} jump {chain.name}")
        chains.append((("chain", "members", prefix, v), chain))
        sets += maps
    items = [(bx, ln.label) for ln in lines if ln.ref is None for bx in ln.boxes]
    points, items = build_points(items, with_sport, with_dport)
    if points:
        sets.append(_points_map(b, prefix, v, points, peer_kw, rules))
    region_lines, region = _paint_region(b, prefix, v, items, with_sport, with_dport, peer_kw)
    rules += region_lines + [f"meta nfproto {NFPROTO[v]} {end}"] * (tail is not None)
    sets += [(("set", "region", prefix, v), region)] if region else []
    return RegionPart(tuple(rules), tuple(sets), tuple(chains), refs)


def split_catch_all(lines: list[Line], v: int) -> tuple[list[Line], Optional[int]]:
    """The lines before the first CIDR line that matches every packet of version v, and
    that line's label (None: there is none). The lines after it never decide; it decides
    every point the lines before it leave, so it is not painted (its complement would be
    many boxes) but written after the lookups: `meta nfproto ipv4 goto v_<n>`."""
    for i, line in enumerate(lines):
        if line.ref is None and any(_is_full(v, bx) for bx in line.boxes):
            return lines[:i], line.label
    return lines, None


def _is_full(v: int, box: Box) -> bool:
    return box[0] == FULL_ADDRESSES[v] and box[1] == (0, 255) and all(iv == (0, 65535) for iv in box[2:])


def _ref_key(b: Builder, name: str) -> tuple:
    return b.owners[name][2:]


def member_lines(v: int, lines: list[Line]) -> list[Line]:
    """The lines the member path needs; it is entered by `jump` and returns, when no line
    of it matched, to the static path, which decides by the first matching CIDR line.
    Kept: every set line, and a CIDR line when a kept line after it shares a point with it
    (a set line's address taken as any). Exact: if a packet's first match is a CIDR line
    left out, no kept line after it matches the packet (it would share that point), none
    before it does (it is the first), so the path returns and the static path decides by
    that very line; any other first match is in the path, met in order. The lines after
    the last set line all go (~31 % of the member-path rules at 1,000 x 100)."""
    last = max(i for i, ln in enumerate(lines) if ln.ref)
    full = FULL_ADDRESSES[v]
    kept: list[Line] = []
    later: list[Box] = []
    for ln in reversed(lines[:last + 1]):
        if ln.ref is not None:
            later.extend((full,) + tail for tail in ln.boxes)
        elif any(meets(box, other) for box in ln.boxes for other in later):
            later.extend(ln.boxes)
        else:
            continue
        kept.append(ln)
    kept.reverse()
    return kept


def _member_path(b: Builder, prefix: str, v: int, lines: list[Line], with_sport: bool, with_dport: bool,
                 peer_kw: str) -> tuple[Chain, list[tuple[tuple, NftSet]]]:
    cname = b.claim(f"{prefix}_m{v}", ("chain", "members", prefix, v))

    def map_name(i: int) -> str:
        return b.claim(f"{cname}_{i}", ("set", "members", prefix, v, i))
    rules, specs = build_member_rules(build_runs(lines), v, peer_kw, with_sport, with_dport, map_name,
                                      lambda iv: _addr_text(v, iv))
    maps = []
    for spec in specs:
        with_addr = spec.types[0] == ADDR_TYPE[v]
        elements = tuple(f"{_key_text(b, v, bx, with_addr)} : {verdict}" for bx, verdict in spec.items)
        made = NftSet(spec.name, " . ".join(spec.types), elements, interval=True, map_to="verdict")
        b.sets[spec.name] = made
        maps.append((("set",) + b.owners[spec.name][1:], made))
    chain = Chain(cname, tuple(rules))
    b.add_chain(cname, chain.rules)
    return b.chains[cname], maps


def _key_text(b: Builder, v: int, box: Box, with_addr: bool) -> str:
    """A member-path map key: address x tail (CIDR runs) or tail only (set runs)."""
    return b.element(v, box) if with_addr else " . ".join(render_interval(0, iv) for iv in box)


def _points_map(b: Builder, prefix: str, v: int, points: dict, peer_kw: str,
                rules: list[str]) -> tuple[tuple, NftSet]:
    name = b.add_set(NftSet(f"{prefix}_p{v}", f"{ADDR_TYPE[v]} . inet_proto . inet_service",
                            tuple(f"{render_interval(v, (a, a))} . {p} . {port} : goto {chain_name(label)}"
                                  for (a, p, port), label in sorted(points.items())),
                            interval=False, map_to="verdict"), ("points", prefix, v))
    rules.append(f"{FAMILY_KW[v]} {peer_kw} . meta l4proto . th dport vmap @{name}")
    return ("set", "points", prefix, v), b.sets[name]


def _addr_text(v: int, iv: tuple[int, int]) -> Optional[str]:
    """A plain rule's address match; None for every address of the version."""
    return None if iv == FULL_ADDRESSES[v] else render_interval(v, iv)


def _paint_region(b: Builder, prefix: str, v: int, items: list, with_sport: bool, with_dport: bool,
                  peer_kw: str) -> tuple[list[str], Optional[NftSet]]:
    """The region's lookup and map: every point some line matches, as disjoint boxes
    labelled with the verdict chain of the first line that matches there (accept and
    drop lines alike: one lookup decides and attributes). Or, for at most INLINE_MAX
    boxes (disjoint: their order does not matter), one plain rule per box and no map.
    Lines for every address of the version are left out of the map (`split_wide`)."""
    boxes, wide = split_wide(v, items)
    after = [f"{render_match(v, None, bx[1:], peer_kw, with_sport, with_dport)} goto {chain_name(label)}"
             for bx, label in wide]
    if len(boxes) <= compile_runs.INLINE_MAX:
        return [f"{render_match(v, _addr_text(v, bx[0]), bx[1:], peer_kw, with_sport, with_dport)} "
                f"goto {chain_name(label)}" for bx, label in boxes] + after, None
    key = [f"{FAMILY_KW[v]} {peer_kw}", "meta l4proto"] + ["th sport"] * with_sport + \
        ["th dport"] * with_dport
    types = [ADDR_TYPE[v], "inet_proto"] + ["inet_service"] * (with_sport + with_dport)
    elements = tuple(f"{b.element(v, bx)} : goto {chain_name(label)}" for bx, label in boxes)
    sname = b.add_set(NftSet(f"{prefix}_{v}", " . ".join(types), elements, map_to="verdict"), ("region", prefix, v))
    return [f"{' . '.join(key)} vmap @{sname}"] + after, b.sets[sname]


def split_wide(v: int, items: list[tuple[Box, int]]) -> tuple[tuple[tuple[Box, int], ...], list[tuple[Box, int]]]:
    """The map's boxes and the lines written as plain rules after it, in their order:
    the boxes for every address of the version (at most WIDE_MAX; default rules such as
    ssh from anywhere). Painted, such a line is cut at the address boundaries of every
    other line it overlaps, into address ranges that are not prefixes (the kernel
    expands each into up to 62 or 254 prefixes in every element's lookup table). Exact:
    the map holds the points whose first match is another line; a point it misses is
    decided, if at all, by its first matching line among these, which the rules after
    it meet in the list's order (docs/datapath.md, "Wide lines")."""
    full = FULL_ADDRESSES[v]
    wide = [i for i, (bx, _) in enumerate(items) if bx[0] == full][:WIDE_MAX]
    if not wide:
        return first_match_labels(items), []
    marked = set(wide)
    painted = [(bx, -1 - i if i in marked else label) for i, (bx, label) in enumerate(items)]
    return first_match_labels(painted, lambda label: label >= 0), [items[i] for i in wide]
