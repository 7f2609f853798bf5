"""`secgroup-agent status`: the running daemon's facts over a local Unix socket.

The daemon listens on a stream socket (default /run/secgroup-agent/agent.sock, mode
0600, root only: the peer's uid is checked too); a client connects and reads one JSON
document. `format_status` is the human form.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from agent.errors import AgentError
from agent.compiler.transaction import ruleset_size

log = logging.getLogger(__name__)
DEFAULT_SOCKET = "/run/secgroup-agent/agent.sock"
MAX_LISTED = 50


def build_status(d: Any) -> dict:
    """The status document of a Daemon (duck-typed to keep the layers one-way)."""
    state = d.keeper.state
    configured = sorted(state.local_interfaces) if state is not None else []
    size = ruleset_size(d.keeper.applied) if d.keeper.applied is not None else None
    last = d.last_apply
    return {
        "pid": os.getpid(), "source": d.source.name, "ready": d.ready,
        "host": state.host if state is not None else None,
        "started": d.started, "revision": d.revision, "state_hash": d.hash,
        "last_apply": None if last is None else {
            "time": last.time, "duration_ms": round(last.seconds * 1000, 1),
            "kernel_ms": round(last.kernel_seconds * 1000, 1), "mode": last.mode,
            "result": last.result, "revision": last.revision},
        "errors": list(d.errors),
        "warnings": list(getattr(d, "warnings", [])),
        "interfaces": {"configured": len(configured),
                       "present": sum(1 for n in configured if n in d.present),
                       "missing": [n for n in configured if n not in d.present][:MAX_LISTED]},
        "ruleset": None if size is None else size.__dict__.copy(),
        "applies": dict(d.applies), "drift_repairs": d.keeper.repairs,
        "conntrack_deleted": d.keeper.revoked_total,
    }


def _ago(t: Optional[float]) -> str:
    if not t:
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    return f"{stamp} ({time.time() - t:.0f} s ago)"


def format_status(doc: dict) -> str:
    last = doc.get("last_apply") or {}
    nics = doc.get("interfaces") or {}
    rs = doc.get("ruleset") or {}
    lines = [
        f"source:      {doc.get('source')}",
        f"host:        {doc.get('host')}",
        f"enforcing:   revision {doc.get('revision') or '(none)'}  state {doc.get('state_hash') or '-'}"
        + ("" if doc.get("ready") else "  (not ready: no valid state applied yet)"),
        f"last apply:  {last.get('result', '-')} {last.get('mode', '')} revision {last.get('revision', '-')} "
        f"at {_ago(last.get('time'))}, {last.get('duration_ms', 0)} ms (kernel {last.get('kernel_ms', 0)} ms)",
        f"interfaces:  {nics.get('present', 0)} of {nics.get('configured', 0)} configured present",
    ]
    if nics.get("missing"):
        lines.append(f"  missing:   {', '.join(nics['missing'])}")
    lines += [
        f"ruleset:     {rs.get('chains', 0)} chains, {rs.get('rules', 0)} rules, {rs.get('sets', 0)} sets, "
        f"{rs.get('elements', 0)} elements",
        "applies:     " + (", ".join(f"{k} {v}" for k, v in sorted(doc.get("applies", {}).items())) or "none"),
        f"drift:       {doc.get('drift_repairs', 0)} repair(s)",
        f"conntrack:   {doc.get('conntrack_deleted', 0)} connection(s) deleted",
    ]
    errors = doc.get("errors") or []
    lines.append(f"errors:      {len(errors)}" if errors else "errors:      none")
    lines += [f"  {e}" for e in errors]
    warnings = doc.get("warnings") or []
    if warnings:
        lines.append(f"warnings:    {len(warnings)}")
        lines += [f"  {w}" for w in warnings[:MAX_LISTED]]
    return "\n".join(lines) + "\n"


class StatusServer:
    """Serves `snapshot()` as JSON to root (or the daemon's own user) on a Unix socket."""

    def __init__(self, path: str, snapshot: Callable[[], dict]) -> None:
        self.path = Path(path)
        self.snapshot = snapshot
        self._sock = self._bind()
        self._thread = threading.Thread(target=self._serve, name="status", daemon=True)

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
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            uid = struct.unpack("3i", creds)[1]
            doc = self.snapshot() if uid in (0, os.geteuid()) else {"error": "permission denied"}
            conn.settimeout(2.0)
            conn.sendall(json.dumps(doc, default=str).encode() + b"\n")
        except OSError as exc:
            log.debug("status client: %s", exc)

    def close(self) -> None:
        self._sock.close()
        try:
            self.path.unlink()
        except OSError:
            pass


def _alive(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(path)
            return True
    except OSError:
        return False


def query(path: str = DEFAULT_SOCKET, timeout: float = 5.0) -> dict:
    """The daemon's status document; AgentError when no daemon answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
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
    return doc
