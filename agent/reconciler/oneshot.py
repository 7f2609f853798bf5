"""The reconciler: desired state -> kernel, then revocation of what is no longer allowed.

Unchanged applies are detected cheaply: the script is rendered, hashed (sha256), and the
digest is committed with it, as the comment of the empty set `agent_stamp` in the inet
table. The next apply compares the digest of its own script with that comment (one
`list set` of an empty set) and the agent's tables present in the kernel with the ones
the script would leave (one `list tables`). Both equal: the kernel already holds exactly
this script, so nothing is committed and nothing revoked (`ApplyReport.changed` is
False). The stamp witnesses the agent's own writes only: a hand edit inside the table
that keeps the set is not seen by this check (`apply_once(..., force=True)` re-commits
regardless); a deleted or foreign-replaced table is.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from agent.kernel import conntrack, nft
from agent.compiler.compile import TABLE, Ruleset, build_ruleset
from agent.model.objects import DesiredState
from agent.compiler.render import STAMP_SET, add_stamp, render_flush, render_ruleset
from agent.policy.revocation import plan_revocations

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
    changed: bool = True            # False: the kernel already held this exact ruleset

    def summary(self) -> str:
        if not self.changed:
            text = (f"unchanged: the kernel already holds this ruleset ({self.interfaces} interfaces); "
                    f"nothing applied, 0 connections revoked (checked in {self.seconds * 1000:.0f} ms)")
            return text + "".join(f"\nerror: {e}" for e in self.errors)
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


def script_stamp(script: str) -> str:
    """The digest of a script as rendered (before its stamp is added)."""
    return "sha256:" + hashlib.sha256(script.encode()).hexdigest()


def kernel_holds(ruleset: Ruleset, stamp: str) -> bool:
    """True when the kernel's tables are the ones the last commit of this exact
    script left: same stamp in the inet table, same set of owned tables present."""
    if nft.set_comment("inet", TABLE, STAMP_SET) != stamp:
        return False
    present = set(nft.list_tables()) & set(ruleset.owned)
    return present == {(t.family, t.name) for t in ruleset.tables}


def revoke_connections(state: DesiredState, previous: frozenset, flows: Any = conntrack) -> int:
    """Delete the tracked connections `state` no longer allows (agent.policy.revocation); `flows`
    lists and deletes them (`list_flows()`, `delete_flows(...)`): agent.kernel.conntrack, or
    the daemon keeper's kernel port. Returns how many were deleted."""
    plan = plan_revocations(state, flows.list_flows(), previous)
    for r in plan:
        log.info("revoking %s %s -> %s: %s", r.flow.protocol, r.flow.src, r.flow.dst, r.reason)
    return flows.delete_flows(r.flow for r in plan) if plan else 0


def apply_once(state: DesiredState, force: bool = False) -> ApplyReport:
    """Compile, commit in one transaction, then revoke flows the state no longer allows.
    When the kernel already holds this exact ruleset (see the module docstring), commit
    nothing and report `changed=False`, unless `force`."""
    start = time.monotonic()
    ruleset = build_ruleset(state)
    script = render_ruleset(ruleset)
    stamp = script_stamp(script)
    if not force and kernel_holds(ruleset, stamp):
        return ApplyReport(time.monotonic() - start, 0.0, len(state.local_interfaces),
                           sum(len(t.sets) for t in ruleset.tables),
                           sum(len(t.chains) for t in ruleset.tables), 0, ruleset.errors,
                           changed=False)
    previous = read_local_addresses()
    nft_seconds = nft.apply_script(add_stamp(script, stamp))
    revoked = revoke_connections(state, previous) if state.revoke_connections else 0
    for err in ruleset.errors:
        log.error("host %s: %s", state.host, err)
    return ApplyReport(time.monotonic() - start, nft_seconds, len(state.local_interfaces),
                       sum(len(t.sets) for t in ruleset.tables),
                       sum(len(t.chains) for t in ruleset.tables), revoked, ruleset.errors)


def flush() -> None:
    nft.apply_script(render_flush(Ruleset(()).owned), "flush")
