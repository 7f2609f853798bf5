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
import time
from collections import OrderedDict
from typing import Callable, Optional, Protocol

from agent.errors import KernelError
from agent.model.objects import DesiredState
from agent.policy.revocation import Flow, plan_revocations

log = logging.getLogger(__name__)


class FlowTable(Protocol):
    def list_flows(self) -> list[Flow]: ...
    def delete_flows(self, flows) -> int: ...


FlowKey = tuple[str, str, int, Optional[int], Optional[int], Optional[int]]


def flow_key(src: object, dst: object, protocol: int, sport: Optional[int], dport: Optional[int],
             icmp_id: Optional[int]) -> FlowKey:
    """How a revoked connection is found again by its original tuple (addresses as text)."""
    return (str(src), str(dst), protocol, sport, dport, icmp_id)


class RecentlyRevoked:
    """The last `size` connections revocation deleted: tuple -> (revision, reason, time).
    The flow records (agent.service.flows) read it when the kernel reports the entry
    destroyed, to say the connection was cut and by which change. Bounded: the oldest
    is forgotten first (its record then says nothing of revocation)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[FlowKey, tuple[str, str, float]] = OrderedDict()

    def add(self, key: FlowKey, revision: str, reason: str) -> None:
        with self._lock:
            self._items[key] = (revision, reason, time.time())
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def pop(self, key: FlowKey) -> Optional[tuple[str, str, float]]:
        with self._lock:
            return self._items.pop(key, None)


RECENTLY_REVOKED = RecentlyRevoked()


def apply_revocations(state: DesiredState, previous: frozenset, flows: FlowTable, revision: str = "?") -> int:
    """Delete the tracked connections `state` no longer allows; how many were deleted.
    Each is remembered in RECENTLY_REVOKED with `revision` (before the delete: the
    kernel's destroy event may be read by another thread at once)."""
    plan = plan_revocations(state, flows.list_flows(), previous)
    for r in plan:
        log.info("revoking %s %s -> %s: %s", r.flow.protocol, r.flow.src, r.flow.dst, r.reason)
        f = r.flow
        RECENTLY_REVOKED.add(flow_key(f.src, f.dst, f.protocol, f.sport, f.dport, f.icmp_id), revision, r.reason)
    return flows.delete_flows(r.flow for r in plan) if plan else 0


class RevocationWorker:
    def __init__(self, flows: FlowTable, done: Callable[[int], None]) -> None:
        self.flows, self.done = flows, done
        self._cond = threading.Condition()
        self._pending: Optional[tuple[DesiredState, frozenset, str]] = None
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="revocation", daemon=True)
        self._thread.start()

    def submit(self, state: DesiredState, previous: frozenset, revision: str = "?") -> None:
        with self._cond:
            if self._pending is not None:
                previous = previous | self._pending[1]
            self._pending = (state, previous, revision)
            self._cond.notify()

    def idle(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is pending (tests, benchmarks); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None)
                (state, previous, revision), self._pending, self._busy = self._pending, None, True   # type: ignore[misc]
            try:
                self.done(apply_revocations(state, previous, self.flows, revision))
            except KernelError as exc:
                log.error("host %s: revocation failed: %s", state.host, exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
