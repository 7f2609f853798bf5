"""Revocation after a commit: the tracked connections the new state no longer allows
are deleted (agent.policy.revocation plans, the kernel port lists and deletes).

`RevocationWorker` does it on its own thread, off the critical path: the commit that
made the change is already enforced (new packets of a revoked connection are dropped
by the rules); deleting the conntrack entries only ends what was established. Requests
arriving while it works are coalesced: the newest state, with the union of the
addresses that were local before each change.

Only what can have changed is listed (`touched_addresses`): the addresses of the local
interfaces whose effective lists' inputs differ between the previous and the new state
(the interface, its instance's groups and their rules, the members of every group and
prefix list those rules or the intra-group stage name) and the addresses that left. The
conntrack listing is then filtered by those addresses (in the kernel up to 64 of them:
agent.kernel.conntrack), so revoking one instance's 1,000 of 100,000 flows lists ~1,000
entries instead of the whole table; a flow between two untouched interfaces keeps its
verdict and is never looked at.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Callable, Iterable, Optional, Protocol

from agent.errors import KernelError
from agent.model.objects import DesiredState, Peer
from agent.policy.effective import peer_networks
from agent.policy.revocation import Flow, plan_revocations

log = logging.getLogger(__name__)


LOGGED = 20          # revocations logged one by one; beyond, one summary line


class FlowTable(Protocol):
    def list_flows(self, addresses: Optional[Iterable] = None) -> list[Flow]: ...
    def delete_flows(self, flows) -> int: ...


def _peers_by_group(state: DesiredState) -> dict[str, frozenset[Peer]]:
    return {g.id: frozenset(r.peer for r in g.rules if r.peer.kind != "cidr") | {Peer("group", g.id)}
            for g in state.groups}


def _changed(old: DesiredState, new: DesiredState) -> tuple[set[str], set[Peer]]:
    """The groups whose definition differs, and the peers (groups, prefix lists) whose
    members differ: each compared once, not once per interface (a group can have
    10,000 remote members)."""
    groups = {g for g in old.group_by_id.keys() | new.group_by_id.keys()
              if old.group_by_id.get(g) != new.group_by_id.get(g)}
    peers = {p for ps in (*_peers_by_group(old).values(), *_peers_by_group(new).values()) for p in ps}
    return groups, {p for p in peers if peer_networks(old, p) != peer_networks(new, p)}


def touched_addresses(old: Optional[DesiredState], new: DesiredState,
                      previous: frozenset) -> Optional[frozenset]:
    """The addresses whose connections may have changed verdict from `old` to `new`:
    those of the interfaces whose effective lists' inputs differ (the interface, its
    instance's network and groups, those groups' rules, the members of every peer
    those rules and the intra-group stage name), and those that left. None when that
    is not known (no previous state, or a host-wide setting changed)."""
    if old is None or (old.host, old.anti_spoofing) != (new.host, new.anti_spoofing):
        return None
    groups, peers = _changed(old, new)
    uses = _peers_by_group(new)
    out = set(previous - frozenset(a for n in new.local_interfaces.values() for a in n.addresses))
    for name, nic in new.local_interfaces.items():
        was = old.local_interfaces.get(name)
        inst = new.instance_by_id[nic.instance_id]
        before = old.instance_by_id.get(was.instance_id) if was is not None else None
        if (was is None or before is None or was != nic or (before.network, before.groups) != (inst.network, inst.groups)
                or any(g in groups or uses.get(g, frozenset()) & peers for g in inst.groups)):
            out.update(nic.addresses)
            if was is not None:
                out.update(was.addresses)
    return frozenset(out)


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


def apply_revocations(state: DesiredState, previous: frozenset, flows: FlowTable,
                      old: Optional[DesiredState] = None, revision: str = "?") -> int:
    """Delete the tracked connections `state` no longer allows; how many were deleted.
    With the state before the change (`old`), only the connections of touched addresses
    are listed and judged. Each deleted one is remembered in RECENTLY_REVOKED with
    `revision` (before the delete: the kernel's destroy event may be read at once)."""
    touched = touched_addresses(old, state, previous)
    if touched is not None and not touched:
        return 0
    listed = flows.list_flows() if touched is None else flows.list_flows(touched)
    plan = plan_revocations(state, listed, previous)
    for r in plan[:LOGGED]:
        log.info("revoking %s %s -> %s: %s", r.flow.protocol, r.flow.src, r.flow.dst, r.reason)
    if len(plan) > LOGGED:
        log.info("revoking %d more connection(s)", len(plan) - LOGGED)
    for r in plan:
        f = r.flow
        RECENTLY_REVOKED.add(flow_key(f.src, f.dst, f.protocol, f.sport, f.dport, f.icmp_id), revision, r.reason)
    return flows.delete_flows(r.flow for r in plan) if plan else 0


class RevocationWorker:
    def __init__(self, flows: FlowTable, done: Callable[[int], None], delay: float = 0.02) -> None:
        self.flows, self.done, self.delay = flows, done, delay    # delay: `wait` clients answer first
        self._cond = threading.Condition()
        self._pending: Optional[tuple[DesiredState, frozenset, Optional[DesiredState], str]] = None
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="revocation", daemon=True)
        self._thread.start()

    def submit(self, state: DesiredState, previous: frozenset, old: Optional[DesiredState] = None,
               revision: str = "?") -> None:
        """`old`: the state the change started from (coalesced: the oldest pending one)."""
        with self._cond:
            if self._pending is not None:
                previous, old = previous | self._pending[1], self._pending[2]
            self._pending = (state, previous, old, revision)
            self._cond.notify()

    def idle(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is pending (tests, benchmarks); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None)
                self._busy = True
            time.sleep(self.delay)
            with self._cond:
                (state, previous, old, revision), self._pending = self._pending, None     # type: ignore[misc]
            try:
                self.done(apply_revocations(state, previous, self.flows, old, revision))
            except KernelError as exc:
                log.error("host %s: revocation failed: %s", state.host, exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
