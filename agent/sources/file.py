"""The config-file source: the document at a path, watched with inotify.

The file AND its directory are watched, so every way of changing it is seen: written in
place (IN_CLOSE_WRITE, IN_MODIFY), replaced by rename (IN_MOVED_TO on the directory, the
way editors and config-management tools write atomically), deleted, created later, or a
symlink retargeted (the directory of the link is watched). Nothing polls: the watcher
thread sleeps in select() until the kernel reports an event. Bursts are coalesced: the
daemon re-reads the file once per wake-up and compares revisions.

The revision is the first 12 hex digits of the SHA-256 of the file's bytes, so touching
the file without changing it is recognised as "no news".

A new revision of a JSON file is parsed only where its text changed (`file_cache`): the
items of the top-level lists that it did not touch are the previous document's objects,
so the source `shares_items` (the daemon's validation and state hash skip them).
"""
from __future__ import annotations

import hashlib
import logging
import os
import select
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from agent.errors import InvalidInput
from agent.model.loader import read_file
from agent.sources.file_cache import TextCache
from agent.sources import SourceError

log = logging.getLogger(__name__)

_FILE_EVENTS = ("MODIFY", "CLOSE_WRITE", "ATTRIB", "DELETE_SELF", "MOVE_SELF")
_DIR_EVENTS = ("CREATE", "MOVED_TO", "MOVED_FROM", "DELETE", "CLOSE_WRITE", "MODIFY", "ATTRIB")


def revision_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _with_revision(exc: InvalidInput, revision: str) -> InvalidInput:
    exc.revision = revision
    return exc


class FileSource:
    """Source interface (agent.sources): fetch(), start(on_change), close()."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).absolute()
        self.name = f"file:{self.path}"
        self._inotify: Any = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._file_wd: Optional[int] = None
        self._cache = TextCache()

    @property
    def shares_items(self) -> bool:
        """The last document shares unchanged items with the one before (JSON; not YAML)."""
        return self._cache.indexed

    def fetch(self) -> tuple[Any, str]:
        """(parsed document, revision). Unreadable: SourceError; malformed: InvalidInput."""
        try:
            raw = read_file(self.path)        # agent.model.loader: the one way a file is read
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        rev = revision_of(raw)
        try:
            data = self._cache.document(raw, str(self.path))    # agent.model.loader's limits and checks
        except InvalidInput as exc:
            raise _with_revision(exc, rev) from None
        return data, rev

    def start(self, on_change: Callable[[], None]) -> None:
        from inotify_simple import INotify, flags
        self._inotify = INotify()
        self._wake_r, self._wake_w = os.pipe()
        mask = 0
        for name in _DIR_EVENTS:
            mask |= getattr(flags, name)
        self._inotify.add_watch(str(self.path.parent), mask)
        self._watch_file()
        self._thread = threading.Thread(target=self._run, args=(on_change,), name="file-source", daemon=True)
        self._thread.start()

    def _watch_file(self) -> None:
        """(Re-)watch the file itself: after a rename the old inode's watch is gone."""
        from inotify_simple import flags
        mask = 0
        for name in _FILE_EVENTS:
            mask |= getattr(flags, name)
        try:
            self._file_wd = self._inotify.add_watch(str(self.path), mask)
        except OSError:          # absent for now; the directory watch sees it arrive
            self._file_wd = None

    def _run(self, on_change: Callable[[], None]) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._inotify, self._wake_r], [], [])
            if self._stop.is_set() or self._wake_r in ready:
                return
            events = self._inotify.read(timeout=0)
            if self._relevant(events):
                self._watch_file()
                log.debug("%s: change seen", self.name)
                on_change()

    def _relevant(self, events: list) -> bool:
        base = self.path.name
        return any(e.wd == self._file_wd or e.name == base for e in events)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join(timeout=2)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._thread = None
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
