"""Revocation after a commit: the tracked connections the new state no longer allows
are deleted (agent.policy.revocation plans, the kernel port lists and deletes).

`RevocationWorker` does it on its own thread, off the critical path: the commit that
made the change is already enforced (new packets of a revoked connection are dropped
by the rules); deleting the conntrack entries only ends what was established. Requests
arriving while it works are coalesced: the newest state, with the union of the
addresses that were local before each change.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Optional, Protocol

from agent.errors import KernelError
from agent.model.objects import DesiredState
from agent.policy.revocation import Flow, plan_revocations

log = logging.getLogger(__name__)


class FlowTable(Protocol):
    def list_flows(self) -> list[Flow]: ...
    def delete_flows(self, flows) -> int: ...


def apply_revocations(state: DesiredState, previous: frozenset, flows: FlowTable) -> int:
    """Delete the tracked connections `state` no longer allows; how many were deleted."""
    plan = plan_revocations(state, flows.list_flows(), previous)
    for r in plan:
        log.info("revoking %s %s -> %s: %s", r.flow.protocol, r.flow.src, r.flow.dst, r.reason)
    return flows.delete_flows(r.flow for r in plan) if plan else 0


class RevocationWorker:
    def __init__(self, flows: FlowTable, done: Callable[[int], None]) -> None:
        self.flows, self.done = flows, done
        self._cond = threading.Condition()
        self._pending: Optional[tuple[DesiredState, frozenset]] = None
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="revocation", daemon=True)
        self._thread.start()

    def submit(self, state: DesiredState, previous: frozenset) -> None:
        with self._cond:
            if self._pending is not None:
                previous = previous | self._pending[1]
            self._pending = (state, previous)
            self._cond.notify()

    def idle(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is pending (tests, benchmarks); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None)
                (state, previous), self._pending, self._busy = self._pending, None, True   # type: ignore[misc]
            try:
                self.done(apply_revocations(state, previous, self.flows))
            except KernelError as exc:
                log.error("host %s: revocation failed: %s", state.host, exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
