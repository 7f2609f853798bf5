"""Log statements of the verdict chains: NFLOG with kernel-side rate limits (pure).

A verdict chain whose identity logs (a rule with `log: true`, an audit rule, every drop
with the document's `log: {drops: true}`) is five rules instead of one:

    counter [ct mark set ...] comment "<key>"                       every packet decided
    limit rate over R burst B packets counter VERDICT                per rule: over, not logged
    add @log_iface { iifname . oifname . meta mark limit rate over R burst B packets } counter VERDICT
    add @log_all { meta nfproto limit rate over G burst B packets } counter VERDICT
    counter log group N prefix "sg:<n>:" VERDICT                      logged

Each stage's own counter says how many packets it kept from the log, so a reader gets
decided = rule 0, logged = rule 4, suppressed = rules 1-3 (per rule, per interface,
global) from one listing. The per-rule limit is the rule's own token bucket (a noisy
rule cannot use up the others' budget); the per-interface one is an element per
(in, out, mark) of a dynamic set shared by all rules (bridged ports are told apart by
the mark), so a noisy interface cannot use up the others'; the global one an element
per IP version. The sets are bounded (`size`) and their elements expire after a
minute without traffic; a full set adds no element and the packet goes on to the next
stage (it is not suppressed by that stage).
"""
from __future__ import annotations

from typing import Optional

from agent.compiler.attribution import log_prefix
from agent.compiler.ruleset import NftSet
from agent.model.objects import LogSettings

IFACE_SET, ALL_SET = "log_iface", "log_all"
DYNAMIC_SETS = (IFACE_SET, ALL_SET)
IFACE_SET_SIZE = 65536


def log_sets() -> tuple[NftSet, NftSet]:
    dynamic = ("flags dynamic,timeout", "timeout 1m")
    return (NftSet(IFACE_SET, "ifname . ifname . mark", (), interval=False,
                   extra=(f"size {IFACE_SET_SIZE}",) + dynamic),
            NftSet(ALL_SET, "nf_proto", (), interval=False, extra=("size 4",) + dynamic))


def log_rules(number: int, verdict: str, s: LogSettings) -> tuple[str, ...]:
    """Rules 1-4 of a logging verdict chain (rule 0 is the chain's counter and comment)."""
    burst = f"burst {s.burst} packets"
    return (f"limit rate over {s.rate} {burst} counter {verdict}",
            f"add @{IFACE_SET} {{ iifname . oifname . meta mark limit rate over {s.rate} {burst} }} "
            f"counter {verdict}",
            f"add @{ALL_SET} {{ meta nfproto limit rate over {s.global_rate} {burst} }} counter {verdict}",
            f'counter log group {s.group} prefix "{log_prefix(number)}" {verdict}')


def logs(stage: str, verdict: str, audit: bool, rule_log: bool, s: Optional[LogSettings]) -> bool:
    """Whether an identity's chain logs: its rule asks, it audits, or every drop is logged."""
    return rule_log or audit or (s is not None and s.drops and verdict == "drop")
