"""Verdict counters read back from the kernel, and when each identity was last hit (pure).

The kernel side is the verdict chains (agent.compiler.verdicts, agent.compiler.logs):
rule 0 of `v_<n>` counts every packet its identity decided and carries the key as its
comment; a logging chain's rules 1-3 count the packets the rate limits kept from the
log (per rule, per interface, global) and rule 4 those logged. `read_counters` takes
nft's JSON listing of the table (`nft -j -t list table`, agent.kernel.nft) and needs
nothing else: a listing resolves numbers to identities by itself.

Decided packets of an accept identity are new connections (established traffic is
accepted in stage 1 and never reaches a verdict chain); of a drop identity, dropped
packets (every packet of a refused flow, retransmissions included).

`update_hits` keeps, per identity key, when it was first seen and last seen counting
more than before (`HitRecord`, a JSON file in the state directory: `counters` and the
daemon's metrics collector update it); `never_hit` gives lint the identities with no
hit since they were first seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

from agent.compiler.attribution import VerdictId, number_of_chain


@dataclass(frozen=True)
class VerdictCounter:
    number: int
    key: str
    packets: int
    bytes: int
    logged: Optional[int] = None        # None: the chain does not log
    suppressed: Optional[int] = None    # packets the rate limits kept from the log

    @property
    def vid(self) -> VerdictId:
        return VerdictId.from_key(self.key)

    def to_json(self) -> dict[str, Any]:
        v = self.vid
        return {"number": self.number, "key": self.key, "direction": v.direction or None, "stage": v.stage,
                "group": v.group or None, "rule": v.rule or None, "priority": v.priority, "verdict": v.verdict,
                "audit": v.audit, "packets": self.packets, "bytes": self.bytes, "logged": self.logged,
                "suppressed": self.suppressed}


def _counter(rule: dict) -> tuple[int, int]:
    for expr in rule.get("expr", ()):
        if isinstance(expr, dict) and "counter" in expr:
            c = expr["counter"] or {}
            return int(c.get("packets", 0)), int(c.get("bytes", 0))
    return 0, 0


def read_counters(objects: Iterable[dict]) -> list[VerdictCounter]:
    """The verdict chains' counters in a JSON listing, by number."""
    rules: dict[str, list[dict]] = {}
    for obj in objects:
        rule = obj.get("rule") if isinstance(obj, dict) else None
        if rule and number_of_chain(str(rule.get("chain", ""))) is not None:
            rules.setdefault(rule["chain"], []).append(rule)
    out = []
    for chain, found in rules.items():
        found.sort(key=lambda r: r.get("handle", 0))
        key = found[0].get("comment")
        if not key:
            continue
        packets, nbytes = _counter(found[0])
        logged = suppressed = None
        if len(found) == 5:
            suppressed = sum(_counter(r)[0] for r in found[1:4])
            logged = _counter(found[4])[0]
        out.append(VerdictCounter(number_of_chain(chain) or 0, key, packets, nbytes, logged, suppressed))
    return sorted(out, key=lambda c: c.number)


HitRecord = dict[str, dict[str, Any]]   # key -> {"first_seen": t, "last_hit": t | None, "packets": n}


def update_hits(record: HitRecord, counters: Iterable[VerdictCounter], now: float) -> HitRecord:
    """The record after one reading at `now`: an identity is hit when its counter grew
    (or was reset to a smaller non-zero value: its chain was made again); identities
    no longer in the kernel are forgotten."""
    out: HitRecord = {}
    for c in counters:
        old = record.get(c.key) or {"first_seen": now, "last_hit": None, "packets": 0}
        grew = c.packets > int(old.get("packets", 0)) or (c.packets and c.packets < int(old.get("packets", 0)))
        out[c.key] = {"first_seen": old.get("first_seen", now), "last_hit": now if grew else old.get("last_hit"),
                      "packets": c.packets}
    return out


def never_hit(record: HitRecord) -> dict[str, float]:
    """key -> since when, for the identities no reading has seen hit."""
    return {k: float(v.get("first_seen", 0)) for k, v in record.items() if v.get("last_hit") is None}
