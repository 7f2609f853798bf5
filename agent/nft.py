"""The nftables boundary: the only module that imports `nftables` (libnftables).

One call per transaction (`apply_script`): a text buffer is parsed and committed by the
kernel as a whole, or refused as a whole. Errors become KernelError with nft's message.
"""
from __future__ import annotations

import ctypes
import json
import logging
import threading
import time
from typing import Any, Optional

from agent.errors import KernelError

log = logging.getLogger(__name__)
_lock = threading.Lock()
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


def apply_script(script: str, what: str = "apply") -> float:
    """Commit `script` as one transaction; returns the seconds it took."""
    with _lock:
        start = time.monotonic()
        rc, _out, err = _nft().cmd(script)
        took = time.monotonic() - start
    release_memory()
    if rc != 0:
        raise KernelError(f"nft refused the {what} (nothing was changed): {_first_lines(err)}")
    log.debug("nft %s committed in %.3fs (%d bytes)", what, took, len(script))
    return took


def check_script(script: str) -> None:
    """Parse and check against the kernel without committing (nft -c)."""
    with _lock:
        ctx = _nft()
        ctx.set_dry_run(True)
        try:
            rc, _out, err = ctx.cmd(script)
        finally:
            ctx.set_dry_run(False)
    if rc != 0:
        raise KernelError(f"nft check failed: {_first_lines(err)}")


def list_table(family: str, name: str) -> Optional[str]:
    """The table as nft prints it, or None when it does not exist."""
    with _lock:
        rc, out, err = _nft().cmd(f"list table {family} {name}")
    release_memory()
    if rc != 0:
        if "No such file or directory" in err:
            return None
        raise KernelError(f"cannot list table {family} {name}: {_first_lines(err)}")
    return out


def list_tables() -> list[tuple[str, str]]:
    with _lock:
        ctx = _nft()
        ctx.set_json_output(True)
        try:
            rc, out, err = ctx.cmd("list tables")
        finally:
            ctx.set_json_output(False)
    if rc != 0:
        raise KernelError(f"cannot list tables: {_first_lines(err)}")
    return [(o["table"]["family"], o["table"]["name"])
            for o in json.loads(out).get("nftables", []) if "table" in o]


def _first_lines(text: str, limit: int = 6) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[:limit]) + (" ..." if len(lines) > limit else "")


def set_elements(family: str, table: str, name: str) -> list[str]:
    """Elements of a named set as strings ([] when the table or set is absent)."""
    with _lock:
        ctx = _nft()
        ctx.set_json_output(True)
        try:
            rc, out, _err = ctx.cmd(f"list set {family} {table} {name}")
        finally:
            ctx.set_json_output(False)
    if rc != 0:
        return []
    for obj in json.loads(out).get("nftables", []):
        if "set" in obj:
            return [e if isinstance(e, str) else json.dumps(e) for e in obj["set"].get("elem", [])]
    return []


def set_comment(family: str, table: str, name: str) -> Optional[str]:
    """The comment of a named set (None when the table, the set or a comment is absent)."""
    with _lock:
        ctx = _nft()
        ctx.set_json_output(True)
        try:
            rc, out, _err = ctx.cmd(f"list set {family} {table} {name}")
        finally:
            ctx.set_json_output(False)
    if rc != 0:
        return None
    for obj in json.loads(out).get("nftables", []):
        if "set" in obj:
            return obj["set"].get("comment")
    return None
