"""The stamp: one element, written by every commit (full, incremental or set elements)
in the same transaction, naming the ruleset the agent's tables hold.

The stamp is the one element of the set `agent_stamp` (type ipv6_addr, an interval set
so the netlink element path can change it) in the inet table. A full replace stamps the
digest of its script (so the same ruleset applied in full always carries the same
stamp); an incremental or element commit stamps the digest of (previous stamp, what it
changed). The reconciler saves the stamp with the ruleset it applied
(agent.reconciler.store); a kernel holding that stamp holds that ruleset (pure code).
"""
from __future__ import annotations

import hashlib
import ipaddress

from agent.compiler.ruleset import TABLE, NftSet

STAMP_SET = "agent_stamp"
_HEAD = f"table inet {TABLE} {{\n"


def build_token(*parts: str) -> str:
    """A stamp: 127 bits of the SHA-256 of `parts`, written as an IPv6 address (never
    the all-ones address, which an interval set would treat as open)."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return str(ipaddress.IPv6Address(int.from_bytes(digest[:16], "big") >> 1))


def stamp_set(token: str) -> NftSet:
    return NftSet(STAMP_SET, "ipv6_addr", (token,), interval=True)


def render_stamped(script: str, token: str) -> str:
    """A full replace script with the stamp set first in its inet table."""
    block = f"\tset {STAMP_SET} {{\n\t\ttype ipv6_addr\n\t\tflags interval\n\t\telements = {{ {token} }}\n\t}}\n"
    return script.replace(_HEAD, _HEAD + block, 1)


def render_restamp(token: str) -> str:
    """Lines appended to an incremental script: the stamp replaced in the same transaction."""
    where = f"inet {TABLE}"
    return (f"add set {where} {STAMP_SET} {{ type ipv6_addr; flags interval; }}\n"
            f"flush set {where} {STAMP_SET}\n"
            f"add element {where} {STAMP_SET} {{ {token} }}\n")
