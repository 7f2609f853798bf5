"""The etcd source: `etcd://HOST:PORT[,HOST:PORT...]/PREFIX` (layout: etcd_layout.py).

* fetch() reads the prefix once (one range request) and returns the document and the
  store revision it was read at. Once watching is in sync, fetch() answers from the copy
  the watch keeps, without a request.
* start(on_change) watches the prefix from the revision of the last read + 1 (a fetch()
  before start(), else a fresh read): no polling. Each etcd transaction arrives as one
  watch message, so a publish is seen whole, and on_change() is called once for it.
* Whenever the watch ends or fails - etcd restarted, the revision to resume from was
  compacted, the member lost its leader (the watch asks etcd to cancel it then), a
  stream silent for 10 minutes - the source resyncs: a full re-read, then a new watch
  from that read's revision. Retries back off (bounded, jittered). While out of sync,
  fetch() reads etcd directly, so it raises SourceError when etcd is unreachable; the
  loss and the recovery are both reported through on_change().
* Options: ca_file, cert_file, key_file (etcd's client TLS: https to the endpoints);
  idle_timeout (seconds, default 600).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional

from agent.sources import SourceError
from agent.sources.client import Backoff, ClientOptions, WatchThread, warn_unknown
from agent.sources.etcd_gateway import WATCH_IDLE_TIMEOUT, EtcdGateway, Snapshot, WatchMessage
from agent.sources.etcd_layout import DocumentCache, parse_etcd_spec

log = logging.getLogger(__name__)
_OPTIONS = ("ca_file", "cert_file", "key_file", "idle_timeout")


class EtcdSource:
    """Desired state kept in etcd under a prefix, followed with a watch."""

    # The documents fetch() returns share the objects of unchanged keys (DocumentCache):
    # the reader must not mutate them, and may take an item that is the very object of
    # the previous document as unchanged (validate_update(..., shared=True)).
    shares_items = True

    def __init__(self, spec: str, **options: Any) -> None:
        warn_unknown(spec, options, _OPTIONS)
        self.target = parse_etcd_spec(spec)
        self.name = spec
        self.idle_timeout = float(options.get("idle_timeout") or WATCH_IDLE_TIMEOUT)
        self._gw = EtcdGateway(list(self.target.endpoints), ClientOptions.from_kwargs(spec, options))
        self._lock = threading.Lock()
        self._kvs: dict[str, bytes] = {}
        self._revision = 0
        self._in_sync = False
        self._last_read: Optional[Snapshot] = None
        self._documents = DocumentCache()       # used by fetch() only (the daemon's thread)
        self._watcher = WatchThread(f"etcd-source {self.name}")
        self.backoff = Backoff()
        self.watching = threading.Event()     # set while a watch stream is established
        self.resyncs = 0                      # full re-reads after the first (for status/tests)

    # -- the Source interface ----------------------------------------------------------
    def fetch(self) -> tuple[Any, str]:
        with self._lock:
            held = (dict(self._kvs), self._revision) if self._in_sync else None
        if held is None:
            snap = self._gw.range_prefix(self.target.key_prefix)
            with self._lock:
                self._last_read = snap
            held = (snap.kvs, snap.revision)
        kvs, revision = held
        return self._documents.document(kvs, self.target.prefix, self.name), str(revision)

    def start(self, on_change: Callable[[], None]) -> None:
        self._watcher.start(self._run, on_change)

    def close(self) -> None:
        self._watcher.stop()
        self._gw.close()

    # -- the watch loop ------------------------------------------------------------------
    def _run(self, on_change: Callable[[], None]) -> None:
        with self._lock:
            snap, self._last_read = self._last_read, None
        # a snapshot fetch() already returned is no news; a fresh read always is
        failures, installed, seen = 0, False, snap is not None
        while not self._watcher.stopped.is_set():
            try:
                if snap is None:
                    snap = self._gw.range_prefix(self.target.key_prefix)
                    self.resyncs += installed
                self._install(snap, on_change, seen)
                installed, seen = True, False
                why = self._follow(snap.revision, on_change)
            except SourceError as exc:
                why = str(exc)
            snap = None
            if self.watching.is_set():
                failures = 0                 # the watch worked for a while
            self.watching.clear()
            if self._watcher.stopped.is_set():
                break
            self._lost(why, 0.0 if why == "compacted" else self.backoff.delay(failures), on_change)
            failures += why != "compacted"

    def _install(self, snap: Snapshot, on_change: Callable[[], None], seen: bool) -> None:
        """A full read becomes the copy the watch keeps up to date."""
        with self._lock:
            news = not seen and (not self._in_sync or self._kvs != snap.kvs)
            self._kvs, self._revision, self._in_sync = dict(snap.kvs), snap.revision, True
        log.debug("etcd-source %s: in sync at revision %d (%d keys)", self.name, snap.revision,
                  len(snap.kvs))
        if news:
            on_change()

    def _lost(self, why: str, delay: float, on_change: Callable[[], None]) -> None:
        with self._lock:
            was_in_sync, self._in_sync = self._in_sync, False
        level = logging.WARNING if was_in_sync or delay >= 5 else logging.INFO
        log.log(level, "etcd-source %s: watch lost (%s); resyncing in %.1fs", self.name, why, delay)
        if was_in_sync:
            on_change()                      # fetch() now reads etcd itself, or fails
        self._watcher.stopped.wait(delay)

    def _follow(self, revision: int, on_change: Callable[[], None]) -> str:
        """Apply watch messages from revision+1 on; returns why the watch ended."""
        stream = self._gw.watch(self.target.key_prefix, revision + 1, self._watcher.interruptor,
                                self.idle_timeout)
        for msg in stream:
            if msg.canceled or msg.compact_revision:
                return self._canceled(msg)
            if msg.created:
                self.watching.set()
            elif msg.events:
                self._apply(msg)
                on_change()
            elif msg.revision:
                with self._lock:             # a progress notification
                    self._revision = max(self._revision, msg.revision)
        return "etcd closed the watch stream"

    def _canceled(self, msg: WatchMessage) -> str:
        if msg.compact_revision:
            log.info("etcd-source %s: revision %d was compacted (now %d); re-reading",
                     self.name, self._revision + 1, msg.compact_revision)
            return "compacted"
        return f"watch canceled: {msg.reason or 'no reason given'}"

    def _apply(self, msg: WatchMessage) -> None:
        with self._lock:
            for event in msg.events:
                if event.value is None:
                    self._kvs.pop(event.key, None)
                else:
                    self._kvs[event.key] = event.value
            self._revision = max(self._revision, msg.revision)
        log.debug("etcd-source %s: revision %d, %d change(s)", self.name, msg.revision,
                  len(msg.events))
