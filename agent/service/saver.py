"""The daemon's save in a forked child, so it holds up no change.

After a commit the daemon saves the applied state (agent.reconciler.store: the stamped
restore script and the pickle the next start adopts). At 10,000 remote members that is
0.7-1.6 s of rendering and pickling, all of it holding the interpreter lock: in the
daemon's loop (or a thread of it) a change arriving meanwhile waited for it. A forked
child writes a snapshot of the same immutable objects while the parent goes on at once
(copy on write: the fork copies page tables, a few ms at 200 MB). One save at a time: a
save due while a child still runs waits for it (two children could rename their files in
the wrong order). The child only pickles, renders and writes files, then `os._exit`s:
no lock that another thread of the parent may have held is taken in it (logging's
locks are re-initialised at fork by the logging module).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Optional

log = logging.getLogger(__name__)


class InlineSaver:
    """The save in the caller (the unit tests' daemons, `apply`): run(work) calls it."""

    def busy(self) -> bool:
        return False

    def wait(self) -> None:
        pass

    def run(self, work: Optional[Callable[[], None]], label: str, inline: bool = True) -> None:
        self.wait()
        if work is not None:
            start = time.monotonic()
            work()
            log.debug("%s: saved in %.0f ms", label, (time.monotonic() - start) * 1000)


class ForkedSaver(InlineSaver):
    """run(work): `work` in a forked child (inline when asked, or when fork fails), after
    the last child has ended; busy(): a child still runs (reaping it when it has ended)."""

    def __init__(self) -> None:
        self.pid: Optional[int] = None
        self.label = ""

    def run(self, work: Optional[Callable[[], None]], label: str, inline: bool = False) -> None:
        if inline or work is None:
            return super().run(work, label)
        self.start(work, label)

    def start(self, work: Callable[[], None], label: str = "") -> None:
        self.wait()
        try:
            pid = os.fork()
        except OSError as exc:
            log.warning("cannot fork to save (%s); saving in the daemon's loop", exc)
            work()
            return
        if pid == 0:                                  # the child
            code, start = 1, time.monotonic()
            try:
                work()
                log.debug("%s: saved in %.0f ms (in a child)", label, (time.monotonic() - start) * 1000)
                code = 0
            except Exception as exc:      # noqa: BLE001 - reported by the parent too (exit status)
                log.warning("%s: cannot save: %s: %s", label, type(exc).__name__, exc)
            finally:
                os._exit(code)
        self.pid, self.label = pid, label

    def busy(self) -> bool:
        if self.pid is not None:
            self._reap(os.WNOHANG)
        return self.pid is not None

    def wait(self) -> None:
        if self.pid is not None:
            self._reap(0)

    def _reap(self, flags: int) -> None:
        assert self.pid is not None
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:
            pid, status = self.pid, 0
        if pid == 0:
            return
        self.pid = None
        if os.waitstatus_to_exitcode(status):
            log.warning("%s: the save's child failed (exit status %s); the state directory keeps the previous save",
                        self.label, os.waitstatus_to_exitcode(status))
