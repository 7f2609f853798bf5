"""The HTTP(S) source: pulls the SPEC §2 document (JSON or YAML body) from a URL.

* Conditional GET: every response's `ETag` is sent back as `If-None-Match`; a 304 means
  "unchanged" and fetch() returns the copy it holds.
* Revision: the `X-Revision` response header, else the ETag, else a hash of the body.
* Watching (start): a long-poll loop, `GET URL?wait=<revision>`; the server holds the
  request until its revision differs from <revision> (200, the new document) or its own
  timeout passes (304). A server that answers a wait at once with the same revision does
  not long-poll: the loop then polls every `poll_interval` seconds instead.
* Errors (unreachable, TLS, 4xx/5xx, an unreadable body) raise SourceError; the loop
  retries with bounded, jittered backoff and reports the failure and the recovery
  through on_change.
* Options: ca_file, cert_file, key_file (TLS with a client certificate), token_file
  (bearer token, re-read at every request), wait_timeout (seconds a long-poll may be held,
  default 30), poll_interval (default 10).
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import httpx

from agent.errors import InvalidInput
from agent.sources import SourceError
from agent.sources.client import (TLS_OPTIONS, Backoff, ClientOptions, WatchThread, describe,
                                  warn_unknown)

log = logging.getLogger(__name__)
_TUNING = ("wait_timeout", "poll_interval", "connect_timeout")


@dataclass(frozen=True)
class Snapshot:
    data: Any
    revision: str
    etag: Optional[str]


def revision_of(response: httpx.Response) -> str:
    """X-Revision, else the ETag without quotes (and W/), else a hash of the body."""
    rev = response.headers.get("x-revision")
    if rev:
        return rev.strip()
    etag = response.headers.get("etag")
    if etag:
        return etag.strip().removeprefix("W/").strip('"')
    return hashlib.sha256(response.content).hexdigest()[:16]


def _refuse_large(response: httpx.Response, url: str) -> None:
    """A body that says it is larger than agent.model.loader.MAX_BYTES is not read at all."""
    from agent.model.loader import MAX_BYTES
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BYTES:
        raise SourceError(f"{url}: the document is {int(declared):,} bytes; the limit is {MAX_BYTES:,}")


def parse_body(response: httpx.Response, source: str) -> Any:
    """The document in a 200 response: JSON when the server says so, else YAML (or JSON)."""
    from agent.model.loader import parse_json, parse_text
    raw = response.content
    if not raw.strip():
        raise SourceError(f"{source}: the server sent an empty document")
    parse = parse_json if "json" in response.headers.get("content-type", "") else parse_text
    try:                                # agent.model.loader: the limits and checks of every source
        data = parse(raw, source)
    except InvalidInput as exc:
        raise SourceError("; ".join(str(e) for e in exc.errors)) from None
    if data is None:
        raise SourceError(f"{source}: the server sent an empty document")
    return data


class HttpSource:
    """`http://` or `https://` URL serving the desired-state document."""

    def __init__(self, url: str, **options: Any) -> None:
        warn_unknown(url, options, TLS_OPTIONS + _TUNING)
        self.url = url
        self.name = url
        self.opts = ClientOptions.from_kwargs(url, options)
        self.wait_timeout = float(options.get("wait_timeout") or 30.0)
        self.poll_interval = float(options.get("poll_interval") or 10.0)
        connect = float(options.get("connect_timeout") or 5.0)
        self._client = self.opts.httpx_client(httpx.Timeout(10.0, connect=connect))
        self._poll = self.opts.httpx_client(httpx.Timeout(self.wait_timeout + 10.0, connect=connect), 1)
        self._lock = threading.Lock()
        self._snapshot: Optional[Snapshot] = None
        self._watcher = WatchThread(f"http-source {self.url}")
        self.backoff = Backoff()
        self.stats = {"requests": 0, "not_modified": 0, "errors": 0}

    # -- the Source interface ----------------------------------------------------------
    def fetch(self) -> tuple[Any, str]:
        snap = self._get(self._client, None)
        return snap.data, snap.revision

    def start(self, on_change: Callable[[], None]) -> None:
        self._watcher.start(self._watch, on_change)

    def close(self) -> None:
        self._watcher.stop()
        self._client.close()
        self._poll.close()

    # -- requests ------------------------------------------------------------------------
    def _get(self, client: httpx.Client, wait: Optional[str]) -> Snapshot:
        """One (conditional) GET; `wait` asks the server to hold it while unchanged."""
        with self._lock:
            held = self._snapshot
        headers = self.opts.auth_headers()
        if held is not None and held.etag:
            headers["If-None-Match"] = held.etag
        params = {"wait": wait} if wait is not None else None
        self.stats["requests"] += 1
        ext = {"trace": self._watcher.interruptor} if client is self._poll else None
        try:
            with client.stream("GET", self.url, headers=headers, params=params, extensions=ext) as response:
                _refuse_large(response, self.url)
                response.read()
        except httpx.HTTPError as exc:
            self.stats["errors"] += 1
            raise SourceError(f"{self.url}: {describe(exc)}") from None
        return self._accept(response, held)

    def _accept(self, response: httpx.Response, held: Optional[Snapshot]) -> Snapshot:
        if response.status_code == 304 and held is not None:
            self.stats["not_modified"] += 1
            return held
        if response.status_code != 200:
            self.stats["errors"] += 1
            reason = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
            raise SourceError(f"{self.url}: HTTP {response.status_code} {response.reason_phrase}"
                              + (f": {reason}" if reason else ""))
        snap = Snapshot(parse_body(response, self.url), revision_of(response),
                        response.headers.get("etag"))
        with self._lock:
            self._snapshot = snap
        return snap

    # -- the long-poll loop ------------------------------------------------------------
    def _watch(self, on_change: Callable[[], None]) -> None:
        failures, revision = 0, None
        with self._lock:
            if self._snapshot is not None:
                revision = self._snapshot.revision
        while not self._watcher.stopped.is_set():
            began = time.monotonic()
            try:
                snap = self._get(self._poll, revision)
            except SourceError as exc:
                failures = self._failed(exc, failures, on_change)
                continue
            if failures:
                log.info("source %s: reachable again (revision %s)", self.url, snap.revision)
            changed = failures > 0 or snap.revision != revision
            failures, revision = 0, snap.revision
            if changed:
                log.debug("source %s: revision %s", self.url, revision)
                on_change()
            elif time.monotonic() - began < min(1.0, self.wait_timeout / 2):
                self._watcher.stopped.wait(self.poll_interval)      # the server does not hold waits

    def _failed(self, exc: SourceError, failures: int, on_change: Callable[[], None]) -> int:
        if self._watcher.stopped.is_set():
            return failures
        delay = self.backoff.delay(failures)
        log.warning("source %s unavailable: %s; retrying in %.1fs", self.url, exc, delay)
        if failures == 0:
            on_change()                                  # fetch() will now report the failure
        self._watcher.stopped.wait(delay)
        return failures + 1
