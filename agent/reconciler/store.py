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

Each is written atomically (temporary file, fsync, rename). `stage` writes all three
under temporary names and `publish` renames them into place (`discard` removes them): the
one-shot apply stages while its commit runs (agent.reconciler.forked) and publishes only
when the commit succeeded, so a refused commit or a crash before the renames leaves the
previous files as they were (a crash's temporary files are removed by a later `stage`
once an hour old). The pickle is read only
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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from agent.compiler.ruleset import Ruleset

log = logging.getLogger(__name__)
DEFAULT_STATE_DIR = "/var/lib/secgroup-agent"
RESTORE_FILE, PICKLE_FILE, FAILCLOSED_FILE = "ruleset.nft", "applied.pickle", "failclosed.nft"
FORMAT = 3          # 3: the compile memo holds verdict numbers (issue 16)
STALE_SECONDS = 3600    # a temporary file this old was left by a crash (a save takes seconds)


@dataclass(frozen=True)
class Saved:
    token: str
    ruleset: Ruleset
    memo: Any
    addresses: frozenset
    context: Any = None          # the caller's (the daemon's last validated document)


def state_dir() -> Path:
    return Path(os.environ.get("SECGROUP_AGENT_STATE_DIR") or DEFAULT_STATE_DIR)


@dataclass(frozen=True)
class Staged:
    """Files written under temporary names, waiting for `StateStore.publish`: (temporary,
    final) pairs in the order they are renamed, and the files the publish removes."""
    renames: tuple[tuple[Path, Path], ...]
    removes: tuple[Path, ...] = ()


def _write_temporary(path: Path, data: bytes) -> Path:
    """`data` in a new file next to `path`, synced: renaming it over `path` is atomic."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _unlink_all(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _remove_stale(directory: Path) -> None:
    """Temporary files a crashed save left (15 MB of restore script at 1,000 x 100); not
    recent ones: a daemon's save may be under way beside a one-shot apply."""
    now = time.time()
    for name in (FAILCLOSED_FILE, RESTORE_FILE, PICKLE_FILE):
        for path in directory.glob(f".{name}.*"):
            try:
                if now - path.stat().st_mtime > STALE_SECONDS:
                    path.unlink()
            except OSError as exc:
                log.debug("%s: cannot remove %s: %s", directory, path.name, exc)


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
            self.publish(self.stage(saved, script, failclosed))
        except OSError as exc:
            log.warning("%s: cannot save the applied ruleset: %s", self.directory, exc)

    def stage(self, saved: Saved, script: str, failclosed: Optional[str] = None) -> Staged:
        """What `save` writes, under temporary names in the directory (nothing is replaced
        yet); OSError is raised, with whatever was written removed."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _remove_stale(self.directory)
        contents: list[tuple[str, Callable[[], bytes]]] = [
            (RESTORE_FILE, script.encode), (PICKLE_FILE, lambda: pickle.dumps((FORMAT, saved), protocol=pickle.HIGHEST_PROTOCOL))]
        if failclosed:
            contents.insert(0, (FAILCLOSED_FILE, failclosed.encode))
        renames: list[tuple[Path, Path]] = []
        try:
            for name, data in contents:
                renames.append((_write_temporary(self.directory / name, data()), self.directory / name))
        except BaseException:
            _unlink_all([tmp for tmp, _ in renames])
            raise
        removes = (self.directory / FAILCLOSED_FILE,) if failclosed == "" else ()
        return Staged(tuple(renames), removes)

    def publish(self, staged: Staged) -> None:
        """The staged files into place, the pickle last (a crash between two renames leaves
        a restore script whose stamp the pickle does not carry: the next start compiles in
        full, the boot restores a complete ruleset either way). OSError is raised, with
        the staged files not renamed removed."""
        done = 0
        try:
            for path in staged.removes:
                path.unlink(missing_ok=True)
            for tmp, path in staged.renames:
                os.replace(tmp, path)
                done += 1
        finally:
            _unlink_all([tmp for tmp, _ in staged.renames[done:]])

    @staticmethod
    def discard(staged: Staged) -> None:
        """Remove the staged files: the saved state stays the previous one."""
        _unlink_all([tmp for tmp, _ in staged.renames])

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
