"""The reconciler, ONE for `apply` (agent.reconciler.oneshot) and the daemon
(agent.service.daemon): keeps the kernel holding the last valid desired state.

It remembers the ruleset it applied, so a change costs one small transaction (set
elements over netlink, else an incremental nft script: agent.compiler.transaction), and
it knows when it does NOT know the kernel: then it applies the full atomic replace
(agent.compiler.render; another process's table is adopted and replaced, never flushed
first). Every commit writes the stamp (agent.reconciler.stamp) in its own transaction;
`save` keeps the stamp with the applied ruleset on disk (agent.reconciler.store), and
`adopt` takes over a kernel holding that stamp with no kernel work.

Drift is repaired by rewriting only the chains and sets that differ (agent.reconciler.
drift); the full replace is the last resort. Everything that touches the kernel goes
through the `Kernel` port (agent.reconciler.port; a fake in the unit tests).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from agent.compiler.memo import CompileMemo
from agent.compiler.patch import compile_changes
from agent.compiler.render import render_ruleset
from agent.compiler.ruleset import TABLE, Ruleset
from agent.compiler.transaction import ElementChange, NetlinkChanges, plan_netlink_changes, plan_update
from agent.errors import KernelError, NotEncodable
from agent.model.objects import DesiredState
from agent.reconciler.boot import render_failclosed
from agent.reconciler.verify import Drift, DriftChecks
from agent.reconciler.forked import Child, Snapshot, stage_save
from agent.reconciler.port import OWNED_TABLES, Kernel
from agent.reconciler.result import ELEMENTS, FULL, INCREMENTAL, UNCHANGED, ApplyResult
from agent.reconciler.revoke import apply_revocations
from agent.reconciler.staged import StagedApply, load_staged, save_during, stageable
from agent.reconciler.stamp import build_token, render_restamp, render_stamped, stamp_set
from agent.reconciler.store import Saved, StateStore

log = logging.getLogger(__name__)
__all__ = ["Keeper", "Drift", "ApplyResult", "FULL", "INCREMENTAL", "ELEMENTS", "UNCHANGED"]
REPLACE_SETS_FROM = 1000       # sets in the ruleset from which changed sets are replaced whole
                               # (libnftables' element commands cost ~1 s there; agent.compiler.transaction)
ELEMENT_DELETE_BUDGET = 500_000    # sum over sets of (elements deleted x set size) above which the
                                   # kernel's deletes cost more than replacing the sets (~25 ms:
                                   # a concatenated set's delete scans the set; agent.kernel.elements)


def delete_cost(changes: Iterable[ElementChange]) -> int:
    """The kernel work of deleting elements one by one: each delete of a concatenated
    (pipapo) set costs about its size (measured on 6.18: 900 of 900 deleted in 56 ms,
    2,000 of 3,000 in 294 ms; adding is cheap)."""
    return sum(len(c.removed) * len(c.set.elements) for c in changes if " . " in c.set.type)


@dataclass
class Keeper(DriftChecks):
    kernel: Kernel
    store: Optional[StateStore] = None
    revoke_later: Optional[Callable[[DesiredState, frozenset, Optional[DesiredState], str], None]] = None  # None: at once
    applied: Optional[Ruleset] = None         # None: the kernel's content is not known
    state: Optional[DesiredState] = None
    token: Optional[str] = None               # the stamp of `applied` in the kernel
    kernel_token: Optional[str] = None        # the kernel's stamp as `adopt` found it
    our_generation: Optional[int] = None      # generation right after our last commit
    reference: Optional[str] = None           # the listing of what we applied
    verified_generation: Optional[int] = None
    memo: Optional[CompileMemo] = None        # the last build's, so a change recompiles what it touches
    addresses: frozenset = frozenset()        # local addresses of the applied state (revocation)
    context: Any = None                       # saved and adopted with the ruleset (the daemon's
                                              # validated document, for incremental validation)
    unaccounted: bool = False                 # someone else committed since our last check
    repairs: int = 0
    revoked_total: int = 0
    tables: tuple[tuple[str, str], ...] = OWNED_TABLES
    stage_saves: bool = False                 # `apply`: an nft commit's save is written by a forked
                                              # child during the commit (`_commit_saving`)
    _staged: Optional[Child] = field(default=None, repr=False)      # its child, told to publish
    _published: bool = field(default=False, repr=False)             # a staged load's save is in place
    _count_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _rendered: Optional[tuple[Ruleset, str]] = field(default=None, repr=False)   # the last full render

    # -- start: adopt what the kernel holds -------------------------------------------
    def adopt(self) -> str:
        """Take over a kernel holding the stamp saved with the last applied ruleset: no
        kernel work, the next apply is a diff against it. Returns what was found."""
        try:
            self.kernel_token = self.kernel.read_stamp()
        except KernelError as exc:
            log.warning("table %s: cannot read the stamp: %s", TABLE, exc)
            self.kernel_token = None
        if self.kernel_token is None:          # nothing to adopt: the saved state is not read
            return "no stamped table"          # (at 100,000 remote members its pickle loads in ~1.4 s)
        saved = self.store.load() if self.store is not None else None
        if saved is None or saved.token != self.kernel_token:
            return f"table stamped {self.kernel_token}, no saved ruleset for it"
        if not self.kernel.tables_present(tuple((t.family, t.name) for t in saved.ruleset.tables)):
            return "tables missing"
        self.applied, self.memo, self.token, self.addresses = saved.ruleset, saved.memo, saved.token, saved.addresses
        self.context = saved.context
        self.our_generation, self.reference, self.verified_generation = self.generation(), None, None
        log.info("table %s: adopted (stamp %s): the kernel holds the saved ruleset", TABLE, saved.token)
        return "adopted"

    def save(self) -> None:
        """The applied ruleset and its stamp to the state directory (restore script and
        the build for the next start)."""
        work = self.saving()
        if work is not None:
            work()

    def saving(self) -> Optional[Callable[[], None]]:
        """`save` as a call to make now or later (the daemon: in a forked child, so the
        render and the pickle hold up no change): what it writes is taken now (immutable
        objects), and the rendered script is let go now (a daemon saves after every commit)."""
        if self.store is None or self.applied is None or self.token is None:
            return None
        store, held = self.store, self._rendered
        self._rendered = None
        snapshot = self._snapshot(self.token, self.applied, self.memo, self.addresses, self.state,
                                  held[1] if held is not None and held[0] is self.applied else None)
        return lambda: store.save(*snapshot())

    def _snapshot(self, token: str, applied: Ruleset, memo: Optional[CompileMemo], addresses: frozenset,
                  state: Optional[DesiredState], script: Optional[str]) -> Snapshot:
        """StateStore.save's arguments, taken now, rendered when called (`script`: the
        full render of `applied` if there is one already)."""
        saved = Saved(token, applied, memo, addresses, self.context)
        boot = render_failclosed(state.instance_interfaces) if state is not None else None
        return lambda: (saved, render_stamped(script if script is not None else render_ruleset(applied), token), boot)

    # -- apply ------------------------------------------------------------------------
    def apply(self, state: DesiredState, revision: str = "?", force: bool = False) -> ApplyResult:
        start = time.monotonic()
        previous: frozenset
        staged = self._load_staged(state, revision)
        if staged is not None:
            ruleset, self.memo, previous = staged.ruleset, staged.memo, frozenset()     # no table: no addresses
            self._rendered, self.token = (ruleset, staged.script), staged.token
            mode, nft_seconds, size = FULL, staged.seconds, len(staged.script)
        else:
            ruleset, self.memo = compile_changes(state, self.memo)
            if not force and self._holds(ruleset):
                self.state, self.addresses = state, _addresses(state)
                return self._result(UNCHANGED, start, 0.0, 0, 0, ruleset, state)
            previous = self.addresses if self.state is not None or self.applied is not None else \
                self._kernel_addresses()
            if force:
                self.applied = None
            prior = self.generation()
            if prior is not None and self.our_generation is not None and prior != self.our_generation:
                self.unaccounted = True               # a commit not ours since our last one
            mode, nft_seconds, size = self._commit_change(ruleset, state, revision)
        old = self.state
        self._applied(ruleset, state)
        revoked = self._revoke(state, previous, old, revision) if state.revoke_connections else 0
        for err in ruleset.errors:
            log.error("revision %s: %s", revision, err)
        return self._result(mode, start, nft_seconds, size, revoked, ruleset, state)

    def _load_staged(self, state: DesiredState, revision: str) -> Optional[StagedApply]:
        """A cold load in stages (agent.reconciler.staged), its save written meanwhile."""
        cold = self.applied is None and self.memo is None and self.kernel_token is None
        if not stageable(self.kernel, state, cold):
            return None

        def snapshot(done: StagedApply) -> tuple:
            return self._snapshot(done.token, done.ruleset, done.memo, _addresses(state), state, done.script)()

        def published() -> None:
            self._published = True
        store = self.store
        return load_staged(self.kernel, state, revision,
                           save_during(store, snapshot, published) if self.stage_saves and store else None)

    def _holds(self, ruleset: Ruleset) -> bool:
        if self.applied is not None:
            return ruleset == self.applied
        if self.kernel_token is None:
            return False
        token = build_token(self._render(ruleset))      # apply's first run: a full replace's stamp?
        if token != self.kernel_token or not self.kernel.tables_present(tuple((t.family, t.name) for t in ruleset.tables)):
            return False
        self.applied, self.token, self.our_generation = ruleset, token, self.generation()
        return True

    @staticmethod
    def _result(mode: str, start: float, nft: float, size: int, revoked: int, rs: Ruleset,
                state: DesiredState) -> ApplyResult:
        return ApplyResult(mode, time.monotonic() - start, nft, size, revoked, rs.errors,
                           len(state.local_interfaces), sum(len(t.chains) for t in rs.tables),
                           sum(len(t.sets) for t in rs.tables))

    def _commit_change(self, ruleset: Ruleset, state: DesiredState, revision: str) -> tuple[str, float, int]:
        """The cheapest transaction that works: only set elements changed -> those
        elements over netlink; else an incremental nft script; else (first apply,
        after drift, or a refused step) the full atomic replace. (mode, seconds, size)"""
        if self.applied is not None and self.token is not None:
            changes = plan_netlink_changes(self.applied, ruleset)
            if changes is not None and delete_cost(changes.elements) <= ELEMENT_DELETE_BUDGET:
                took, token = self._commit_netlink(changes, ruleset, revision)
                if took >= 0:
                    self.token = token
                    size = sum(len(e) for c in changes.elements for e in c.removed + c.added)
                    if not changes.refills:
                        return ELEMENTS, took, size
                    return INCREMENTAL, took, size + sum(len(r) for c in changes.refills for r in c.rules)
            script = self.plan(ruleset)
            token = build_token(self.token, script)
            took = self._commit_saving(INCREMENTAL, script + render_restamp(token), revision, (token, ruleset, state, None))
            if took >= 0:
                self.token = token
                return INCREMENTAL, took, len(script)
        script = self._render(ruleset)
        self.token = build_token(script)
        took = self._commit_saving(FULL, render_stamped(script, self.token), revision, (self.token, ruleset, state, script))
        return FULL, took, len(script)

    def _commit_saving(self, mode: str, script: str, revision: str,
                       after: tuple[str, Ruleset, DesiredState, Optional[str]]) -> float:
        """`_commit`, and when `stage_saves`, the save of what it commits (`after`: stamp,
        ruleset, state, its full render if there is one) written meanwhile by a forked
        child (the memo and the context it saves are set before: compiled, by the caller):
        published when the commit took (`saved_early` waits for it), else discarded and
        waited for (the state directory keeps the previous save)."""
        token, ruleset, state, rendered = after
        child = stage_save(self.store, self._snapshot(token, ruleset, self.memo, _addresses(state), state, rendered),
                           f"revision {revision}") if self.stage_saves and self.store is not None else None
        took = -1.0
        try:
            took = self._commit(mode, script, revision)
        finally:
            if child is not None and took >= 0:
                child.tell(True)
                self._staged = child
            elif child is not None:
                child.wait()                      # told no: the files are removed
        return took

    def saved_early(self) -> bool:
        """Wait for the save a commit's child was told to publish (`stage_saves`): whether
        it is in place (False: none, fork failed, or the child failed; `save` is due)."""
        child, self._staged = self._staged, None
        published, self._published = self._published, False
        return published or (child is not None and child.wait() == 0)

    def _commit_netlink(self, changes: NetlinkChanges, ruleset: Ruleset, revision: str) -> tuple[float, str]:
        """(seconds the netlink commit took, its stamp); -1 when refused or not encodable
        (the caller goes on with nft). Chains refilled and elements changed, restamped,
        in ONE transaction without libnftables (agent.kernel.batch)."""
        assert self.token is not None
        text = "\n".join([f"{c.family} {c.table} {c.set.name} -{c.removed} +{c.added}" for c in changes.elements] +
                         [f"{c.family} {c.table} {c.chain} = {c.rules}" for c in changes.refills])
        token = build_token(self.token, text)
        restamp = ElementChange("inet", TABLE, stamp_set(token), (self.token,), (token,))
        try:
            if not changes.refills:
                return self.kernel.commit_elements(changes.elements + (restamp,)), token
            return self.kernel.commit_changes(NetlinkChanges(changes.refills, changes.elements + (restamp,)),
                                              ruleset), token
        except NotEncodable as exc:
            log.debug("revision %s: %s; using nft", revision, exc)
            return -1.0, token
        except KernelError as exc:
            log.warning("revision %s: netlink update refused, using nft: %s", revision, exc)
            return -1.0, token

    def _render(self, ruleset: Ruleset) -> str:
        """The full script of `ruleset`, rendered once per ruleset object (a full apply
        renders it to commit, then `save` writes it: 15 MB at 1,000 x 100)."""
        held = self._rendered
        if held is None or held[0] is not ruleset:
            held = self._rendered = (ruleset, render_ruleset(ruleset))
        return held[1]

    def plan(self, ruleset: Ruleset) -> str:
        assert self.applied is not None
        many = sum(len(t.sets) for t in self.applied.tables) >= REPLACE_SETS_FROM
        return plan_update(self.applied, ruleset, replace_sets=many)

    def _commit(self, mode: str, script: str, revision: str) -> float:
        """Seconds the commit took; -1 when an incremental script was refused (the
        caller falls back to the full replace). A refused full replace raises."""
        try:
            return self.kernel.commit(script, mode)
        except KernelError as exc:
            if mode != INCREMENTAL:
                raise
            log.warning("revision %s: incremental update refused, replacing the tables: %s", revision, exc)
            return -1.0

    def _applied(self, ruleset: Ruleset, state: DesiredState) -> None:
        self.applied, self.state, self.reference = ruleset, state, None
        self.addresses = _addresses(state)
        self.our_generation = self.generation()
        self.verified_generation = None

    def _kernel_addresses(self) -> frozenset:
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

    # -- revocation ----------------------------------------------------------------
    def _revoke(self, state: DesiredState, previous: frozenset, old: Optional[DesiredState],
                revision: str = "?") -> int:
        if self.revoke_later is not None:
            self.revoke_later(state, previous, old, revision)
            return 0
        try:
            deleted = apply_revocations(state, previous, self.kernel, old, revision)
        except KernelError as exc:
            log.error("host %s: revocation failed: %s", state.host, exc)
            return 0
        self.count_revoked(deleted)
        return deleted

    def count_revoked(self, deleted: int) -> None:
        with self._count_lock:
            self.revoked_total += deleted

    def interface_gone(self, name: str) -> int:
        """Delete the connections of a configured interface that disappeared."""
        if self.state is None or name not in self.state.local_interfaces:
            return 0
        addresses = set(self.state.local_interfaces[name].addresses)
        try:
            flows = self.kernel.list_flows(addresses)          # kernel-filtered
            deleted = self.kernel.delete_flows(flows) if flows else 0
        except KernelError as exc:
            log.error("interface %s: cannot delete its connections: %s", name, exc)
            return 0
        log.info("interface %s: removed; %d connection(s) deleted", name, deleted)
        self.count_revoked(deleted)
        return deleted

def _addresses(state: DesiredState) -> frozenset:
    return frozenset(a for nic in state.local_interfaces.values() for a in nic.addresses)
