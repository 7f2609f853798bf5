"""The daemon's reconciler: keeps the kernel holding the last valid desired state.

It remembers the ruleset it applied, so a change costs one small incremental transaction
(agent.compiler.transaction), and it knows when it does NOT know the kernel: at start (another
process's table may be there: it is adopted and replaced atomically, never flushed
first) and after drift, it applies the full atomic replace (agent.compiler.render).

Everything that touches the kernel goes through `Kernel` (agent.kernel.nft, agent.kernel.monitor,
agent.kernel.conntrack in production; a fake in the unit tests).
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional, Protocol

from agent.compiler.compile import TABLE, Ruleset
from agent.compiler.patch import compile_changes
from agent.compiler.memo import CompileMemo
from agent.errors import KernelError
from agent.compiler.transaction import ElementChange, plan_element_changes, plan_update
from agent.model.objects import DesiredState
from agent.compiler.render import render_ruleset
from agent.reconciler.oneshot import read_local_addresses, revoke_connections
from agent.policy.revocation import Flow

log = logging.getLogger(__name__)
FULL, INCREMENTAL, ELEMENTS, UNCHANGED = "full", "incremental", "elements", "unchanged"
REPLACE_SETS_FROM = 1000       # sets in the ruleset from which changed sets are replaced whole
                               # (libnftables' element commands cost ~1 s there; agent.compiler.transaction)
ELEMENT_DELETE_BUDGET = 500_000    # sum over sets of (elements deleted x set size) above which the
                                   # kernel's deletes cost more than replacing the sets (~25 ms:
                                   # a concatenated set's delete scans the set; agent.kernel.elements)


class Kernel(Protocol):
    def commit(self, script: str, what: str) -> float: ...
    def commit_elements(self, changes: tuple[ElementChange, ...]) -> float: ...
    def listing(self, tables: tuple[tuple[str, str], ...]) -> Optional[str]: ...
    def generation(self) -> int: ...
    def tables_present(self, tables: tuple[tuple[str, str], ...]) -> bool: ...
    def local_addresses(self) -> frozenset: ...
    def list_flows(self) -> list[Flow]: ...
    def delete_flows(self, flows: Iterable[Flow]) -> int: ...


class RealKernel:
    """The production boundary modules behind the `Kernel` interface."""

    def commit(self, script: str, what: str) -> float:
        from agent.kernel import nft
        took = nft.apply_script(script, what)
        if what != INCREMENTAL:
            nft.apply_script("", "release")     # libnftables frees the big cache on its next call
        return took

    def commit_elements(self, changes: tuple[ElementChange, ...]) -> float:
        from agent.kernel import elements as nft_elements
        if not all(nft_elements.supported(c.set.type, c.set.interval, c.set.map_to) for c in changes):
            raise KernelError("not a change of element sets the netlink path handles")
        return nft_elements.commit_element_changes(changes)

    def listing(self, tables: tuple[tuple[str, str], ...]) -> Optional[str]:
        from agent.kernel import nft
        parts = [nft.list_table(family, name) for family, name in tables]
        return None if all(p is None for p in parts) else "\n".join(p or "" for p in parts)

    def tables_present(self, tables: tuple[tuple[str, str], ...]) -> bool:
        from agent.kernel.monitor import table_names
        try:
            return set(tables) <= table_names()
        except OSError as exc:
            raise KernelError(f"cannot list the nftables tables: {exc}") from exc

    def generation(self) -> int:
        from agent.kernel.monitor import ruleset_generation
        return ruleset_generation()

    def local_addresses(self) -> frozenset:
        return read_local_addresses()

    def list_flows(self) -> list[Flow]:
        from agent.kernel import conntrack
        return conntrack.list_flows()

    def delete_flows(self, flows: Iterable[Flow]) -> int:
        from agent.kernel import conntrack
        return conntrack.delete_flows(flows)


def delete_cost(changes: Iterable[ElementChange]) -> int:
    """The kernel work of deleting elements one by one: each delete of a concatenated
    (pipapo) set costs about its size (measured on 6.18: 900 of 900 deleted in 56 ms,
    2,000 of 3,000 in 294 ms; adding is cheap)."""
    return sum(len(c.removed) * len(c.set.elements) for c in changes if " . " in c.set.type)


@dataclass(frozen=True)
class ApplyResult:
    mode: str                 # full | incremental | elements | unchanged
    seconds: float            # compile + plan + commit
    nft_seconds: float        # the commit alone
    script_bytes: int         # the nft script, or the text of the elements committed
    revoked: int
    errors: tuple[str, ...] = ()     # interfaces compiled closed, and why


def normalize_listing(text: Optional[str]) -> Optional[str]:
    """A listing without what changes by itself (counters)."""
    return None if text is None else re.sub(r"counter packets \d+ bytes \d+", "counter", text)


@dataclass
class Keeper:
    kernel: Kernel
    applied: Optional[Ruleset] = None         # None: the kernel's content is not known
    state: Optional[DesiredState] = None
    our_generation: Optional[int] = None      # generation right after our last commit
    reference: Optional[str] = None           # the listing of what we applied
    verified_generation: Optional[int] = None
    memo: Optional[CompileMemo] = None        # the last build's, so a change recompiles what it touches
    repairs: int = 0
    revoked_total: int = 0
    tables: tuple[tuple[str, str], ...] = field(default=(("inet", TABLE), ("bridge", TABLE)))

    def apply(self, state: DesiredState, revision: str = "?") -> ApplyResult:
        start = time.monotonic()
        ruleset, self.memo = compile_changes(state, self.memo)
        if self.applied is not None and ruleset == self.applied:
            self.state = state
            return ApplyResult(UNCHANGED, time.monotonic() - start, 0.0, 0, 0, ruleset.errors)
        previous = self._previous_addresses()
        mode, nft_seconds, size = self._commit_change(ruleset, revision)
        self._applied(ruleset, state)
        revoked = self.revoke(state, previous) if state.revoke_connections else 0
        for err in ruleset.errors:
            log.error("revision %s: %s", revision, err)
        return ApplyResult(mode, time.monotonic() - start, nft_seconds, size, revoked, ruleset.errors)

    def _commit_change(self, ruleset: Ruleset, revision: str) -> tuple[str, float, int]:
        """The cheapest transaction that works: only set elements changed -> those
        elements over netlink; else an incremental nft script; else (first apply,
        after drift, or a refused step) the full atomic replace. (mode, seconds, size)"""
        if self.applied is not None:
            changes = plan_element_changes(self.applied, ruleset)
            if changes is not None and delete_cost(changes) <= ELEMENT_DELETE_BUDGET:
                took = self._commit_elements(changes, revision)
                if took >= 0:
                    return ELEMENTS, took, sum(len(e) for c in changes for e in c.removed + c.added)
            script = self.plan(ruleset)
            took = self._commit(INCREMENTAL, script, ruleset, revision)
            if took >= 0:
                return INCREMENTAL, took, len(script)
        script = render_ruleset(ruleset)
        return FULL, self._commit(FULL, script, ruleset, revision), len(script)

    def _commit_elements(self, changes: tuple[ElementChange, ...], revision: str) -> float:
        """Seconds the element commit took; -1 when refused (the caller goes on with nft)."""
        try:
            return self.kernel.commit_elements(changes) if changes else 0.0
        except KernelError as exc:
            log.warning("revision %s: element update refused, using nft: %s", revision, exc)
            return -1.0

    def plan(self, ruleset: Ruleset) -> str:
        assert self.applied is not None
        many = sum(len(t.sets) for t in self.applied.tables) >= REPLACE_SETS_FROM
        return plan_update(self.applied, ruleset, replace_sets=many)

    def _commit(self, mode: str, script: str, ruleset: Ruleset, revision: str) -> float:
        """Seconds the commit took; -1 when an incremental script was refused (the
        caller falls back to the full replace). A refused full replace raises."""
        try:
            return self.kernel.commit(script, mode) if script else 0.0
        except KernelError as exc:
            if mode != INCREMENTAL:
                raise
            log.warning("revision %s: incremental update refused, replacing the tables: %s", revision, exc)
            return -1.0

    def _applied(self, ruleset: Ruleset, state: DesiredState) -> None:
        self.applied, self.state, self.reference = ruleset, state, None
        self.our_generation = self.generation()
        self.verified_generation = None

    def _previous_addresses(self) -> frozenset:
        if self.state is not None:
            return frozenset(a for nic in self.state.local_interfaces.values() for a in nic.addresses)
        try:
            return self.kernel.local_addresses()
        except KernelError as exc:
            log.warning("table %s: cannot read the previous addresses: %s", TABLE, exc)
            return frozenset()

    def generation(self) -> Optional[int]:
        try:
            return self.kernel.generation()
        except OSError as exc:
            log.debug("nftables generation unavailable: %s", exc)
            return None

    def revoke(self, state: DesiredState, previous: frozenset) -> int:
        try:
            deleted = revoke_connections(state, previous, self.kernel)
        except KernelError as exc:
            log.error("host %s: revocation failed: %s", state.host, exc)
            return 0
        self.revoked_total += deleted
        return deleted

    def repair(self, reason: str) -> float:
        """Drift: replace the tables with what was applied last (one transaction)."""
        if self.applied is None or self.state is None:
            return 0.0
        log.warning("table %s: drift (%s): replacing it", TABLE, reason)
        took = self.kernel.commit(render_ruleset(self.applied), "repair")
        self.repairs += 1
        self._applied(self.applied, self.state)
        return took

    def verify(self, notifications_lost: bool = False, deep: bool = True) -> Optional[str]:
        """Why the kernel no longer holds what was applied, or None (`precheck`, then
        the listing if one is needed, judged by `judge_listing`)."""
        problem, listing_needed, gen = self.precheck(notifications_lost, deep)
        if not listing_needed:
            return problem
        return self.judge_listing(self.kernel.listing(self.tables), gen, notifications_lost)

    def precheck(self, notifications_lost: bool, deep: bool) -> tuple[Optional[str], bool, Optional[int]]:
        """(problem, whether a listing is needed, ruleset generation). Nothing to do when
        nothing was committed since the last check (the generation is unchanged); a
        shallow check only sees that the tables exist (the monitor reports edits); a
        deep one, or one after lost notifications with foreign commits, needs a listing."""
        if self.applied is None:
            return None, False, None
        gen = self.generation()
        if gen is not None and gen == self.verified_generation:
            return None, False, gen
        if notifications_lost and gen is not None and gen == self.our_generation:
            notifications_lost = False      # nobody committed since us: the lost ones were ours
        if not deep and not notifications_lost:
            present = self.kernel.tables_present(tuple((t.family, t.name) for t in self.applied.tables))
            return (None if present else "the agent's tables are gone"), False, gen
        return None, True, gen

    def judge_listing(self, text: Optional[str], gen: Optional[int], notifications_lost: bool) -> Optional[str]:
        """Compare a listing taken at generation `gen` with the one taken after our
        apply (the first listing after an apply becomes that reference)."""
        if self.applied is None:
            return None
        listing = normalize_listing(text)
        if listing is None and self.applied.tables:
            return "the agent's tables are gone"
        if self.reference is None:
            if (gen is None or gen != self.our_generation) and notifications_lost:
                return "changes happened while notifications were lost"
            self.reference = listing
        elif listing != self.reference:
            return "the tables differ from what was applied"
        self.verified_generation = gen
        return None

    def interface_gone(self, name: str) -> int:
        """Delete the connections of a configured interface that disappeared."""
        if self.state is None or name not in self.state.local_interfaces:
            return 0
        addresses = set(self.state.local_interfaces[name].addresses)
        try:
            flows = [f for f in self.kernel.list_flows() if f.src in addresses or f.dst in addresses]
            deleted = self.kernel.delete_flows(flows) if flows else 0
        except KernelError as exc:
            log.error("interface %s: cannot delete its connections: %s", name, exc)
            return 0
        log.info("interface %s: removed; %d connection(s) deleted", name, deleted)
        self.revoked_total += deleted
        return deleted

