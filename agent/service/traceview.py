"""`nft monitor trace` lines in the document's terms (docs/observability-records.md):
the agent's chains named by what they are - an interface chain is a stage of an
interface, a policy chain the groups of an instance, a `v_<n>` chain the verdict
identity (stage, group, rule, priority, verdict) its comment holds - never by handle.

    view = TraceView(resolver, policy_names)    # policy chain name -> "groups a+b (ingress)"
    for line in session.lines(...):
        text = view.line(line)                  # None: not one of the agent's steps
    view.decisions()                            # per traced packet: the deciding identity
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from agent.compiler.attribution import VerdictId, number_of_chain
from agent.compiler.builder import safe_name
from agent.compiler.compile import policy_key
from agent.compiler.ruleset import TABLE
from agent.model.objects import EGRESS, INGRESS, DesiredState
from agent.service.observe import Resolver

_LINE = re.compile(r"^trace id (\S+) (\S+) (\S+) (\S+) (packet|rule|verdict|policy|unknown)(?::)? ?(.*)$")
_COMMENT = re.compile(r'comment "((?:[^"\\]|\\.)*)"')
_VERDICT = re.compile(r"\(verdict (\w+)(?: (\S+))?\)\s*$")
BASE_CHAINS = {"forward_egress": "dispatch by sender (forward, egress)",
               "forward_ingress": "dispatch by receiver (forward, ingress)",
               "input_egress": "dispatch instance -> host (input, egress)"}


def policy_names(state: Optional[DesiredState]) -> dict[str, str]:
    """Policy chain name -> its meaning, for the local interfaces of `state`."""
    out: dict[str, str] = {}
    if state is None:
        return out
    for nic in state.local_interfaces.values():
        inst = state.instance_by_id[nic.instance_id]
        for direction in (INGRESS, EGRESS):
            out[safe_name(policy_key(state, nic, direction))] = \
                f"policy of groups {'+'.join(sorted(inst.groups)) or '(none)'} ({direction})"
    return out


def describe_identity(v: VerdictId) -> str:
    parts = [f"stage {v.stage}"] + ([v.direction] if v.direction else [])
    parts += [f"group {v.group}"] if v.group else []
    parts += [f"rule {v.rule}"] if v.rule else []
    parts += [f"priority {v.priority}"] if v.priority is not None else []
    return ", ".join(parts) + f": {v.verdict}" + (" (audit: accepted)" if v.audit else "")


@dataclass
class TraceView:
    resolver: Resolver
    policies: dict[str, str] = field(default_factory=dict)
    decided: dict[str, str] = field(default_factory=dict)     # trace id -> the deciding identity

    def chain(self, name: str) -> str:
        number = number_of_chain(name)
        if number is not None:
            v = self.resolver.identity(number)
            return f"verdict {name}: {describe_identity(v)}" if v is not None else f"verdict {name} (unknown identity)"
        if name in BASE_CHAINS:
            return BASE_CHAINS[name]
        if name in self.policies:
            return self.policies[name]
        for prefix, what in (("in_", "interface {} ingress"), ("eg_", "interface {} egress"),
                             ("pin_", "policy {} (ingress)"), ("peg_", "policy {} (egress)")):
            if name.startswith(prefix):
                return what.format(name[len(prefix):])
        return f"chain {name}"

    def line(self, text: str) -> Optional[str]:
        """One trace line translated; None when it is not in the agent's tables."""
        m = _LINE.match(text)
        if m is None:
            return None
        tid, family, table, chain, kind, rest = m.groups()
        if table != TABLE:
            return f"[{tid}] packet: {rest}" if kind == "packet" and chain == "pre" else None
        where = self.chain(chain)
        if kind == "rule":
            comment = _COMMENT.search(rest)
            verdict = _VERDICT.search(rest)
            step = f"{verdict.group(1)} {verdict.group(2) or ''}".strip() if verdict else "continue"
            if number_of_chain(chain) is not None and verdict and verdict.group(1) in ("accept", "drop"):
                self.decided[tid] = where
            elif comment and verdict and verdict.group(1) in ("accept", "drop"):
                self.decided[tid] = f"{where} ({comment.group(1)})"
            return f"[{tid}] {family} {where}: {step}"
        if kind == "policy":
            return f"[{tid}] {family} {where}: end of chain, policy {rest}"
        if kind == "verdict":
            return f"[{tid}] {family} {where}: {rest}"
        return None

    def decisions(self) -> dict[str, str]:
        return dict(self.decided)
