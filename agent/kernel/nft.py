"""The nftables boundary: the only module that imports `nftables` (libnftables).

One call per transaction (`apply_script`): a text buffer is parsed and committed by the
kernel as a whole, or refused as a whole. Errors become KernelError with nft's message.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import secrets
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from agent.errors import KernelError

log = logging.getLogger(__name__)
_lock = threading.Lock()
LIST_TIMEOUT = 900.0       # seconds a child may take to list a table (11 s at 800,000 elements)
_ctx: Any = None


def _nft() -> Any:
    global _ctx
    if _ctx is None:
        try:
            import nftables
        except ImportError as exc:
            raise KernelError("the nftables Python module is missing (Debian: python3-nftables)") from exc
        _ctx = nftables.Nftables()
        _ctx.set_handle_output(False)
    return _ctx


def release_memory() -> None:
    """libnftables keeps hundreds of MB after a large transaction until malloc_trim."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# The kernel names the committer of every ruleset generation by pid and thread name
# (comm). In a PID namespace (a container) the pid it reports is the host's, which the
# process cannot map to itself; so every commit is made under this thread name, unique
# per process, and the drift monitor (agent.kernel.monitor) recognises its own commits by it.
COMMIT_COMM = f"sga{os.getpid() % 100000:05d}{secrets.token_hex(3)}"[:15]
_PR_SET_NAME, _PR_GET_NAME = 15, 16


def _thread_name(name: Optional[bytes] = None) -> bytes:
    """Get (no argument) or set the calling thread's kernel name (comm)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if name is None:
            buf = ctypes.create_string_buffer(16)
            libc.prctl(_PR_GET_NAME, buf, 0, 0, 0)
            return buf.value
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    return b""


@contextmanager
def committing() -> Iterator[None]:
    """The seam every nftables commit of this process goes through (here and in
    agent.kernel.elements): one at a time, under the thread name COMMIT_COMM by which
    the drift monitor knows its own commits."""
    with _lock:
        previous = _thread_name()
        _thread_name(COMMIT_COMM.encode())
        try:
            yield
        finally:
            _thread_name(previous)


def apply_script(script: str, what: str = "apply", trim: bool = True) -> float:
    """Commit `script` as one transaction; returns the seconds it took. `trim`: give
    the memory libnftables freed back to the system (not between the stages of one
    load: the next stage would fault the same pages in again, and page faults are what
    a load running next to the build slows most on a 2-vCPU guest)."""
    with committing():
        start = time.monotonic()
        rc, _out, err = _nft().cmd(script)
        took = time.monotonic() - start
    if trim:
        release_memory()
    if rc != 0:
        raise KernelError(f"nft refused the {what} (nothing was changed): {_first_lines(err)}")
    log.debug("nft %s committed in %.3fs (%d bytes)", what, took, len(script))
    return took


def _nft_list(family: str, name: str, *options: str) -> Optional[str]:
    """`nft [options] list table family name` in a child process: its output, or None
    when the table does not exist."""
    try:
        out = subprocess.run([shutil.which("nft") or "/usr/sbin/nft", *options, "list", "table", family, name],
                             capture_output=True, text=True, timeout=LIST_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelError(f"cannot list table {family} {name}: {exc}") from exc
    if out.returncode != 0:
        if "No such file or directory" in out.stderr:
            return None
        raise KernelError(f"cannot list table {family} {name}: {_first_lines(out.stderr)}")
    return out.stdout


def list_table(family: str, name: str, elements: bool = True) -> Optional[str]:
    """The table as nft prints it, or None when it does not exist. Listed by a child
    process (`nft list table`, the same libnftables): a large table costs seconds and
    about 1 GB (libnftables caches every element of every set, 1.2 GB at 800,000
    elements) - the child's, not the daemon's. `elements=False`: sets without their
    elements (`nft -t`), for readers of chains only."""
    return _nft_list(family, name) if elements else _nft_list(family, name, "-t")


def list_table_json(family: str, name: str) -> Optional[list[dict]]:
    """The table's chains and rules (counters included) as nft's JSON objects, set
    elements left out (`nft -j -t`); None when the table does not exist. A child
    process, like `list_table`."""
    out = _nft_list(family, name, "-j", "-t")
    if out is None:
        return None
    try:
        return list(json.loads(out).get("nftables", []))
    except ValueError as exc:
        raise KernelError(f"cannot parse the JSON listing of {family} {name}: {exc}") from exc


def _json_cmd(command: str) -> tuple[int, list[dict], str]:
    """Run one listing command with JSON output: (rc, the `nftables` objects, stderr)."""
    with _lock:
        ctx = _nft()
        ctx.set_json_output(True)
        try:
            rc, out, err = ctx.cmd(command)
        finally:
            ctx.set_json_output(False)
    return rc, (json.loads(out).get("nftables", []) if rc == 0 and out else []), err


def list_tables() -> list[tuple[str, str]]:
    rc, objects, err = _json_cmd("list tables")
    if rc != 0:
        raise KernelError(f"cannot list tables: {_first_lines(err)}")
    return [(o["table"]["family"], o["table"]["name"]) for o in objects if "table" in o]


def _first_lines(text: str, limit: int = 6) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[:limit]) + (" ..." if len(lines) > limit else "")


def _named_set(family: str, table: str, name: str) -> Optional[dict]:
    """A named set as nft's JSON describes it (None when the table or set is absent)."""
    rc, objects, _err = _json_cmd(f"list set {family} {table} {name}")
    return next((o["set"] for o in objects if "set" in o), None) if rc == 0 else None


def set_elements(family: str, table: str, name: str) -> list[str]:
    """Elements of a named set as strings ([] when the table or set is absent)."""
    found = _named_set(family, table, name) or {}
    return [e if isinstance(e, str) else json.dumps(e) for e in found.get("elem", [])]


def set_comment(family: str, table: str, name: str) -> Optional[str]:
    """The comment of a named set (None when the table, the set or a comment is absent)."""
    return (_named_set(family, table, name) or {}).get("comment")
