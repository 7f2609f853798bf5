"""What the reconciler keeps on disk between runs, in the state directory
(/var/lib/secgroup-agent, root only):

    failclosed.nft   the fail-closed boot table (agent.reconciler.boot, a few hundred
                     bytes): the boot step loads it first, so every instance interface
                     is dropped within milliseconds, not after the full restore
    ruleset.nft      the last applied ruleset as ONE `nft -f` script, stamped: the boot
                     step (systemd ExecStartPre) restores it next, before Python runs
    applied.pickle   (stamp, ruleset, compiler memo, local addresses, the caller's
                     validated document): the next start adopts a kernel holding this
                     stamp without validating or compiling from scratch

Both are written atomically (temporary file, fsync, rename). The pickle is read only
when the file belongs to root (or this user) and nobody else may write it or its
directory: loading a pickle runs code, so it must come from the agent itself.
"""
from __future__ import annotations

import gc
import logging
import os
import pickle
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from agent.compiler.ruleset import Ruleset

log = logging.getLogger(__name__)
DEFAULT_STATE_DIR = "/var/lib/secgroup-agent"
RESTORE_FILE, PICKLE_FILE, FAILCLOSED_FILE = "ruleset.nft", "applied.pickle", "failclosed.nft"
FORMAT = 3          # 3: the compile memo holds verdict numbers (issue 16)


@dataclass(frozen=True)
class Saved:
    token: str
    ruleset: Ruleset
    memo: Any
    addresses: frozenset
    context: Any = None          # the caller's (the daemon's last validated document)


def state_dir() -> Path:
    return Path(os.environ.get("SECGROUP_AGENT_STATE_DIR") or DEFAULT_STATE_DIR)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _trusted(path: Path) -> bool:
    for p in (path, path.parent):
        st = p.stat()
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            log.warning("%s: not owned by root or writable by others; not loaded", p)
            return False
    return True


@dataclass(frozen=True)
class StateStore:
    directory: Path

    def save(self, saved: Saved, script: str, failclosed: Optional[str] = None) -> None:
        """The files; OSError (a read-only or missing directory) is logged, not raised.
        `failclosed`: "" (no instance_interfaces) removes the boot table, None keeps it."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if failclosed:
                _write_atomic(self.directory / FAILCLOSED_FILE, failclosed.encode())
            elif failclosed is not None:
                (self.directory / FAILCLOSED_FILE).unlink(missing_ok=True)
            _write_atomic(self.directory / RESTORE_FILE, script.encode())
            _write_atomic(self.directory / PICKLE_FILE,
                          pickle.dumps((FORMAT, saved), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as exc:
            log.warning("%s: cannot save the applied ruleset: %s", self.directory, exc)

    def clear(self) -> None:
        """Forget the applied ruleset (after `flush`: the boot must not restore it)."""
        for name in (FAILCLOSED_FILE, RESTORE_FILE, PICKLE_FILE):
            try:
                (self.directory / name).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("%s: cannot remove %s: %s", self.directory, name, exc)

    def load(self) -> Optional[Saved]:
        path = self.directory / PICKLE_FILE
        try:
            if not _trusted(path):
                return None
            data = path.read_bytes()
            collecting = gc.isenabled()
            gc.disable()                 # millions of objects: the collector would triple the time
            try:
                version, saved = pickle.loads(data)
            finally:
                if collecting:
                    gc.enable()
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: start from scratch
            log.warning("%s: unreadable (%s); the ruleset will be compiled in full", path, exc)
            return None
        return saved if version == FORMAT and isinstance(saved, Saved) else None
