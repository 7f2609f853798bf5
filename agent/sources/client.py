"""What the HTTP and etcd sources share: connection options (TLS, bearer token, keepalive)
and the bounded, jittered backoff between attempts.

    opts = ClientOptions.from_kwargs("https://api/...", ca_file=..., cert_file=..., key_file=...,
                                     token_file=...)
    client = opts.httpx_client(timeout)   # raises SourceError for unreadable TLS files
    headers = opts.auth_headers()         # the token is read from its file at every request
"""
from __future__ import annotations

import functools
import logging
import os
import random
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import httpx

from agent.sources import SourceError

log = logging.getLogger(__name__)

TLS_OPTIONS = ("ca_file", "cert_file", "key_file", "token_file")
# Dead peers (a host that vanished without a FIN) are noticed in ~60 s even on an idle
# long-lived stream: keepalive after 30 s idle, then 3 probes 10 s apart.
_KEEPALIVE = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
for _name, _value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
    if hasattr(socket, _name):
        _KEEPALIVE.append((socket.IPPROTO_TCP, getattr(socket, _name), _value))


@dataclass(frozen=True)
class Backoff:
    """Delay before retry number `attempt` (0-based): exponential, capped, full jitter in
    [delay/2, delay] so a fleet that lost its source does not come back in lockstep."""
    initial: float = 0.2
    maximum: float = 10.0
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        top = min(self.maximum, self.initial * self.factor ** min(attempt, 30))
        return random.uniform(top / 2, top)


@dataclass(frozen=True)
class ClientOptions:
    """TLS and bearer-token settings of one source (all paths optional)."""
    source: str                       # the source's name, for messages
    ca_file: Optional[str] = None     # CA bundle that signs the server's certificate
    cert_file: Optional[str] = None   # client certificate (PEM), for servers that require one
    key_file: Optional[str] = None    # its private key (default: inside cert_file)
    token_file: Optional[str] = None  # a file holding a bearer token, re-read at every request

    @classmethod
    def from_kwargs(cls, source: str, options: dict[str, Any]) -> "ClientOptions":
        picked = {k: (str(options[k]) if options.get(k) is not None else None) for k in TLS_OPTIONS}
        return cls(source, **picked)

    @property
    def tls(self) -> bool:
        return bool(self.ca_file or self.cert_file)

    def ssl_context(self) -> ssl.SSLContext:
        """The verifying context: the CA file (or the system store) plus the client cert.
        Building one costs ~20 ms of CPU, so contexts are shared while the files are
        unchanged (a rotated certificate makes a new one)."""
        files = (self.ca_file, self.cert_file, self.key_file)
        try:
            return _context(files, tuple(_stamp(f) for f in files))
        except (OSError, ssl.SSLError) as exc:
            raise SourceError(f"{self.source}: cannot load TLS files "
                              f"(ca_file={self.ca_file}, cert_file={self.cert_file}, "
                              f"key_file={self.key_file}): {exc}") from None

    def httpx_client(self, timeout: httpx.Timeout, connections: int = 10) -> httpx.Client:
        transport = httpx.HTTPTransport(verify=self.ssl_context(), socket_options=_KEEPALIVE,
                                        limits=httpx.Limits(max_connections=connections))
        return httpx.Client(transport=transport, timeout=timeout, follow_redirects=True)

    def auth_headers(self) -> dict[str, str]:
        if not self.token_file:
            return {}
        try:
            token = Path(self.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"{self.source}: cannot read token_file {self.token_file}: {exc}") from None
        if not token:
            raise SourceError(f"{self.source}: token_file {self.token_file} is empty")
        return {"Authorization": f"Bearer {token}"}


def _stamp(path: Optional[str]) -> Optional[int]:
    try:
        return os.stat(path).st_mtime_ns if path else None
    except OSError:
        return None                     # _context() reports it


@functools.lru_cache(maxsize=32)
def _context(files: tuple[Optional[str], ...], stamps: tuple[Optional[int], ...]) -> ssl.SSLContext:
    ca_file, cert_file, key_file = files
    ctx = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def warn_unknown(source: str, options: dict[str, Any], known: tuple[str, ...]) -> None:
    for key in sorted(set(options) - set(known)):
        log.warning("source %s: ignoring unknown option %s", source, key)


class Interruptor:
    """Lets another thread cut a blocked request short (closing an httpx client or response
    from another thread does not unblock a read that is waiting for headers): it records
    the socket of every new connection through httpx's `trace` request extension, and
    interrupt() shuts that socket down, so the blocked read fails at once. Meant for a
    client with one connection (a long-poll or watch loop).

        client.stream(..., extensions={"trace": interruptor})
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stream: Any = None
        self.interrupted = False

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event != "connection.connect_tcp.complete":
            return
        with self._lock:
            self._stream, cut = info.get("return_value"), self.interrupted
        if cut:
            _shutdown(self._stream)

    def interrupt(self) -> None:
        with self._lock:
            self.interrupted, stream = True, self._stream
        _shutdown(stream)


class WatchThread:
    """The watch loop of a remote source: one daemon thread, and how another thread
    stops it: `stopped` (the loop checks it and sleeps on it) and `interruptor` (cuts
    the loop's blocked request short)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stopped = threading.Event()
        self.interruptor = Interruptor()
        self._thread: Optional[threading.Thread] = None

    def start(self, loop: Callable[[Callable[[], None]], None], on_change: Callable[[], None]) -> None:
        """Run `loop(on_change)` in the thread (once; later calls do nothing)."""
        if self._thread is None:
            self._thread = threading.Thread(target=loop, args=(on_change,), name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped.set()
        self.interruptor.interrupt()
        if self._thread is not None:
            self._thread.join(timeout=timeout)


def _shutdown(stream: Any) -> None:
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def describe(exc: Exception) -> str:
    """An httpx failure as one line ("connection refused", "TLS: certificate verify failed")."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError) and "SSL" in text:
        return f"TLS handshake failed: {text}"
    return text
