"""A cold apply in stages: the build's stages (agent.compiler.staging) committed by a
second thread while the build goes on, then the last stage, which hooks the table.

For a table that does not exist yet and a state of STAGE_FROM local interfaces or more
(the first apply on a host, a host after a reboot without the boot restore). The
kernel and libnftables work of each stage runs in the committer thread without the
interpreter lock, so on two cores the build and the load overlap instead of following
each other (docs/performance.md). Until the last stage commits, no hook reaches the
table: the host filters as before. Any refusal, or a last stage that cannot be
rendered, ends the staging; the partial table is deleted and the caller applies the
whole script as one atomic replace, as for any other full apply.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, replace
from typing import Callable, Optional

from agent.compiler.compile import compile_ruleset
from agent.compiler.memo import CompileMemo
from agent.compiler.render import render_ruleset
from agent.compiler.ruleset import TABLE, Ruleset
from agent.compiler.staging import Stager, render_final
from agent.errors import KernelError
from agent.model.objects import DesiredState
from agent.model.validate import collector_paused
from agent.reconciler.port import STAGE, Kernel
from agent.reconciler.result import FULL
from agent.reconciler.stamp import build_token, render_stamped
from agent.reconciler.store import StateStore

log = logging.getLogger(__name__)
STAGE_FROM = 200        # local interfaces; below it the build takes well under a second


@dataclass(frozen=True)
class StagedApply:
    ruleset: Ruleset
    memo: CompileMemo
    script: str         # the whole script (render_ruleset): its digest is the stamp
    token: str
    seconds: float      # the commits' time, stages included


# The save of a staged load, written while its last stage commits: given the load, it
# writes the files under temporary names and returns what settles them (True: the last
# stage took, publish; False: discard).
SaveDuring = Callable[[StagedApply], Callable[[bool], None]]


def stageable(kernel: Kernel, state: DesiredState, cold: bool) -> bool:
    """Whether to load `state` in stages: a cold start (nothing applied, adopted or
    compiled) of STAGE_FROM or more interfaces, and no inet table of ours at all (the
    fail-closed boot table is one: it is replaced in one transaction)."""
    if not cold or len(state.local_interfaces) < STAGE_FROM:
        return False
    try:
        return not kernel.tables_present((("inet", TABLE),))
    except KernelError:
        return False


def save_during(store: StateStore, snapshot: Callable[[StagedApply], tuple], published: Callable[[], None]) -> SaveDuring:
    """A SaveDuring writing `store`'s files (StateStore.stage of `snapshot(load)`) in the
    caller's thread, which has nothing else to do while the last stage commits (the
    commit holds no interpreter lock); `published` is called once they are in place."""
    def stage(done: StagedApply) -> Callable[[bool], None]:
        try:
            with collector_paused():
                files = store.stage(*snapshot(done))
        except OSError as exc:
            log.warning("%s: cannot stage the save: %s", store.directory, exc)
            return lambda took: None

        def settle(took: bool) -> None:
            if not took:
                store.discard(files)
                return
            try:
                store.publish(files)
                published()
            except OSError as exc:
                log.warning("%s: cannot put the save in place: %s", store.directory, exc)
        return settle
    return stage


class _Committer(threading.Thread):
    """Commits the scripts it is given, in order, until one is refused."""

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(name="sga-stage", daemon=True)
        self.kernel = kernel
        self.scripts: queue.Queue[Optional[tuple[str, str]]] = queue.Queue()     # (script, what)
        self.seconds, self.committed = 0.0, 0
        self.error: Optional[KernelError] = None

    def run(self) -> None:
        while (item := self.scripts.get()) is not None:
            if self.error is not None:
                continue
            try:
                self.seconds += self.kernel.commit(*item)
                self.committed += 1
            except KernelError as exc:
                self.error = exc

    def finish(self) -> Optional[KernelError]:
        self.scripts.put(None)
        self.join()
        return self.error


def load_staged(kernel: Kernel, state: DesiredState, revision: str = "?",
                save: Optional[SaveDuring] = None) -> Optional[StagedApply]:
    """`apply_staged`, None also when it failed (logged)."""
    try:
        return apply_staged(kernel, state, revision, save)
    except KernelError as exc:
        log.warning("revision %s: staged load failed (%s); replacing the table in full", revision, exc)
        return None


def apply_staged(kernel: Kernel, state: DesiredState, revision: str = "?",
                 save: Optional[SaveDuring] = None) -> Optional[StagedApply]:
    """Build `state` and load it in stages into a table that does not exist yet (with
    `save`, the save is written while the last stage commits). None when the staging
    ended (refused, or the table appeared meanwhile: the first stage creates it and
    fails if it exists); the caller then applies the whole script."""
    committer = _Committer(kernel)
    committer.start()
    stager = Stager(lambda script: committer.scripts.put((script, STAGE)))
    try:
        ruleset, memo = compile_ruleset(state, None, stager)
    except BaseException:
        _abandon(kernel, committer, revision)
        raise
    script = render_ruleset(ruleset)
    token = build_token(script)
    final = render_final(ruleset, stager) if stager.stages else None
    if final is None or committer.error is not None:
        if final is None:
            log.warning("revision %s: a staged object differs from the build's; replacing the table in full", revision)
        _abandon(kernel, committer, revision)
        return None
    committer.scripts.put((render_stamped(final, token), FULL))
    done = StagedApply(ruleset, memo, script, token, 0.0)
    settle = save(done) if save is not None else None
    error = committer.finish()
    if settle is not None:
        settle(error is None)
    if error is not None:
        log.warning("revision %s: staged load refused (%s); replacing the table in full", revision, error)
        _remove_partial(kernel, committer, revision)
        return None
    log.info("revision %s: loaded in %d stages (%.2f s of commits)", revision, committer.committed, committer.seconds)
    return replace(done, seconds=committer.seconds)


def _abandon(kernel: Kernel, committer: _Committer, revision: str) -> None:
    error = committer.finish()
    if error is not None:
        log.warning("revision %s: staged load refused: %s", revision, error)
    _remove_partial(kernel, committer, revision)


def _remove_partial(kernel: Kernel, committer: _Committer, revision: str) -> None:
    """Delete the table the first stage created (no hook reaches it)."""
    if committer.committed == 0:
        return
    try:
        kernel.commit(f"delete table inet {TABLE}\n", "staged load removal")
    except KernelError as exc:
        log.warning("revision %s: cannot remove the partly loaded table: %s", revision, exc)
