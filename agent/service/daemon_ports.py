"""What the daemon (agent.service.daemon) is configured with and the side effects it is
given besides the kernel: its settings, and the ports the CLI fills with the real link
monitor, table monitor, systemd notifier, status server and saver (the unit tests with
fakes)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

from agent.reconciler.result import ApplyResult
from agent.service.saver import InlineSaver


class Closable(Protocol):
    def close(self) -> None: ...


@dataclass(frozen=True)
class DaemonConfig:
    host: Optional[str] = None
    verify_interval: float = 30.0                 # a cheap check (generation id, tables exist)
    deep_verify_every: int = 10                   # every Nth check lists and compares the tables
    watchdog_interval: Optional[float] = None     # seconds between WATCHDOG=1
    repair_retry: float = 1.0
    save_delay: float = 1.0                       # seconds after a commit before it is saved
    settle_delay: float = 0.3                     # seconds after an apply before the collector runs
    instance_interfaces: Optional[tuple[str, ...]] = None   # --instance-interfaces (None: the document's)


@dataclass
class Ports:
    """The daemon's side effects besides the kernel (fakes in the unit tests)."""
    present_links: Callable[[], set[str]] = lambda: set()
    link_monitor: Optional[Callable[[Callable[[str, bool], None]], Closable]] = None
    table_watch: Optional[Callable[[Callable[..., None], Callable[[], None]], Closable]] = None
    notify: Callable[..., bool] = lambda *fields: False
    observe_apply: Callable[[ApplyResult], None] = lambda result: None
    background: Callable[[Callable[[], None]], None] = lambda work: work()   # production: a thread
    saver: InlineSaver = field(default_factory=InlineSaver)   # production: a ForkedSaver (saves in a child)
    published: Callable[[], None] = lambda: None          # a new status snapshot (the status server)
