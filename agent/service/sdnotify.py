"""The systemd notification boundary (sd_notify(3) without libsystemd): one datagram to
$NOTIFY_SOCKET per call. Outside systemd (no NOTIFY_SOCKET) every call is a no-op.

    notify("READY=1", "STATUS=enforcing rev abc")
    watchdog_interval() -> seconds between WATCHDOG=1 pings (half of WatchdogSec), or None
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Optional

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]                       # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
        return True
    except OSError as exc:
        log.warning("systemd notify %s: %s", fields[0] if fields else "", exc)
        return False


def watchdog_interval() -> Optional[float]:
    """Half the watchdog timeout ($WATCHDOG_USEC), when the watchdog is meant for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return max(int(usec), 1) / 2e6
    except ValueError:
        return None
