"""Drift repair that rewrites only what differs (pure).

An object is (family, table, kind, name), kind "chain", "set" or "table", as the drift
monitor reports what another process touched (agent.kernel.monitor) or as a listing
compared block by block with the reference listing finds it (`build_differing`).
`build_repair` is the ONE transaction that gives those chains and sets (maps are sets)
back their applied content; a table, or an object of an unknown kind, needs the full
replace (None).

Order inside the transaction:
    1. add the applied chains and sets that were touched (creates them if deleted;
       an existing one is left as it is)
    2. flush the touched chains (nothing references a set or chain deleted below)
    3. flush the touched sets; delete foreign sets
    4. add their elements, then the chains' rules
    5. delete foreign chains
"""
from __future__ import annotations

import re
from typing import Iterable, Optional

from agent.compiler.ruleset import Chain, NftSet, Ruleset
from agent.compiler.logs import DYNAMIC_SETS
from agent.compiler.transaction import add_set

Object = tuple[str, str, str, str]           # family, table, kind, name
_BLOCK = re.compile(r"^\t(chain|set|map) (\S+) \{$")


def build_repair(applied: Ruleset, objects: Iterable[Object]) -> Optional[str]:
    chains: dict[tuple[str, str, str], Optional[Chain]] = {}
    sets: dict[tuple[str, str, str], Optional[NftSet]] = {}
    tables = {(t.family, t.name): t for t in applied.tables}
    for family, table, kind, name in objects:
        t = tables.get((family, table))
        if t is None or kind not in ("chain", "set"):
            return None
        if kind == "chain":
            chains[(family, table, name)] = next((c for c in t.chains if c.name == name), None)
        else:
            sets[(family, table, name)] = next((s for s in t.sets if s.name == name), None)
    return "\n".join(_repair_lines(chains, sets)) + "\n" if chains or sets else ""


def _repair_lines(chains: dict, sets: dict) -> list[str]:
    out: list[str] = []
    for (family, table, _n), c in chains.items():
        if c is not None:
            out.append(f"add chain {family} {table} {c.name}" + (f" {{ {c.hook} }}" if c.hook else ""))
    for (family, table, _n), s in sets.items():
        if s is not None:
            out.append(add_set(f"{family} {table}", NftSet(s.name, s.type, (), s.interval, s.map_to, s.extra)))
    out += [f"flush chain {f} {t} {n}" for (f, t, n) in chains]
    for (family, table, name), s in sets.items():
        kind = "map" if s is not None and s.map_to else "set"
        out.append(f"flush {kind} {family} {table} {name}" if s is not None
                   else f"delete set {family} {table} {name}")
        if s is not None and s.elements:
            out.append(f"add element {family} {table} {name} {{ {', '.join(s.elements)} }}")
    for (family, table, _n), c in chains.items():
        out += [f"add rule {family} {table} {c.name} {r}" for r in (c.rules if c is not None else ())]
    out += [f"delete chain {f} {t} {n}" for (f, t, n), c in chains.items() if c is None]
    return out


_DYNAMIC = re.compile(r"(\n\tset (?:%s) \{\n(?:\t\t(?!elements)[^\n]*\n)*?)\t\telements = \{[^}]*\}\n" % "|".join(
    re.escape(n) for n in DYNAMIC_SETS))


def without_dynamic_elements(text: str) -> str:
    """A listing without the elements the kernel adds to the agent's dynamic sets (the
    log rate limits, agent.compiler.logs): they come and go with traffic, not drift."""
    return _DYNAMIC.sub(r"\1", text)


def build_blocks(text: str) -> dict[Object, str]:
    """A listing (`nft list table`, one or more tables) as its chains and sets, each the
    text of its block, counters left out."""
    out: dict[Object, str] = {}
    table: tuple[str, str] = ("?", "?")
    current: Optional[Object] = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("table "):
            parts = line.split()
            table = (parts[1], parts[2]) if len(parts) >= 3 else table
        elif current is None and (m := _BLOCK.match(line)):
            kind = "chain" if m.group(1) == "chain" else "set"
            current, lines = (table[0], table[1], kind, m.group(2)), []
        elif current is not None and line == "\t}":
            out[current] = "\n".join(lines)
            current = None
        elif current is not None:
            lines.append(re.sub(r"counter packets \d+ bytes \d+", "counter", line))
    return out


def build_differing(listing: str, reference: str) -> frozenset[Object]:
    """The chains and sets whose listed text differs from the reference's (or that
    one of the two lacks)."""
    now, then = build_blocks(listing), build_blocks(reference)
    return frozenset(k for k in now.keys() | then.keys() if now.get(k) != then.get(k))
