"""Verdict identities: which line of the desired state decided a packet (pure).

Every verdict the datapath takes has a stable identity (`VerdictId`): a user rule, a
default rule, the intra-group accept, an essential (connection state, anti-spoofing,
first-hop guard, quota), the final drop, an unknown interface. The compiler gives each
identity of a build a small number and makes for it ONE verdict chain, `v_<number>`,
that holds its counter (and log statement, and connection mark) and the verdict; the
painted regions jump there, so attribution costs no extra lookup on the accept path.

This module is the contract between the compiler (which numbers identities and makes
the chains), the kernel readers (NFLOG, trace, conntrack events, counters) and the
CLI: the chain name, the chain comment, the log prefix and the conntrack mark layout
are defined here and nowhere else.

* chain `v_<n>`; its first rule carries `comment "<key>"` (`VerdictId.key`), so a
  listing of the table alone resolves a number (no file needed after a restart);
* log prefix `sg:<n>:` (nft limits a prefix to 127 bytes; a key may not fit);
* conntrack mark of an accepted connection: bits 16-31 the egress identity number,
  bits 0-15 the ingress one (0: none); numbers are 1..65535.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

NUMBER_MAX = 0xFFFF
NFLOG_GROUP = 2701              # default NFLOG group of the agent's log statements
CHAIN_PREFIX = "v_"
_PREFIX_RE = re.compile(r"^sg:(\d+):")

# stages of a verdict (the `stage` field)
USER, DEFAULT, INTRA_GROUP, FINAL = "user", "default", "intra-group", "final"
INVALID, SPOOF_IP, SPOOF_MAC, GUARD, QUOTA, UNKNOWN = (
    "invalid", "anti-spoofing-ip", "anti-spoofing-mac", "first-hop-guard", "quota", "unknown-interface")


@dataclass(frozen=True, order=True)
class VerdictId:
    """What decided: stage, direction, group, rule (a rule id, or `default:ssh` ...),
    priority, the verdict the kernel takes, and whether the rule is in audit mode (the
    kernel accepts what the rule would drop, counts and logs it)."""
    stage: str
    direction: str = ""          # "ingress" | "egress" | "" (not per direction)
    verdict: str = "drop"        # "accept" | "drop"
    group: str = ""
    rule: str = ""
    priority: Optional[int] = None
    audit: bool = False

    def key(self) -> str:
        """A one-line text naming this identity, unique per identity: the chain comment."""
        parts = [self.direction or "-", self.stage, self.group or "-", self.rule or "-",
                 "-" if self.priority is None else str(self.priority), self.verdict]
        return "/".join(parts) + ("/audit" if self.audit else "")

    @classmethod
    def from_key(cls, key: str) -> "VerdictId":
        parts = key.split("/")
        audit = len(parts) == 7 and parts[6] == "audit"
        direction, stage, group, rule, priority, verdict = parts[:6]
        return cls(stage, "" if direction == "-" else direction, verdict, "" if group == "-" else group,
                   "" if rule == "-" else rule, None if priority == "-" else int(priority), audit)


def chain_name(number: int) -> str:
    return f"{CHAIN_PREFIX}{number}"


def number_of_chain(name: str) -> Optional[int]:
    if name.startswith(CHAIN_PREFIX) and name[len(CHAIN_PREFIX):].isdigit():
        return int(name[len(CHAIN_PREFIX):])
    return None


def log_prefix(number: int) -> str:
    return f"sg:{number}:"


def number_of_prefix(prefix: str) -> Optional[int]:
    m = _PREFIX_RE.match(prefix)
    return int(m.group(1)) if m else None


def ct_mark_numbers(mark: int) -> tuple[int, int]:
    """(egress, ingress) identity numbers of a connection's mark; 0 means none."""
    return (mark >> 16) & NUMBER_MAX, mark & NUMBER_MAX


def ct_mark_statement(number: int, direction: str) -> str:
    """The nft statement that records `number` as the admitting identity of `direction`."""
    if direction == "egress":
        return f"ct mark set ct mark and 0x0000ffff or 0x{number << 16:08x}"
    return f"ct mark set ct mark and 0xffff0000 or 0x{number:08x}"
