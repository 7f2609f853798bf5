"""The network-link boundary: the only module that imports pyroute2's IPRoute.

    present_links() -> set[str]                    interface names in this namespace
    mon = LinkMonitor(on_change); mon.start()      on_change(name, present) per add/remove
    mon.close()

Rules match interfaces by name, so an interface that appears later is filtered from its
first packet without any action; the daemon only reports presence and, when an
interface disappears, deletes its connections. pyroute2 (0.9) sockets are used from the
thread that created them, so the monitor opens its socket inside its own thread.
"""
from __future__ import annotations

import logging
import socket
import threading
from typing import Callable, Optional

log = logging.getLogger(__name__)


def present_links() -> set[str]:
    """The names of this network namespace's links: if_nameindex(3) (one netlink dump in
    libc, ~1 ms), not pyroute2, whose first use costs 0.2-0.6 s of imports."""
    return {name for _, name in socket.if_nameindex()}


class LinkMonitor:
    def __init__(self, on_change: Callable[[str, bool], None]) -> None:
        self.on_change = on_change
        self._ipr = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._names: dict[int, str] = {}       # ifindex -> name (renames are remove + add)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="link-monitor", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=5)

    def _run(self) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl import RTMGRP_LINK
        try:
            self._ipr = IPRoute()
            self._ipr.bind(RTMGRP_LINK)
            self._names = {int(link["index"]): str(link.get("ifname")) for link in self._ipr.get_links()}
        finally:
            self._ready.set()
        while not self._stop.is_set():
            try:
                messages = self._ipr.get()
            except Exception as exc:  # noqa: BLE001 - closed socket or netlink error
                if not self._stop.is_set():
                    log.error("link monitor: stopped: %s", exc)
                return
            for msg in messages:
                self.handle(str(msg.get("event")), int(msg.get("index") or 0), msg.get("ifname"))

    def handle(self, event: str, index: int, name: Optional[str]) -> None:
        old = self._names.get(index)
        if event == "RTM_DELLINK":
            self._names.pop(index, None)
            if old or name:
                self.on_change(old or str(name), False)
        elif event == "RTM_NEWLINK" and name:
            self._names[index] = str(name)
            if old and old != name:
                self.on_change(old, False)
            if old != name:
                self.on_change(str(name), True)

    def close(self) -> None:
        self._stop.set()
        if self._ipr is not None:
            try:
                self._ipr.close()
            except Exception:  # noqa: BLE001
                pass
        if self._thread is not None:
            self._thread.join(timeout=2)
