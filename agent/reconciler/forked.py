"""Work in a forked child: the saves of the applied state (agent.reconciler.store), the
one place that forks. The daemon saves after a commit in a child (agent.service.saver),
so a change arriving meanwhile is not held up by the render and the pickle; the
one-shot apply stages its save in a child DURING the commit (`stage_save`), and the
commit (libnftables and the kernel, one core) and the save (the other core) overlap.

A child works on a copy-on-write snapshot of the parent's immutable objects (the fork
copies page tables: a few ms per 100 MB). It only renders, pickles and writes files,
then `os._exit`s: it takes no lock that another thread of the parent may have held
(logging's locks are re-initialised at fork by the logging module). Its collector is
off: a collection would touch every object, and so copy the pages of the whole heap.

A told child (`told=True`) asks for the parent's word through a pipe: one byte, b"1"
go; anything else, or the end of the pipe when the parent closed it or died, is no.
"""
from __future__ import annotations

import gc
import logging
import os
import time
from typing import Callable, Optional

from agent.reconciler.store import Saved, StateStore

log = logging.getLogger(__name__)
Word = Callable[[], bool]             # the child's question to the parent: go?
Snapshot = Callable[[], tuple[Saved, str, Optional[str]]]      # StateStore.save's arguments


class Child:
    """A forked child: `tell` it the word (once), `ended` without blocking, `wait`."""

    def __init__(self, pid: int, word_fd: Optional[int], label: str) -> None:
        self.pid, self.label = pid, label
        self.code: Optional[int] = None          # its exit status once reaped
        self.peak_rss_kb = 0                      # its peak resident size (shared pages included)
        self._word_fd = word_fd

    def tell(self, go: bool) -> None:
        if self._word_fd is None:
            return
        try:
            os.write(self._word_fd, b"1" if go else b"0")
        except OSError as exc:                    # the child is gone: its exit status says why
            log.debug("%s: the save's child did not take the word: %s", self.label, exc)
        finally:
            os.close(self._word_fd)
            self._word_fd = None

    def ended(self) -> bool:
        return self._reap(os.WNOHANG)

    def wait(self) -> int:
        """Its exit status (a child not told yet is told no first, or it would wait forever)."""
        self.tell(False)
        self._reap(0)
        assert self.code is not None
        return self.code

    def _reap(self, flags: int) -> bool:
        if self.code is not None:
            return True
        try:
            pid, status, usage = os.wait4(self.pid, flags)
        except ChildProcessError:                 # reaped elsewhere: nothing to report
            self.code = 0
            return True
        if pid == 0:
            return False
        self.code, self.peak_rss_kb = os.waitstatus_to_exitcode(status), usage.ru_maxrss
        log.debug("%s: the save's child ended (exit status %d, peak RSS %d MB)", self.label, self.code,
                  self.peak_rss_kb // 1024)
        return True


def fork_child(work: Callable[[Word], None], label: str, told: bool = False) -> Optional[Child]:
    """`work(word)` in a forked child; None when fork fails (the caller works inline)."""
    read_fd, write_fd = os.pipe() if told else (None, None)
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in (read_fd, write_fd):
            if fd is not None:
                os.close(fd)
        log.warning("%s: cannot fork to save (%s); saving inline", label, exc)
        return None
    if pid == 0:
        _run_child(work, read_fd, write_fd, label)
    if read_fd is not None:
        os.close(read_fd)
    return Child(pid, write_fd, label)


def _run_child(work: Callable[[Word], None], read_fd: Optional[int], write_fd: Optional[int], label: str) -> None:
    gc.disable()
    code, start = 1, time.monotonic()
    try:
        if write_fd is not None:
            os.close(write_fd)                    # else the parent's death would not end the pipe
        work(lambda: read_fd is None or os.read(read_fd, 1) == b"1")
        log.debug("%s: saved in %.0f ms (in a child)", label, (time.monotonic() - start) * 1000)
        code = 0
    except BaseException as exc:      # noqa: BLE001 - reported by the parent too (exit status)
        log.warning("%s: cannot save: %s: %s", label, type(exc).__name__, exc)
    finally:
        os._exit(code)


def stage_save(store: StateStore, snapshot: Snapshot, label: str) -> Optional[Child]:
    """A child that writes the save of a commit under way (`StateStore.stage`), then
    waits for the parent's word: go, the files are put in place (`publish`: the commit
    took); no, they are removed (`discard`: the previous save stays). None: fork failed."""
    def work(word: Word) -> None:
        staged, go = store.stage(*snapshot()), False
        try:
            go = word()
        finally:                                  # interrupted while waiting (Ctrl-C): no
            (store.publish if go else store.discard)(staged)
    return fork_child(work, label, told=True)
