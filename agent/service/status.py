"""`secgroup-agent status`: the running daemon's facts over a local Unix socket.

The daemon listens on a stream socket (default /run/secgroup-agent/agent.sock, mode
0600, root only: the peer's uid is checked too); a client connects, may send one
request line, and reads one JSON document: `status` (or nothing, answered after 20 ms)
answers at once; `wait IFACE REVISION|- SECONDS` answers as soon as the interface is
programmed (at that revision), or when the seconds run out (`secgroup-agent wait`), with
the document cut to what `wait` reads; the daemon's publish lets such clients answer
before its loop goes on (StatusServer.notify).
`format_status` is the human form.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

from agent.errors import AgentError
from agent.compiler.transaction import ruleset_size
from agent.service.status_doc import Interfaces, LastApply, RulesetFacts, Status

log = logging.getLogger(__name__)
DEFAULT_SOCKET = "/run/secgroup-agent/agent.sock"
MAX_LISTED = 50
YIELD_SECONDS = 0.05     # how long a publish waits for `wait` clients to look (notify)


def build_status(d: Any) -> Status:
    """The status document of a Daemon (duck-typed to keep the layers one-way)."""
    state = d.keeper.state
    configured = sorted(state.local_interfaces) if state is not None else []
    size = ruleset_size(d.keeper.applied) if d.keeper.applied is not None else None
    last = d.last_apply
    return Status(
        pid=os.getpid(), source=d.source.name, ready=d.ready,
        host=state.host if state is not None else None, started=d.started, revision=d.revision,
        state_hash=d.hash,
        last_apply=None if last is None else LastApply(
            last.time, round(last.seconds * 1000, 1), round(last.kernel_seconds * 1000, 1), last.mode,
            last.result, last.revision),
        errors=tuple(d.errors), warnings=tuple(getattr(d, "warnings", ())),
        interfaces=Interfaces(len(configured), sum(1 for n in configured if n in d.present),
                              tuple(n for n in configured if n not in d.present)[:MAX_LISTED],
                              dict(d.programmed)),
        ruleset=None if size is None else RulesetFacts(**size.__dict__),
        applies=dict(d.applies), drift_repairs=d.keeper.repairs, conntrack_deleted=d.keeper.revoked_total,
        started_as=d.started_as, audit=audit_rules(state) if state is not None else ())


def audit_rules(state: Any) -> tuple[str, ...]:
    """`group/rule` of every drop rule in audit mode (agent.model.objects.Rule.audits)."""
    return tuple(f"{r.group_id}/{r.id}" for g in state.groups for r in g.rules if r.audits(state.mode))


def _ago(t: Optional[float]) -> str:
    if not t:
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    return f"{stamp} ({time.time() - t:.0f} s ago)"


def format_status(doc: Status) -> str:
    last, nics, rs = doc.last_apply, doc.interfaces, doc.ruleset or RulesetFacts()
    lines = [
        f"source:      {doc.source}",
        f"host:        {doc.host}",
        f"enforcing:   revision {doc.revision or '(none)'}  state {doc.state_hash or '-'}"
        + ("" if doc.ready else "  (not ready: no valid state applied yet)"),
        "last apply:  -" if last is None else
        f"last apply:  {last.result} {last.mode} revision {last.revision} "
        f"at {_ago(last.time)}, {last.duration_ms} ms (kernel {last.kernel_ms} ms)",
        f"started:     {doc.started_as or '-'}",
        f"interfaces:  {nics.present} of {nics.configured} configured present, "
        f"{len(nics.programmed)} programmed",
    ]
    if nics.missing:
        lines.append(f"  missing:   {', '.join(nics.missing)}")
    lines += [
        f"ruleset:     {rs.chains} chains, {rs.rules} rules, {rs.sets} sets, {rs.elements} elements",
        "applies:     " + (", ".join(f"{k} {v}" for k, v in sorted(doc.applies.items())) or "none"),
        f"drift:       {doc.drift_repairs} repair(s)",
        f"conntrack:   {doc.conntrack_deleted} connection(s) deleted",
    ]
    if doc.audit:
        lines.append(f"audit:       {len(doc.audit)} drop rule(s) in audit mode (accepting): "
                     + ", ".join(doc.audit[:MAX_LISTED]))
    lines.append(f"errors:      {len(doc.errors)}" if doc.errors else "errors:      none")
    lines += [f"  {e}" for e in doc.errors]
    if doc.warnings:
        lines.append(f"warnings:    {len(doc.warnings)}")
        lines += [f"  {w}" for w in doc.warnings[:MAX_LISTED]]
    return "\n".join(lines) + "\n"


class StatusServer:
    """Serves `snapshot()` (a Status) as JSON to root (or the daemon's own user) on a Unix socket."""

    def __init__(self, path: str, snapshot: Callable[[], Status]) -> None:
        self.path = Path(path)
        self.snapshot = snapshot
        self._sock = self._bind()
        self._thread = threading.Thread(target=self._serve, name="status", daemon=True)
        self._cache: Optional[tuple[Status, bytes]] = None
        self._published = threading.Condition()
        self._waiters: set[object] = set()       # `wait` clients blocked in _wait
        self._owing: set[object] = set()         # ... that have not looked at the newest snapshot

    def _bind(self) -> socket.socket:
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if self.path.exists():
            if _alive(str(self.path)):
                raise AgentError(f"{self.path}: another agent is running (its status socket answers)")
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        sock.listen(8)
        sock.settimeout(1.0)
        return sock

    def start(self) -> "StatusServer":
        self._thread.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), name="status-client", daemon=True).start()

    def notify(self) -> None:
        """A new snapshot was published: waiting clients look again. The caller (the
        daemon's main loop) gives them the interpreter first: it returns once every
        waiting client has looked, and those it satisfied have their answer sent, or
        after YIELD_SECONDS; otherwise the loop's post-commit work would share the GIL
        with them in 5 ms slices and `wait` would return tens of ms late."""
        with self._published:
            self._owing = set(self._waiters)
            self._published.notify_all()
            end = time.monotonic() + YIELD_SECONDS
            while self._owing and (left := end - time.monotonic()) > 0:
                self._published.wait(left)

    def _looked(self, token: object) -> None:
        with self._published:
            if token in self._owing:
                self._owing.discard(token)
                self._published.notify_all()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                if struct.unpack("3i", creds)[1] not in (0, os.geteuid()):
                    conn.sendall(b'{"error": "permission denied"}\n')
                    return
                request = _request(conn)
                conn.settimeout(2.0)
                if request[:1] == ["wait"] and len(request) == 4:
                    token = object()
                    try:
                        got = self._wait(token, request[1], None if request[2] == "-" else request[2],
                                         float(request[3]))
                        conn.sendall(_wait_answer(got, request[1]))
                    finally:
                        self._looked(token)
                    return
                conn.sendall(self._encoded())
            except (OSError, ValueError) as exc:
                log.debug("status client: %s", exc)

    def _wait(self, token: object, iface: str, revision: Optional[str], seconds: float) -> Status:
        """The snapshot once `iface` is programmed (at `revision`), or the last one at the
        deadline. `token` stays owing (see notify) until the caller has answered."""
        deadline = time.monotonic() + min(seconds, 300.0)
        with self._published:
            self._waiters.add(token)
            try:
                while True:
                    snap = self.snapshot()
                    got = snap.interfaces.programmed.get(iface)
                    if (got is not None and (revision is None or got == revision)) or time.monotonic() >= deadline:
                        return snap
                    self._looked(token)
                    self._published.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            finally:
                self._waiters.discard(token)

    def _encoded(self) -> bytes:
        """The snapshot as JSON, encoded once per snapshot (`wait` polls every 10 ms)."""
        snap = self.snapshot()
        cached = self._cache
        if cached is None or cached[0] is not snap:
            cached = self._cache = (snap, json.dumps(snap.to_dict(), default=str).encode() + b"\n")
        return cached[1]

    def close(self) -> None:
        self._sock.close()
        try:
            self.path.unlink()
        except OSError:
            pass


def _wait_answer(snap: Status, iface: str) -> bytes:
    """The answer to `wait`: the status document with only what `wait` reads (the
    revision and this interface's), a few hundred bytes instead of every interface."""
    got = snap.interfaces.programmed.get(iface)
    nics = replace(snap.interfaces, missing=(), programmed={iface: got} if got is not None else {})
    small = replace(snap, interfaces=nics, warnings=(), errors=snap.errors[:MAX_LISTED])
    return json.dumps(small.to_dict(), default=str).encode() + b"\n"


def _request(conn: socket.socket) -> list[str]:
    """The client's request line, split; [] when it sent none within 20 ms."""
    conn.settimeout(0.02)
    data = b""
    try:
        while b"\n" not in data and len(data) < 1024:
            chunk = conn.recv(1024)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    return data.decode(errors="replace").split()


def _alive(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(path)
            return True
    except OSError:
        return False


def query(path: str = DEFAULT_SOCKET, timeout: float = 5.0, request: str = "status") -> Status:
    """The daemon's status document (after `request`, see the module docstring);
    AgentError when no daemon answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(request.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
    except FileNotFoundError:
        raise AgentError(f"{path}: no such socket (is the agent running? --socket names another)") from None
    except OSError as exc:
        raise AgentError(f"{path}: cannot reach the agent: {exc.strerror or exc}") from None
    doc = json.loads(b"".join(chunks) or b"{}")
    if "error" in doc:
        raise AgentError(f"{path}: {doc['error']}")
    return Status.from_dict(doc)
