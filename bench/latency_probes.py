"""The traffic of bench/latency.py: how "enforced" is seen.

Each probe is a pair of small programs, one in the instance's namespace and one in
`outside`, driven over their stdin/stdout. `arm(port)` readies both for the next change
(nothing of it may be admitted yet); `arrival()` blocks until the first admitted traffic
and returns its CLOCK_MONOTONIC time (shared by all namespaces), -1 if none came in 60 s.

udp  a sender in `outside` sends a datagram to the port every 0.5 ms; t1 = the first
     datagram's arrival at the receiver in the instance.
tcp  a listener in the instance listens on the port; a prober in `outside` starts a fresh
     non-blocking connect every 10 ms (a tick), waits at most 8 ms for it and closes it, so
     attempts never pile up and a dropped or refused one is retried at the next tick;
     t1 = the time the prober sees the first handshake completed (its SYN admitted by the
     rule, the SYN-ACK back through the firewall as an established flow). The figure
     includes up to 10 ms of the prober's interval (the tick after the commit).
"""
from __future__ import annotations

import signal
import subprocess
import sys

PY = sys.executable

RECEIVER = """
import select, socket, sys, time
for line in sys.stdin:
    port = int(line)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    print("READY", flush=True)
    r, _, _ = select.select([s], [], [], 60)
    print(f"GOT {time.monotonic() if r else -1}", flush=True); s.close()
"""
SENDER = """
import socket, sys, threading, time
dst = sys.argv[1]; port = [0]
def blast():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    while True:
        if port[0]:
            try: s.sendto(b"x", (dst, port[0]))
            except OSError: pass
        time.sleep(0.0005)
threading.Thread(target=blast, daemon=True).start()
for line in sys.stdin:
    port[0] = int(line); print("OK", flush=True)
"""

# The connection is never accepted: the kernel completes the handshake for a listening
# socket by itself; closing the listener at the next port resets what is queued.
LISTENER = """
import socket, sys
s = None
for line in sys.stdin:
    if s is not None:
        s.close()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(line))); s.listen(16)
    print("READY", flush=True)
"""
PROBER = """
import errno, select, socket, sys, threading, time
dst, interval, wait_ms, give_up = sys.argv[1], 0.010, 8, 60.0
armed = threading.Condition(); target = [0]
def attempt(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.setblocking(False)
    try:
        if s.connect_ex((dst, port)) not in (0, errno.EINPROGRESS):
            return None
        p = select.poll(); p.register(s, select.POLLOUT)
        events = p.poll(wait_ms); t = time.monotonic()
        if events and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            return t
        return None
    finally:
        s.close()
def probe():
    while True:
        with armed:
            while not target[0]:
                armed.wait()
            port = target[0]
        start, tries, t1 = time.monotonic(), 0, -1.0
        while time.monotonic() - start < give_up:
            tries += 1; t = attempt(port)
            if t is not None:
                t1 = t; break
            tick = start + interval * (int((time.monotonic() - start) / interval) + 1)
            time.sleep(max(0.0, tick - time.monotonic()))
        with armed:
            target[0] = 0
        print(f"GOT {t1} {tries}", flush=True)
threading.Thread(target=probe, daemon=True).start()
for line in sys.stdin:
    print("OK", flush=True)            # before probing starts: OK always precedes GOT
    with armed:
        target[0] = int(line); armed.notify()
"""

PROBES = {"udp": "UDP datagram every 0.5 ms",
          "tcp": "TCP connect every 10 ms (includes up to 10 ms of probe interval)"}


def kill(*procs: subprocess.Popen | None) -> None:
    """SIGKILL and reap each process still running (a namespace's deletion ends none)."""
    for p in procs:
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
        if p is not None:
            p.wait()


class Probe:
    """An inside program (`inner`) and an outside one (`outer`); see the module docstring."""

    protocol = ""
    inside = ""
    outside = ""

    @classmethod
    def of(cls, inner: subprocess.Popen, outer: subprocess.Popen) -> "Probe":
        """A probe over programs already started (by another benchmark)."""
        probe = cls.__new__(cls)
        probe.inner, probe.outer = inner, outer
        return probe

    def __init__(self, sb, ns: str, addr: str) -> None:
        pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.inner: subprocess.Popen | None = None
        self.outer: subprocess.Popen | None = None
        try:
            self.inner = sb.popen(ns, PY, "-c", self.inside, **pipes)
            self.outer = sb.popen(sb.outside, PY, "-c", self.outside, addr, **pipes)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _say(p: subprocess.Popen | None, line: str, answer: str) -> None:
        assert p is not None and p.stdin and p.stdout
        p.stdin.write(line + "\n")
        p.stdin.flush()
        got = p.stdout.readline().strip()
        if got != answer:
            raise SystemExit(f"probe: {answer} expected after {line!r}, got {got!r}")

    def arm(self, port: int) -> None:
        self._say(self.inner, str(port), "READY")
        self._say(self.outer, str(port), "OK")

    def _first(self, p: subprocess.Popen | None) -> float:
        assert p is not None and p.stdout
        line = p.stdout.readline().split()
        if not line or line[0] != "GOT":
            raise SystemExit(f"{self.protocol} probe: ended without an answer")
        return float(line[1])

    def arrival(self) -> float:
        raise NotImplementedError

    def close(self) -> None:
        kill(self.outer, self.inner)


class UdpProbe(Probe):
    protocol, inside, outside = "udp", RECEIVER, SENDER

    def arrival(self) -> float:
        return self._first(self.inner)


class TcpProbe(Probe):
    protocol, inside, outside = "tcp", LISTENER, PROBER

    def arrival(self) -> float:
        return self._first(self.outer)


def make_probe(protocol: str, sb, ns: str, addr: str) -> Probe:
    return {"udp": UdpProbe, "tcp": TcpProbe}[protocol](sb, ns, addr)
