"""The reconciler: desired state -> kernel, then revocation of what is no longer allowed."""
from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass, field

from agent import conntrack, nft
from agent.compile import TABLE, Ruleset, build_ruleset
from agent.model import DesiredState
from agent.render import render_flush, render_ruleset
from agent.revoke import plan_revocations

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApplyReport:
    seconds: float
    nft_seconds: float
    interfaces: int
    sets: int
    chains: int
    revoked: int
    errors: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        text = (f"applied: {self.interfaces} interfaces, {self.chains} chains, {self.sets} sets "
                f"in {self.seconds * 1000:.0f} ms (kernel {self.nft_seconds * 1000:.0f} ms); "
                f"{self.revoked} connections revoked")
        return text + "".join(f"\nerror: {e}" for e in self.errors)


def read_local_addresses() -> frozenset:
    """Addresses the applied table holds for local interfaces (for revocation)."""
    out = set()
    for v in (4, 6):
        for text in nft.set_elements("inet", TABLE, f"local_addr{v}"):
            try:
                out.add(ipaddress.ip_address(text))
            except ValueError:
                log.debug("local_addr%d: skipping element %s", v, text)
    return frozenset(out)


def apply_ruleset(ruleset: Ruleset) -> float:
    return nft.apply_script(render_ruleset(ruleset))


def revoke_connections(state: DesiredState, previous: frozenset) -> int:
    plan = plan_revocations(state, conntrack.list_flows(), previous)
    for r in plan:
        log.info("revoking %s %s -> %s: %s", r.flow.protocol, r.flow.src, r.flow.dst, r.reason)
    return conntrack.delete_flows(r.flow for r in plan) if plan else 0


def apply_once(state: DesiredState) -> ApplyReport:
    """Compile, commit in one transaction, then revoke flows the state no longer allows."""
    start = time.monotonic()
    ruleset = build_ruleset(state)
    previous = read_local_addresses()
    nft_seconds = apply_ruleset(ruleset)
    revoked = revoke_connections(state, previous) if state.revoke_connections else 0
    for err in ruleset.errors:
        log.error("host %s: %s", state.host, err)
    return ApplyReport(time.monotonic() - start, nft_seconds, len(state.local_interfaces),
                       sum(len(t.sets) for t in ruleset.tables),
                       sum(len(t.chains) for t in ruleset.tables), revoked, ruleset.errors)


def flush() -> None:
    nft.apply_script(render_flush(Ruleset(()).owned), "flush")
