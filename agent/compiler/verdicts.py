"""Verdict identities of one build: their numbers and their verdict chains (pure).

The contract (chain `v_<n>`, comment = `VerdictId.key()`, log prefix, ct mark layout)
is agent.compiler.attribution; this module applies it to a build:

* `verdict_of` names the identity of an effective-list entry (the line that decides);
* `Numbering` gives each identity of a build a number 1..65535, keeping the previous
  build's number for every identity it had (so counters, logs and conntrack marks keep
  meaning the same line across builds) and giving a new identity a number the previous
  build did not use;
* `verdict_chain` is the one-rule chain of an identity: `counter`, the connection mark
  (accepts), the log statement (agent.compiler.logs), the verdict, the comment.

A painted region jumps to the chain (`goto v_<n>`); the chain's verdict ends the
packet's evaluation of this hook, as the bare verdict did.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Mapping, Optional

from agent.compiler.attribution import (DEFAULT, FINAL, GUARD, INTRA_GROUP, INVALID, NUMBER_MAX, QUOTA, SPOOF_IP,
                                        SPOOF_MAC, UNKNOWN, USER, VerdictId, chain_name, ct_mark_statement)
from agent.compiler.logs import log_rules
from agent.compiler.ruleset import Chain
from agent.model.objects import LogSettings
from agent.policy import effective as eff

_ESSENTIAL_STAGE = {"invalid": INVALID, "spoof-mac": SPOOF_MAC, "spoof-ip": SPOOF_IP}
COMMENT_MAX = 127               # nft keeps a comment of at most 128 bytes (with its NUL)
_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\/]')


def default_rule_id(entry: eff.Entry) -> str:
    """`default:ssh`, `default:egress-open` ... from a default line's description."""
    what = entry.description.split(": ", 1)[-1]
    return "default:" + what.lower().replace(" ", "-")


def verdict_of(entry: eff.Entry, direction: str) -> Optional[VerdictId]:
    """The identity of the line `entry` of a list of `direction`; None for lines that
    are not attributed (established connections, neighbour discovery, DHCP client
    requests: accepted in stages 1-2 without a counter of their own)."""
    if entry.stage == eff.USER:
        return VerdictId(USER, direction, entry.verdict, entry.group_id or "", entry.rule_id or "",
                         entry.priority, entry.audit)
    if entry.stage == eff.DEFAULTS:
        return VerdictId(DEFAULT, direction, entry.verdict, entry.group_id or "", default_rule_id(entry),
                         entry.priority)
    if entry.stage == eff.INTRA_GROUP:
        return VerdictId(INTRA_GROUP, direction, "accept", entry.group_id or "")
    if entry.stage == eff.FINAL:
        return VerdictId(FINAL, direction)
    if entry.kind in _ESSENTIAL_STAGE:
        return VerdictId(_ESSENTIAL_STAGE[entry.kind], direction)
    if entry.kind.startswith("guard-"):
        return VerdictId(GUARD, direction, entry.verdict, rule=entry.kind)
    return None


def quota_verdict(direction: str) -> VerdictId:
    return VerdictId(QUOTA, direction)


def unknown_verdict(direction: str) -> VerdictId:
    return VerdictId(UNKNOWN, direction)


@dataclass
class Numbering:
    """The numbers of one build: the previous build's kept, new ones from those it did
    not use (a number released by a deleted rule is not handed to another before one
    build has passed without it; readers of old logs and marks see no reuse then)."""
    previous: Mapping[VerdictId, int] = field(default_factory=dict)
    numbers: dict[VerdictId, int] = field(default_factory=dict)
    _taken: set[int] = field(default_factory=set)
    _next: int = 1

    def __post_init__(self) -> None:
        self._taken = set(self.previous.values())

    def number(self, vid: VerdictId) -> int:
        got = self.numbers.get(vid)
        if got is None:
            got = self.previous.get(vid)
            if got is None:
                got = self._free()
            self.numbers[vid] = got
            self._taken.add(got)
        return got

    def _free(self) -> int:
        n = self._next
        while n in self._taken:
            n += 1
        if n > NUMBER_MAX:
            raise ValueError(f"more than {NUMBER_MAX} verdict identities in one build")
        self._next = n + 1
        return n

    def goto(self, vid: VerdictId) -> str:
        return f"goto {chain_name(self.number(vid))}"


def comment_text(vid: VerdictId) -> str:
    """The chain comment: the identity's key. A group or rule id with a character a key
    or an nft string cannot carry (`/`, `"`, `\\`, anything but printable ASCII) has it
    written `_` there, and a key longer than nft keeps is cut: such a comment names the
    identity only approximately (the agent's state resolves the number exactly)."""
    safe = replace(vid, group=_UNSAFE.sub("_", vid.group), rule=_UNSAFE.sub("_", vid.rule))
    return safe.key()[:COMMENT_MAX]


def verdict_chain(vid: VerdictId, number: int, log: Optional[LogSettings] = None) -> Chain:
    """`counter [ct mark set ...] accept|drop comment "<key>"`; with `log`, the verdict
    moves behind the rate-limited log statement (agent.compiler.logs)."""
    parts = ["counter"]
    if vid.verdict == "accept" and vid.direction:
        parts.append(ct_mark_statement(number, vid.direction))
    comment = f'comment "{comment_text(vid)}"'
    if log is None:
        return Chain(chain_name(number), (" ".join(parts + [vid.verdict, comment]),))
    return Chain(chain_name(number), (" ".join(parts + [comment]),) + log_rules(number, vid.verdict, log))
