"""The daemon (`secgroup-agent run`): apply the desired state, then follow it.

One thread decides (the main loop); the others only report into its queue:

    source watcher     ("source",)            the source may have news
    SIGHUP             ("reload",)            re-read even if the revision is unchanged
    nftables monitor   ("drift", what, objs)  someone else changed the agent's tables
                                              (objs: the chains and sets touched, or None)
                       ("overflow",)          notifications were lost: verify now
    link monitor       ("link", name, up)     an interface appeared or disappeared
    SIGTERM / SIGINT   ("stop",)              exit 0; the rules stay in place

Between events the loop feeds the systemd watchdog and, every `verify_interval`,
checks that the kernel still holds what was applied (a backstop for the monitor).
Invalid input never changes the kernel: the last valid state stays enforced, every
error is logged (one line each, with its path) and shown by `status`, and the next
valid revision is applied as soon as it appears.
"""
from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from agent.errors import AgentError, InvalidInput
from agent.reconciler.keeper import Drift, Keeper
from agent.reconciler.result import UNCHANGED
from agent.service.records import LastApply, StateHasher, merge_drift, settle_garbage_collector, whole_hash
from agent.service.daemon_ports import Closable, DaemonConfig, Ports
from agent.service.status_doc import Status
from agent.sources import Source, SourceError
from agent.model.objects import with_instance_interfaces
from agent.model.validate_incremental import Validated, validate_update
from agent.model.validate_warnings import document_warnings

log = logging.getLogger(__name__)


@dataclass
class Daemon:
    source: Source
    keeper: Keeper
    config: DaemonConfig = field(default_factory=DaemonConfig)
    ports: Ports = field(default_factory=Ports)
    events: "queue.Queue[tuple]" = field(default_factory=queue.Queue)
    revision: Optional[str] = None
    hash: Optional[str] = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)   # of the last valid revision
    last_apply: Optional[LastApply] = None
    applies: dict[str, int] = field(default_factory=dict)
    present: set[str] = field(default_factory=set)
    programmed: dict[str, str] = field(default_factory=dict)   # interface -> revision enforced
    started_as: str = ""
    ready: bool = False
    started: float = field(default_factory=time.time)
    notifications_lost: bool = False
    _closers: list[Closable] = field(default_factory=list)
    _snapshot: Optional[Status] = None
    _validated: Optional[Validated] = None      # the last valid document, for validate_update
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next_verify: float = 0.0
    _next_ping: float = 0.0
    _repair_due: Optional[Drift] = None
    _save_due: Optional[float] = None
    _settle_due: Optional[float] = None
    _links_due: Optional[float] = None        # when the link watch starts (in the background)
    _digest: Optional[Iterator[Optional[str]]] = None    # the state hash in steps (StateHasher.steps)
    _checks: int = 0
    _listing: bool = False                   # a background listing is under way
    _hasher: Optional[StateHasher] = None    # sources sharing unchanged items: an incremental state hash
    _warn: Optional[tuple[str, Any]] = None  # (revision, document) whose warnings the settle notes

    # -- thread-safe entry points ------------------------------------------------------
    def request(self, *event: Any) -> None:
        self.events.put(tuple(event))

    def snapshot(self) -> Status:
        with self._lock:
            if self._snapshot is not None:
                return self._snapshot
        self.publish()
        with self._lock:
            assert self._snapshot is not None
            return self._snapshot

    # -- life cycle ------------------------------------------------------------------
    def run(self) -> int:
        self.start_watchers(links=False)   # links after the first apply: pyroute2 loads in ~0.4 s
        gc.disable()                       # the start builds millions of objects: no collections meanwhile
        try:
            self.adopt()
            self.refresh(force=True)
        finally:
            gc.enable()
        now = time.monotonic()
        self.present = self.ports.present_links()          # ~1 ms; the monitor (pyroute2: 0.2-0.6 s) later
        self._links_due = now + self.config.settle_delay
        self.publish()
        self._next_verify = now + self.config.verify_interval
        self._next_ping = now
        if self._settle_due is not None:
            self._settle_due = now      # the start's millions of objects out of the collector's view
        try:                            # now, not inside the first change (a full collection: ~0.2 s)
            while self.step(self._wait()):
                pass
        finally:
            self.save(final=True)
            self.close()
        log.info("stopping; the rules stay in place (revision %s)", self.revision)
        return 0

    def start_watchers(self, links: bool = True) -> None:
        self.source.start(lambda: self.request("source"))
        self._closers.append(self.source)
        if self.ports.table_watch:
            self._closers.append(self.ports.table_watch(lambda what, objects=None: self.request("drift", what, objects),
                                                        lambda: self.request("overflow")))
        if links:
            self.start_link_watch()
        self.publish()

    def start_link_watch(self) -> None:
        if self.ports.link_monitor:
            self._closers.append(self.ports.link_monitor(lambda name, up: self.request("link", name, up)))
        self.present = self.ports.present_links()          # after the monitor: nothing appears unseen

    def close(self) -> None:
        for closer in reversed(self._closers):
            try:
                closer.close()
            except Exception as exc:  # noqa: BLE001 - best effort at exit
                log.debug("closing %s: %s", closer, exc)
        self._closers.clear()

    def _wait(self, block: bool = True) -> list[tuple]:
        deadline = min(self._next_verify, self._next_ping if self.config.watchdog_interval else float("inf"))
        if self._repair_due:
            deadline = min(deadline, time.monotonic() + self.config.repair_retry)
        for due in (self._save_due, self._settle_due, self._links_due):
            if due is not None:
                deadline = min(deadline, due)
        timeout = max(0.0, deadline - time.monotonic())
        out = []
        try:
            out.append(self.events.get(block=block, timeout=timeout))
            while True:
                out.append(self.events.get_nowait())
        except queue.Empty:
            pass
        return out

    def step(self, events: list[tuple]) -> bool:
        """Handle one batch of events (coalesced); False when asked to stop."""
        kinds = {e[0] for e in events}
        for e in events:
            if e[0] == "drift":
                self._repair_due = merge_drift(self._repair_due, Drift(e[1], e[2] if len(e) > 2 else None))
            elif e[0] == "overflow":
                self.notifications_lost = True
                self._next_verify = 0.0
            elif e[0] == "link":
                self.link_changed(e[1], e[2])
            elif e[0] == "listed":
                self.listed(*e[1:])
        if "stop" in kinds:
            return False
        if self._repair_due:
            self.repair()
        if kinds & {"source", "reload"}:
            self.refresh(force="reload" in kinds)
        if "reload" in kinds:
            self.verify(deep=True)
        self.tick()
        self.publish()
        return True

    def tick(self) -> None:
        now = time.monotonic()
        if self.config.watchdog_interval and now >= self._next_ping:
            self.ports.notify("WATCHDOG=1")
            self._next_ping = now + self.config.watchdog_interval
        if now >= self._next_verify:
            if not self.events.empty():          # a change first: listing a big table is slow
                self._next_verify = now + 1.0
                return
            self._next_verify = now + self.config.verify_interval
            self.verify()
        if self._settle_due is not None and now >= self._settle_due and self.events.empty():
            self.settle(now)
        if self._save_due is not None and now >= self._save_due and self.events.empty():
            self.save()
        if self._links_due is not None and now >= self._links_due and self.events.empty():
            self._links_due = None                # a thread: a change arriving meanwhile is not held up
            self.ports.background(self.start_link_watch)

    def settle(self, now: float) -> None:
        """After `wait` and status readers had their answer: the state hash, a chunk at a
        time (a change arriving meanwhile goes first; the hash goes on after it, or is
        dropped for the next revision's), then the collector settled. The document's
        warnings before it (they wait for the settle, not the next change)."""
        if self._warn is not None:
            self.note_warnings(*self._warn)
            self._warn = None
            if not self.events.empty():
                return
        for step in self._digest or ():
            if step is not None:
                self.hash, self._digest = step, None
            elif not self.events.empty():
                return
        self._digest, self._settle_due = None, None
        hashed = time.monotonic()
        settle_garbage_collector()
        log.debug("revision %s: settled (state hash %.0f ms, collector %.0f ms)", self.revision,
                  (hashed - now) * 1000, (time.monotonic() - hashed) * 1000)

    def adopt(self) -> None:
        """Take over the kernel's tables when they hold the saved ruleset, and the
        validated document saved with it (the first revision validates incrementally)."""
        start = time.monotonic()
        self.started_as = self.keeper.adopt()
        if isinstance(self.keeper.context, Validated):
            self._validated = self.keeper.context
        log.info("start: %s (%.0f ms)", self.started_as, (time.monotonic() - start) * 1000)

    def save(self, final: bool = False) -> None:
        """The applied ruleset to the state directory (the boot restore and the next
        start's adoption); a second or so after a commit, when no change is waiting; in a
        forked child in production (`Ports.saver`, agent.service.saver), one at a time."""
        if self.ports.saver.busy() and not final:
            self._save_due = self._save_due and time.monotonic() + 0.2
            return
        work = self.keeper.saving() if self._save_due is not None else None
        self._save_due = None
        self.ports.saver.run(work, f"revision {self.revision}", inline=final)

    # -- desired state -----------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        """Read the source; apply a new valid revision, keep the last one otherwise."""
        start = time.monotonic()
        try:
            data, revision = self.source.fetch()
        except InvalidInput as exc:
            return self.rejected(getattr(exc, "revision", "?"), [str(e) for e in exc.errors])
        except SourceError as exc:
            return self.rejected("?", [str(exc)], "source")
        if revision == self.revision and not force:
            self.errors = []          # back to what is applied (e.g. a bad edit reverted)
            return None
        try:
            validated = validate_update(data, self.config.host, self._validated,
                                        getattr(self.source, "shares_items", False))
        except InvalidInput as exc:
            return self.rejected(revision, [str(e) for e in exc.errors])
        self._validated = validated      # validation cache only: kept whether or not the apply succeeds
        log.debug("revision %s: read and %s validation in %.1f ms", revision, validated.mode,
                  (time.monotonic() - start) * 1000)
        state = with_instance_interfaces(validated.state, self.config.instance_interfaces)
        self.apply(state, revision, self._hash_of(data))
        if self.last_apply is not None and self.last_apply.result == "ok" and self.last_apply.revision == revision:
            self.keeper.context = validated      # saved with the applied ruleset for the next start
        self._warn = (revision, data)           # when idle (settle): 40-75 ms at 10,000 remote members
        self._settle_due = self._settle_due or time.monotonic() + self.config.settle_delay
        return None

    def _hash_of(self, data: Any) -> Iterator[Optional[str]]:
        if not getattr(self.source, "shares_items", False):
            return whole_hash(data)
        if self._hasher is None:
            self._hasher = StateHasher()
        return self._hasher.steps(data)

    def note_warnings(self, revision: str, data: Any) -> None:
        self.warnings = [str(w) for w in document_warnings(data)]
        for warning in self.warnings:
            log.warning("%s revision %s: warning: %s", self.source.name, revision, warning)

    def rejected(self, revision: str, errors: list[str], what: str = "invalid") -> None:
        for err in errors:
            log.error("%s revision %s: %s", self.source.name, revision, err)
        log.error("%s revision %s: %d error(s); still enforcing revision %s", self.source.name,
                  revision, len(errors), self.revision or "(none: the rules in the kernel stay)")
        self.errors = errors
        self.last_apply = LastApply(time.time(), 0.0, 0.0, "none", what, revision)

    def apply(self, state: Any, revision: str, digest: Iterator[Optional[str]]) -> None:
        """Apply a valid state; `digest` (the state hash, in steps) is run after the
        commit, when idle (it hashes the document: time the kernel should not wait for)."""
        try:
            result = self.keeper.apply(state, revision)
        except AgentError as exc:
            log.error("revision %s: apply failed, the previous rules stay: %s", revision, exc)
            self.errors = [f"apply failed: {exc}"]
            self.last_apply = LastApply(time.time(), 0.0, 0.0, "none", "failed", revision)
            return
        self.revision, self.errors = revision, list(result.errors)
        self.applies[result.mode] = self.applies.get(result.mode, 0) + 1
        self.last_apply = LastApply(time.time(), result.seconds, result.nft_seconds, result.mode, "ok", revision)
        self.programmed = {name: revision for name in state.local_interfaces}
        first, self.ready = not self.ready, True
        self.publish()                           # `wait` sees the enforcement at once
        self._digest = digest                    # hashing the document waits until idle
        self.ports.observe_apply(result)
        if result.mode != UNCHANGED:
            self._save_due = time.monotonic() + self.config.save_delay
            log.info("revision %s applied (%s, %d bytes) in %.0f ms (kernel %.0f ms); %d connection(s) revoked",
                     revision, result.mode, result.script_bytes, result.seconds * 1000,
                     result.nft_seconds * 1000, result.revoked)
        if first:
            log.info("revision %s: ready %.0f ms after the start (%s)", revision,
                     (time.time() - self.started) * 1000, self.started_as or "-")
            self.ports.notify("READY=1", f"STATUS=enforcing revision {revision}")
        self._settle_due = time.monotonic() + self.config.settle_delay

    # -- kernel drift and interfaces -------------------------------------------------
    def repair(self) -> None:
        what, self._repair_due = self._repair_due, None
        try:
            took = self.keeper.repair(what or Drift("?"))
            log.info("revision %s: tables restored in %.0f ms", self.revision, took * 1000)
        except AgentError as exc:
            log.error("revision %s: drift repair failed (retrying): %s", self.revision, exc)
            self._repair_due = what

    def verify(self, deep: bool = False) -> None:
        """The backstop check. A listing (deep check, or lost notifications with foreign
        commits) is taken in the background (`Ports.background`): seconds at the large
        sizes, which must not hold up changes; its result comes back as ("listed", ...)."""
        self._checks += 1
        deep = deep or self._checks % max(1, self.config.deep_verify_every) == 0
        try:
            problem, listing_needed, gen = self.keeper.precheck(self.notifications_lost, deep)
        except AgentError as exc:
            log.warning("revision %s: cannot verify the tables: %s", self.revision, exc)
            return
        if listing_needed:
            return self._list_in_background(gen)
        self.notifications_lost = False
        self._found(problem)

    def _list_in_background(self, gen: Optional[int]) -> None:
        if self._listing:
            return
        self._listing, lost, tables = True, self.notifications_lost, self.keeper.tables
        start = time.monotonic()

        def work() -> None:
            try:
                text: Any = self.keeper.kernel.listing(tables)
            except AgentError as exc:
                text = exc
            self.request("listed", text, gen, lost, time.monotonic() - start)
        self.ports.background(work)

    def listed(self, text: Any, gen: Optional[int], lost: bool, took: float) -> None:
        """A background listing is back: judge it, unless the tables were committed to
        meanwhile (then it proves nothing; the monitor covered that time)."""
        self._listing = False
        if isinstance(text, AgentError):
            log.warning("revision %s: cannot list the tables: %s", self.revision, text)
            return
        log.debug("revision %s: tables listed in %.0f ms", self.revision, took * 1000)
        if self.keeper.generation() != gen:
            log.debug("revision %s: the tables changed while they were listed; next check", self.revision)
            return
        self.notifications_lost = self.notifications_lost and not lost
        self._found(self.keeper.judge_listing(text, gen, lost))

    def _found(self, problem: Optional[Drift]) -> None:
        if problem:
            self._repair_due = problem
            self.repair()

    def link_changed(self, name: str, up: bool) -> None:
        configured = self.keeper.state is not None and name in self.keeper.state.local_interfaces
        (self.present.add if up else self.present.discard)(name)
        if not configured:
            return
        log.info("interface %s: %s", name, "appeared (filtered from its first packet)" if up else "removed")
        if not up:
            self.keeper.interface_gone(name)

    # -- status ----------------------------------------------------------------------
    def publish(self) -> None:
        from agent.service.status import build_status
        doc = build_status(self)
        with self._lock:
            self._snapshot = doc
        self.ports.published()
