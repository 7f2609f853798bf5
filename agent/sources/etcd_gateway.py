"""The etcd boundary: the only module that talks to etcd, through its gRPC-gateway
(HTTP/JSON, `/v3/...`, keys and values base64) with httpx.

Why not a client library: `etcd3gw` (the maintained gateway client) drops what a resyncing
watcher needs: its get() hides the response header's revision (the one to watch from),
and its Watcher reads the stream in a thread pool that ignores the end of the stream,
errors and the `canceled`/`compact_revision` message, so a watcher cannot tell that it
must resync. The gateway protocol is four small POSTs; httpx is already a dependency.

    gw = EtcdGateway(["127.0.0.1:2379"], opts)
    snap = gw.range_prefix("/sg/")                  # Snapshot(revision, {key: value})
    for msg in gw.watch("/sg/", snap.revision + 1, interruptor): ...
    gw.txn(compare, success)                        # (succeeded, revision)
"""
from __future__ import annotations

import base64
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Iterator, Optional

import httpx

from agent.sources import SourceError
from agent.sources.client import ClientOptions, Interruptor, describe

log = logging.getLogger(__name__)
# Watch streams stay idle while nothing changes. A stream silent for this long is
# re-established (with a full re-read) in case it died without a word; keepalive
# (ClientOptions) notices vanished peers sooner.
WATCH_IDLE_TIMEOUT = 600.0


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text or "")


def prefix_end(prefix: str) -> bytes:
    """The range_end that selects every key starting with `prefix` (not ending in 0xff)."""
    raw = prefix.encode()
    return raw[:-1] + bytes([raw[-1] + 1])


@dataclass(frozen=True)
class Snapshot:
    revision: int                       # the store's revision the read saw
    kvs: dict[str, bytes]


@dataclass(frozen=True)
class Event:
    key: str
    value: Optional[bytes]              # None: deleted


@dataclass(frozen=True)
class WatchMessage:
    revision: int = 0
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    reason: str = ""
    events: tuple[Event, ...] = field(default=())


def parse_watch_line(line: str) -> WatchMessage:
    """One line of the gateway's watch stream (`{"result": {...}}` or `{"error": {...}}`)."""
    body = json.loads(line)
    if "error" in body:
        err = body["error"]
        return WatchMessage(canceled=True, reason=str(err.get("message") or err))
    res = body.get("result", {})
    events = tuple(Event(unb64(e["kv"]["key"]).decode(errors="replace"),
                         None if e.get("type") == "DELETE" else unb64(e["kv"].get("value", "")))
                   for e in res.get("events", ()))
    return WatchMessage(int(res.get("header", {}).get("revision", 0)), bool(res.get("created")),
                        bool(res.get("canceled")), int(res.get("compact_revision", 0)),
                        str(res.get("cancel_reason", "")), events)


class EtcdGateway:
    """Requests to one etcd cluster; tries the endpoints in turn, the last good one first."""

    def __init__(self, endpoints: list[str], opts: ClientOptions, timeout: float = 5.0) -> None:
        self.endpoints = list(endpoints)
        self.scheme = "https" if opts.tls else "http"
        self.opts = opts
        self.timeout = timeout
        self._client = opts.httpx_client(httpx.Timeout(timeout))
        self._lock = threading.Lock()

    def close(self) -> None:
        self._client.close()

    def _rotate(self, good: str) -> None:
        with self._lock:
            if self.endpoints[0] != good:
                self.endpoints.remove(good)
                self.endpoints.insert(0, good)

    def post(self, path: str, body: dict) -> dict:
        """POST to the first endpoint that answers; SourceError when none does."""
        errors = []
        for endpoint in list(self.endpoints):
            url = f"{self.scheme}://{endpoint}/v3/{path}"
            try:
                response = self._client.post(url, json=body, headers=self.opts.auth_headers())
            except httpx.HTTPError as exc:
                errors.append(f"{endpoint}: {describe(exc)}")
                continue
            self._rotate(endpoint)
            return self._decode(response, endpoint, path)
        raise SourceError(f"etcd {path}: unreachable ({'; '.join(errors)})")

    @staticmethod
    def _decode(response: httpx.Response, endpoint: str, path: str) -> dict:
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200:
            message = body.get("message") or body.get("error") or response.text[:200]
            raise SourceError(f"etcd {endpoint} {path}: HTTP {response.status_code}: {message}")
        return body

    def range_prefix(self, prefix: str) -> Snapshot:
        body = self.post("kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))})
        kvs = {unb64(kv["key"]).decode(errors="replace"): unb64(kv.get("value", ""))
               for kv in body.get("kvs", ())}
        return Snapshot(int(body["header"]["revision"]), kvs)

    def txn(self, compare: list[dict], success: list[dict]) -> tuple[bool, int]:
        body = self.post("kv/txn", {"compare": compare, "success": success})
        return bool(body.get("succeeded")), int(body["header"]["revision"])

    def compact(self, revision: int) -> None:
        self.post("kv/compaction", {"revision": revision, "physical": True})

    def watch(self, prefix: str, start_revision: int, interruptor: Interruptor,
              idle_timeout: float = WATCH_IDLE_TIMEOUT) -> Iterator[WatchMessage]:
        """The watch stream from `start_revision` on. Ends when etcd closes it; raises
        SourceError when it cannot be opened or breaks."""
        endpoint = self.endpoints[0]
        request = {"create_request": {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                      "start_revision": start_revision, "progress_notify": True}}
        # hasleader: etcd cancels the watch when this member loses its leader, instead
        # of leaving it silently stale (a partitioned member).
        headers = {**self.opts.auth_headers(), "Grpc-Metadata-hasleader": "true"}
        timeout = httpx.Timeout(self.timeout, read=idle_timeout)
        client = self.opts.httpx_client(timeout, 1)
        try:
            with client.stream("POST", f"{self.scheme}://{endpoint}/v3/watch", json=request,
                               headers=headers, extensions={"trace": interruptor}) as response:
                if response.status_code != 200:
                    raise SourceError(f"etcd {endpoint} watch: HTTP {response.status_code}")
                for line in response.iter_lines():
                    if line.strip():
                        yield parse_watch_line(line)
        except httpx.HTTPError as exc:
            with self._lock:                                     # next time, another one
                self.endpoints.append(self.endpoints.pop(0))
            raise SourceError(f"etcd {endpoint} watch: {describe(exc)}") from None
        except (ValueError, KeyError) as exc:
            raise SourceError(f"etcd {endpoint} watch: unreadable message: {exc}") from None
        finally:
            client.close()
