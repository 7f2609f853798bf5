"""`apply`: the daemon's reconciler (agent.reconciler.keeper), run once.

It adopts what the kernel holds when the kernel's stamp is the one saved with the last
applied ruleset (or the stamp a full replace of this very ruleset writes): an unchanged
state commits nothing and revokes nothing (`ApplyResult.changed` is False); a changed
one is the incremental transaction against the saved ruleset; the full atomic replace
only when the kernel's content is not known. Then revocation, and the applied ruleset
is saved for the next run and for the boot restore (agent.reconciler.store): for an nft
commit, by a forked child that writes the files while the commit runs and renames them
into place once it took (agent.reconciler.forked; removes them when it raised); after
the commit, in the process, for a netlink one or when fork fails.

The stamp witnesses the agent's own writes only: a hand edit inside the table that
keeps the stamp set is not seen by this check (`apply_once(..., force=True)` re-commits
in full regardless); a deleted or foreign-replaced table is.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

from agent.compiler.render import render_flush
from agent.model.objects import DesiredState
from agent.model.validate import collector_paused
from agent.reconciler.keeper import Keeper
from agent.reconciler.port import OWNED_TABLES, Kernel, RealKernel
from agent.reconciler.result import ApplyResult
from agent.reconciler.store import StateStore, state_dir

log = logging.getLogger(__name__)


def apply_once(state: DesiredState, force: bool = False, kernel: Optional[Kernel] = None,
               store: Optional[StateStore] = None, context: Any = None) -> ApplyResult:
    """`context`: saved with the ruleset for the daemon's next start (its validated
    document, agent.model.validate_incremental.Validated)."""
    keeper = Keeper(kernel or RealKernel(), store=store or StateStore(state_dir()), stage_saves=True)
    found = keeper.adopt()
    log.debug("host %s: %s", state.host, found)
    had_context = keeper.context is not None
    if context is not None:
        keeper.context = context        # before the commit: its save is written during it
    try:
        result = keeper.apply(state, "apply", force=force)
    finally:
        saved = keeper.saved_early()    # the child's; a refused commit's was removed
    if not saved and (result.changed or found != "adopted" or (context is not None and not had_context)):
        with collector_paused():        # the pickle's allocations would start a full collection
            keeper.save()               # over the state and the ruleset (0.16-0.24 s at 1,000 x 100)
    return result


def flush(kernel: Optional[Kernel] = None) -> None:
    (kernel or RealKernel()).commit(render_flush(OWNED_TABLES), "flush")
    StateStore(state_dir()).clear()
