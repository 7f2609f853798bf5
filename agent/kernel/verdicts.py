"""The verdict chains of the applied tables, read back from the kernel: number -> the
identity key in the chain's comment (agent.compiler.attribution), with the chain's
counter. A listing of the tables alone resolves every number, also after a restart
and in a process (`secgroup-agent logs`) that never compiled anything. The listing
leaves the set elements out (`nft -t`): at 1,000 interfaces x 100 rules they are
~120,000 elements, which a full listing takes seconds and ~1 GB to print.

Also interface names by ifindex (NFLOG reports indexes).
"""
from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Iterable, Optional

from agent.compiler.attribution import number_of_chain
from agent.compiler.ruleset import TABLE
from agent.errors import KernelError
from agent.kernel import nft

TABLES = (("inet", TABLE), ("bridge", TABLE))
_CHAIN = re.compile(r"^\tchain (\S+) \{$")
_COMMENT = re.compile(r'comment "((?:[^"\\]|\\.)*)"')
_LOG = re.compile(r"(^|\s)log(\s|$)")
_COUNTER = re.compile(r"counter packets (\d+) bytes (\d+)")


@dataclass(frozen=True)
class VerdictChain:
    """One `v_<n>` chain: its comment (the identity key; "" when it has none), the
    packets and bytes that entered it (its largest counter: a chain's counters count
    subsets of what entered), and whether it has a log statement."""
    number: int
    key: str
    packets: int = 0
    bytes: int = 0
    logs: bool = False


def parse_verdict_chains(listing: str) -> dict[int, VerdictChain]:
    """The `v_<n>` chains of an `nft list table` text (one or more tables)."""
    out: dict[int, VerdictChain] = {}
    number: Optional[int] = None
    key, packets, nbytes, logs = "", 0, 0, False
    for line in listing.splitlines():
        m = _CHAIN.match(line)
        if m:
            number, key, packets, nbytes, logs = number_of_chain(m.group(1)), "", 0, 0, False
            continue
        if number is None:
            continue
        if line == "\t}":
            out[number] = VerdictChain(number, key, packets, nbytes, logs)
            number = None
            continue
        c = _COMMENT.search(line)
        if c and not key:
            key = c.group(1)
        logs = logs or bool(_LOG.search(_COMMENT.sub("", line)))
        for p, b in _COUNTER.findall(line):
            if int(p) > packets:
                packets, nbytes = int(p), int(b)
    return out


def read_verdict_chains(tables: Iterable[tuple[str, str]] = TABLES) -> dict[int, VerdictChain]:
    """The verdict chains of the agent's tables now ({} when none is applied); a number
    present in several tables (inet and bridge) has its counters added."""
    out: dict[int, VerdictChain] = {}
    for family, name in tables:
        listing = nft.list_table(family, name, elements=False)    # chains only: no set elements
        for n, c in parse_verdict_chains(listing or "").items():
            old = out.get(n)
            out[n] = c if old is None else VerdictChain(n, old.key or c.key, old.packets + c.packets,
                                                        old.bytes + c.bytes, old.logs or c.logs)
    return out


def interface_name(index: Optional[int]) -> Optional[str]:
    """The name of interface `index` in this namespace now (None: no index, or gone).
    Not cached: an index can be reused by another interface (a VM restarted); the
    lookup is one ioctl, a few microseconds, and log lines are rate-limited."""
    if not index:
        return None
    try:
        return socket.if_indextoname(index)
    except OSError:
        return None


__all__ = ["KernelError", "VerdictChain", "interface_name", "parse_verdict_chains", "read_verdict_chains"]
