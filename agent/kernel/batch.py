"""A change of refilled chains and set elements (agent.compiler.transaction
.plan_netlink_changes) committed over netlink without libnftables, as ONE nfnetlink
batch: one transaction, committed or refused whole. libnftables 1.0.6 answers any
script touching a chain by fetching the table's chains and sets first (110-140 ms at
1,000 interfaces x 100 rules whatever the script); this batch costs what the kernel
takes to check and commit it.

Order, as agent.compiler.transaction plans it (the kernel checks each message against
the previous ones):

    1. flush each refilled chain     NFT_MSG_DELRULE naming table and chain, no handle
    2. delete elements               NFT_MSG_DELSETELEM (agent.kernel.elements)
    3. add elements                  NFT_MSG_NEWSETELEM
    4. append the chains' rules      NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, in order

Rules are encoded by agent.kernel.rules (a strict grammar: the compiler's member-path
and region rules); a rule outside it, or a table that is not inet, raises ValueError
before anything is sent, and the caller commits the change as an nft script instead.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

from agent.compiler.ruleset import NftSet, Ruleset
from agent.compiler.transaction import ChainRefill, NetlinkChanges
from agent.kernel.elements import Describes, commit_messages, element_messages
from agent.kernel.netlink import (FAMILY_NUMBERS, NFNL_SUBSYS_NFTABLES, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST,
                                  attr, header)
from agent.kernel.rules import RULE_CHAIN, RULE_TABLE, rule_attributes, rule_lookups

NFT_MSG_NEWRULE, NFT_MSG_DELRULE = 6, 8
NLM_F_APPEND = 0x800
FAMILIES = ("inet",)             # the rule encoding is nft's for an inet table (its dependencies)


@dataclass(frozen=True)
class Said:
    """A rule message, described by what it does."""
    text: str

    def describe(self, offset: Optional[int]) -> str:
        return self.text


def _message(kind: int, flags: int, seq: int, family: str, body: bytes) -> bytes:
    """A rule message; without NLM_F_ACK (as nft sends them): the kernel answers it only
    when it refuses it (hundreds of ACKs cost a few ms)."""
    return header(NFNL_SUBSYS_NFTABLES << 8 | kind, NLM_F_REQUEST | flags, seq, FAMILY_NUMBERS[family], 0,
                  len(body)) + body


def _acked(message: bytes) -> bytes:
    """The message asking for an ACK: the batch's last, whose answer ends the wait."""
    flags = struct.unpack_from("=H", message, 6)[0] | NLM_F_ACK
    return message[:6] + struct.pack("=H", flags) + message[8:]


def _flush(refill: ChainRefill, seq: int) -> tuple[bytes, Describes]:
    body = attr(RULE_TABLE, refill.table.encode() + b"\0") + attr(RULE_CHAIN, refill.chain.encode() + b"\0")
    return _message(NFT_MSG_DELRULE, 0, seq, refill.family, body), Said(f"flushing chain {refill.chain}")


def _check_lookups(text: str, sets: dict[str, NftSet]) -> None:
    """Each set the rule looks up is declared with the key types the rule builds, as a
    verdict map for `vmap` and as a plain set otherwise (nft's type check)."""
    for name, types, verdict_map in rule_lookups(text):
        found = sets.get(name)
        if found is None or tuple(t.strip() for t in found.type.split(".")) != types or \
                (found.map_to == "verdict") != verdict_map:
            want = f"{' . '.join(types)}{' : verdict' if verdict_map else ''}"
            raise ValueError(f"rule {text!r}: set {name} is not declared as {want}")


def _encoded(refill: ChainRefill, sets: Optional[dict[str, NftSet]]) -> list[tuple[str, bytes]]:
    """Each rule of the refill with its NEWRULE attributes (its lookups checked against
    the table's `sets` when given); ValueError names the chain."""
    if refill.family not in FAMILIES:
        raise ValueError(f"chain {refill.family} {refill.table} {refill.chain}: rules are encoded for "
                         f"{', '.join(FAMILIES)} tables only")
    try:
        if sets is not None:
            for text in refill.rules:
                _check_lookups(text, sets)
        return [(text, rule_attributes(refill.table, refill.chain, text)) for text in refill.rules]
    except ValueError as exc:
        raise ValueError(f"chain {refill.family} {refill.table} {refill.chain}: {exc}") from None


def build_messages(changes: NetlinkChanges, seq: int, declared: Optional[Ruleset] = None
                   ) -> list[tuple[bytes, Describes]]:
    """The batch's messages numbered from `seq`: flushes, element deletions, element
    additions, rule appends. Every rule is encoded (and its lookups checked against the
    sets `declared`, when given) before any message is made."""
    tables = {(t.family, t.name): t for t in declared.tables} if declared is not None else {}
    sets = {key: {s.name: s for s in t.sets} for key, t in tables.items()
            if any((r.family, r.table) == key for r in changes.refills)}
    rules = [(refill, _encoded(refill, None if declared is None else sets.get((refill.family, refill.table), {})))
             for refill in changes.refills]
    msgs = [_flush(refill, seq + i) for i, refill in enumerate(changes.refills)]
    msgs += element_messages(changes.elements, seq + len(msgs))
    for refill, encoded in rules:
        for text, body in encoded:
            msgs.append((_message(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, seq + len(msgs), refill.family, body),
                         Said(f"appending {text!r} to chain {refill.chain}")))
    if msgs:
        msgs[-1] = (_acked(msgs[-1][0]), msgs[-1][1])
    return msgs


def commit_netlink_changes(changes: NetlinkChanges, declared: Optional[Ruleset] = None) -> float:
    """Commit the refills and element changes as one transaction; returns the seconds
    the kernel took. KernelError (and nothing changed) when the kernel refuses any
    message, naming it; ValueError when a rule or element cannot be encoded, or (with
    `declared`, the ruleset the change leads to) a rule looks up a set not declared with
    its key's types (nothing sent)."""
    if not changes.refills and not any(c.removed or c.added for c in changes.elements):
        return 0.0
    where = ", ".join(sorted({f"{r.family} {r.table}" for r in changes.refills} |
                             {f"{c.family} {c.table}" for c in changes.elements}))
    return commit_messages(lambda seq: build_messages(changes, seq, declared), where, "rule and element changes")
