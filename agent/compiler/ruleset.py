"""The compiled form of the desired state: frozen nftables objects (tables, chains, sets).

Produced by agent.compiler.compile, turned into nft text by agent.compiler.render and into incremental
transactions by agent.compiler.transaction; nothing here touches the kernel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

TABLE = "secgroup_agent"


@dataclass(frozen=True)
class NftSet:
    name: str
    type: str                       # "ipv4_addr . inet_proto . inet_service"
    elements: tuple[str, ...]
    interval: bool = True
    map_to: Optional[str] = None    # maps: "verdict" or "mark"
    extra: tuple[str, ...] = ()     # more declaration statements: ("size 65536", "flags dynamic,timeout", ...)


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[str, ...]
    hook: Optional[str] = None      # "type filter hook forward priority 0; policy accept;"


@dataclass(frozen=True)
class Table:
    family: str
    name: str
    sets: tuple[NftSet, ...]
    chains: tuple[Chain, ...]


@dataclass(frozen=True)
class Ruleset:
    tables: tuple[Table, ...]
    errors: tuple[str, ...] = ()    # interfaces compiled closed, and why
    owned: tuple[tuple[str, str], ...] = (("inet", TABLE), ("bridge", TABLE))
