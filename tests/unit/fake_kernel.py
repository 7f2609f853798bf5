"""A fake of the reconciler's Kernel port (agent.reconciler.port): records commits and
keeps the stamp a real kernel would hold after them."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional

from agent.errors import KernelError
from agent.reconciler.stamp import STAMP_SET


class FakeKernel:
    def __init__(self) -> None:
        self.commits: list[tuple[str, str]] = []
        self.gen = 1
        self.stamp: str | None = None
        self.present = False
        self.table: str | None = None
        self.refuse: set[str] = set()
        self.flows: list = []
        self.listed: list = []          # the addresses each list_flows call asked for
        self.deleted: list = []

    def commit(self, script: str, what: str) -> float:
        if what in self.refuse:
            raise KernelError("refused")
        self.commits.append((what, script))
        self.gen += 1
        if "delete table inet" in script or what in ("full", "repair"):
            self.present = True
        found = re.findall(rf"(?:elements = \{{ |add element inet \S+ {STAMP_SET} \{{ )([0-9a-f:]+) \}}", script)
        if found:
            self.stamp = found[-1]
        return 0.001

    def commit_elements(self, changes) -> float:
        if "elements" in self.refuse:
            raise KernelError("refused")
        self.commits.append(("elements", "\n".join(f"{c.set.name} -{list(c.removed)} +{list(c.added)}"
                                                   for c in changes)))
        self.gen += 1
        for c in changes:
            if c.set.name == STAMP_SET:
                self.stamp = c.added[0]
        return 0.001

    def commit_changes(self, changes, declared=None) -> float:
        if "changes" in self.refuse:
            raise KernelError("refused")
        self.commits.append(("changes", "\n".join([f"{r.chain} = {list(r.rules)}" for r in changes.refills] + [
            f"{c.set.name} -{list(c.removed)} +{list(c.added)}" for c in changes.elements])))
        self.gen += 1
        self.stamp = next((c.added[0] for c in changes.elements if c.set.name == STAMP_SET), self.stamp)
        return 0.001

    def listing(self, tables):
        return self.table

    def generation(self) -> int:
        return self.gen

    def tables_present(self, tables) -> bool:
        return self.present

    def read_stamp(self):
        return self.stamp if self.present else None

    def local_addresses(self) -> frozenset:
        return frozenset()

    def list_flows(self, addresses=None) -> list:
        self.listed.append(None if addresses is None else frozenset(addresses))
        if addresses is None:
            return list(self.flows)
        return [f for f in self.flows if f.src in addresses or f.dst in addresses]

    def delete_flows(self, flows) -> int:
        flows = list(flows)
        self.deleted += flows
        return len(flows)


class SaveWatchingKernel(FakeKernel):
    """Commits (those named in `watched`, or all) only once the save's three files are
    staged under temporary names in `directory`: the caller writes them while the commit
    runs. What it saw each time is in `staged_seen`; the first `refusals` watched commits
    are refused after that."""

    def __init__(self, directory: Path, watched: Optional[set[str]] = None, refusals: int = 0) -> None:
        super().__init__()
        self.directory, self.watched, self.refusals = directory, watched, refusals
        self.staged_seen: list[list[str]] = []

    def _staged(self) -> list[str]:
        return sorted(p.name.split(".")[1] for p in self.directory.glob(".*.*") if p.name.count(".") >= 2)

    def commit(self, script: str, what: str) -> float:
        if self.watched is None or what in self.watched:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(self._staged()) < 3:
                time.sleep(0.01)
            self.staged_seen.append(self._staged())
            if self.refusals:
                self.refusals -= 1
                raise KernelError("refused")
        return super().commit(script, what)
