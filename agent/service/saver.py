"""The daemon's save in a forked child, so it holds up no change.

After a commit the daemon saves the applied state (agent.reconciler.store: the stamped
restore script and the pickle the next start adopts). At 10,000 remote members that is
0.7-1.6 s of rendering and pickling, all of it holding the interpreter lock: in the
daemon's loop (or a thread of it) a change arriving meanwhile waited for it. A forked
child (agent.reconciler.forked, which says what a child may do) writes a snapshot of the
same immutable objects while the parent goes on at once. One save at a time: a save due
while a child still runs waits for it (two children could rename their files in the
wrong order).
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from agent.reconciler.forked import Child, fork_child

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
    the last child has ended; busy(): a child still runs (reaping it when it has ended).
    The fork itself: agent.reconciler.forked."""

    def __init__(self) -> None:
        self.child: Optional[Child] = None

    def run(self, work: Optional[Callable[[], None]], label: str, inline: bool = False) -> None:
        if inline or work is None:
            return super().run(work, label)
        self.start(work, label)

    def start(self, work: Callable[[], None], label: str = "") -> None:
        self.wait()
        self.child = fork_child(lambda _word: work(), label)
        if self.child is None:                        # fork failed: in the daemon's loop
            work()

    def busy(self) -> bool:
        if self.child is not None and self.child.ended():
            self._ended()
        return self.child is not None

    def wait(self) -> None:
        if self.child is not None:
            self.child.wait()
            self._ended()

    def _ended(self) -> None:
        assert self.child is not None
        child, self.child = self.child, None
        if child.code:
            log.warning("%s: the save's child failed (exit status %s); the state directory keeps the previous save",
                        child.label, child.code)
