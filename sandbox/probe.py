"""Traffic probes for the sandbox: a listener in the receiving namespace and a sender in
the sending one. A probe passes only when the *receiver* got its unique marker, so a
verdict is read where the packet should arrive, not inferred from a missing reply.

    python -m sandbox.probe listen --proto tcp --port 8080 --timeout 2
    python -m sandbox.probe send --proto udp --dst 10.0.0.5 --port 8080 --marker m1

`probe()` starts a listener process per probe (simple; the demo uses it). The kernel
tests use the fast path instead: one long-running `serve` process per namespace
(`Responder`) listens on a fixed list of TCP and UDP ports and on raw ICMP/ICMPv6
sockets, reports every marker it receives on stdout, and sends probes on command (stdin),
so a probe costs no process start and many probes can be in flight at once
(`probe_many`). `hold` is a long-lived TCP client that exchanges a line with a
`serve` process every ~100 ms and says when the connection stops answering.

    python -m sandbox.probe serve --ports 22,80,8080
    python -m sandbox.probe hold --dst 10.0.0.5 --port 7001 --interval 0.1 --timeout 0.5
"""
from __future__ import annotations

import argparse
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Iterable, Optional

from sandbox.hypervisor import Sandbox, require_tools

PYTHON = sys.executable


def _listen(proto: str, port: int, timeout: float) -> int:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET6, kind)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", port))
    if proto == "tcp":
        sock.listen(16)
    print("READY", flush=True)
    if not select.select([sock], [], [], timeout)[0]:
        return 1
    if proto == "tcp":
        conn, _ = sock.accept()
        conn.settimeout(timeout)
        data = conn.recv(256)
        conn.close()
    else:
        data = sock.recvfrom(256)[0]
    print("GOT", data.decode(errors="replace").strip(), flush=True)
    return 0


def _send(proto: str, dst: str, port: int, marker: str, timeout: float, src: Optional[str]) -> int:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as sock:
        sock.settimeout(timeout)
        if src:
            sock.bind((src, 0))
        try:
            if proto == "tcp":
                sock.connect((dst, port))
                sock.sendall(marker.encode() + b"\n")
            else:
                for _ in range(3):          # UDP is unreliable by design; one should do
                    sock.sendto(marker.encode() + b"\n", (dst, port))
        except OSError as exc:
            print(f"FAIL {exc}", flush=True)
            return 1
    return 0


@dataclass(frozen=True)
class ProbeResult:
    delivered: bool
    detail: str
    sent: str = ""                 # fast path: the sender's report ("ok" or its error)


def probe(sb: Sandbox, src_ns: str, dst_ns: str, dst: str, proto: str, port: int = 0,
          timeout: float = 1.5, src: Optional[str] = None) -> ProbeResult:
    """Send one new connection from src_ns to dst; True when dst_ns received it."""
    if proto in ("icmp", "icmpv6"):
        args = ["ping", "-c", "1", "-W", str(max(1, int(timeout))), dst] + (["-I", src] if src else [])
        r = sb.exec(src_ns, *args, check=False, timeout=timeout + 5)
        return ProbeResult(r.returncode == 0, "echo reply" if r.returncode == 0 else "no reply")
    marker = uuid.uuid4().hex[:12]
    listener = sb.popen(dst_ns, PYTHON, "-m", "sandbox.probe", "listen", "--proto", proto,
                        "--port", str(port), "--timeout", str(timeout),
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        if listener.stdout.readline().strip() != "READY":
            return ProbeResult(False, "listener failed to start")
        cmd = [PYTHON, "-m", "sandbox.probe", "send", "--proto", proto, "--dst", dst, "--port",
               str(port), "--marker", marker, "--timeout", str(timeout)] + (["--src", src] if src else [])
        sb.exec(src_ns, *cmd, check=False, timeout=timeout + 5)
        out, _ = listener.communicate(timeout=timeout + 5)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    got = marker in out
    return ProbeResult(got, "received" if got else "not received")


# -- the fast path: one long-running responder per namespace -------------------------
PROBE_TAG = b"PROBE "
HOLD_TAG = b"HOLD "
ECHO_REQUEST = {4: 8, 6: 128}
# Sending from an address the namespace does not hold (anti-spoofing probes): IPv4 route
# lookups refuse a foreign source unless the socket is transparent (root).
TRANSPARENT = {4: (socket.IPPROTO_IP, 19), 6: (socket.IPPROTO_IPV6, 75)}   # IP(V6)_TRANSPARENT


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo_request(version: int, ident: int, seq: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHH", ECHO_REQUEST[version], 0, 0, ident, seq)
    if version == 6:                 # the kernel fills in the ICMPv6 checksum
        return header + payload
    csum = _icmp_checksum(header + payload)
    return struct.pack("!BBHHH", 8, 0, csum, ident, seq) + payload


class _Server:
    """`serve`: listeners on every given port (TCP and UDP, IPv4 and IPv6), raw ICMP
    and ICMPv6 sockets for echo requests; prints `GOT <marker> <proto> <source>` for
    every marker received; executes `SEND ...` commands read from stdin."""

    def __init__(self, ports: list[int]):
        self.out_lock = threading.Lock()
        self.listeners: dict[socket.socket, str] = {}
        for port in ports:
            for kind, name in ((socket.SOCK_STREAM, "tcp"), (socket.SOCK_DGRAM, "udp")):
                sock = socket.socket(socket.AF_INET6, kind)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("::", port))
                if kind == socket.SOCK_STREAM:
                    sock.listen(128)
                self.listeners[sock] = name
        self.raw = {socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP): 4,
                    socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6): 6}
        self.conns: dict[socket.socket, bytes] = {}

    def say(self, line: str) -> None:
        with self.out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def run(self) -> int:
        threading.Thread(target=self.commands, daemon=True).start()
        self.say("READY")
        while True:
            readable = select.select(list(self.listeners) + list(self.raw) + list(self.conns), [], [])[0]
            for sock in readable:
                try:
                    self.readable(sock)
                except Exception:           # noqa: BLE001 - one bad packet or peer, not the server
                    self.drop(sock)

    def drop(self, sock: socket.socket) -> None:
        if sock in self.conns:
            del self.conns[sock]
            sock.close()

    def readable(self, sock: socket.socket) -> None:
        if sock in self.raw:
            data, addr = sock.recvfrom(65535)
            version = self.raw[sock]
            if version == 4:
                data = data[(data[0] & 0x0F) * 4:]      # raw IPv4 sockets get the IP header
            if len(data) > 8 and data[0] == ECHO_REQUEST[version] and data[8:].startswith(PROBE_TAG):
                self.marker(data[8:], "icmp" if version == 4 else "icmpv6", addr[0])
        elif self.listeners.get(sock) == "tcp":
            conn, _ = sock.accept()
            conn.setblocking(False)
            self.conns[conn] = b""
        elif self.listeners.get(sock) == "udp":
            data, addr = sock.recvfrom(65535)
            self.marker(data, "udp", addr[0])
        else:
            data = sock.recv(65535)
            if not data:
                return self.drop(sock)
            buf = self.conns[sock] + data
            *lines, rest = buf.split(b"\n")
            self.conns[sock] = rest
            for line in lines:
                if line.startswith(HOLD_TAG):
                    sock.setblocking(True)
                    sock.settimeout(1.0)
                    sock.sendall(line + b"\n")
                    sock.setblocking(False)
                elif line.startswith(PROBE_TAG):
                    self.marker(line, "tcp", _plain(sock.getpeername()[0]))

    def marker(self, data: bytes, proto: str, source: str) -> None:
        words = data[len(PROBE_TAG):].split()
        if words:
            self.say(f"GOT {words[0].decode(errors='replace')} {proto} {_plain(source)}")

    def commands(self) -> None:
        for line in sys.stdin:
            words = line.split()
            if len(words) == 7 and words[0] == "SEND":
                threading.Thread(target=self.send, args=words[1:], daemon=True).start()
        os._exit(0)                     # stdin closed: the test is done with us

    def send(self, marker: str, proto: str, dst: str, port: str, timeout: str, src: str) -> None:
        src_addr = None if src == "-" else src
        payload = PROBE_TAG + marker.encode() + b"\n"
        version = 6 if ":" in dst else 4
        family = socket.AF_INET6 if version == 6 else socket.AF_INET
        try:
            if proto in ("icmp", "icmpv6"):
                number = socket.IPPROTO_ICMPV6 if version == 6 else socket.IPPROTO_ICMP
                with socket.socket(family, socket.SOCK_RAW, number) as sock:
                    if src_addr:
                        sock.setsockopt(*TRANSPARENT[version], 1)
                        sock.bind((src_addr, 0))
                    ident = int.from_bytes(os.urandom(2), "big")
                    for seq in (1, 2):
                        sock.sendto(_echo_request(version, ident, seq, payload), (dst, 0))
            else:
                kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
                with socket.socket(family, kind) as sock:
                    sock.settimeout(float(timeout))
                    if src_addr:
                        sock.setsockopt(*TRANSPARENT[version], 1)
                        sock.bind((src_addr, 0))
                    if proto == "tcp":
                        sock.connect((dst, int(port)))
                        sock.sendall(payload)
                        time.sleep(0.05)    # let the marker leave before the FIN
                    else:
                        for _ in range(2):
                            sock.sendto(payload, (dst, int(port)))
            self.say(f"SENT {marker} ok")
        except OSError as exc:
            self.say(f"SENT {marker} failed {exc}")


def _plain(addr: str) -> str:
    """An IPv4-mapped IPv6 address (dual-stack socket) as plain IPv4."""
    return addr[7:] if addr.startswith("::ffff:") and "." in addr else addr


class Responder:
    """The test side of one `serve` process in a namespace: sends probes from it and
    collects the markers it receives."""

    def __init__(self, ns: str, ports: Iterable[int], python: str = PYTHON):
        self.ns = ns
        require_tools("ip")
        self.errors = tempfile.TemporaryFile("w+")       # never a pipe nobody drains
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, python, "-m", "sandbox.probe", "serve",
             "--ports", ",".join(str(p) for p in sorted(set(ports)))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors, text=True, bufsize=1)
        self.received: dict[str, tuple[str, str]] = {}     # marker -> (proto, source)
        self.sent: dict[str, str] = {}                     # marker -> "ok" | error
        self.cond = threading.Condition()
        first = self.proc.stdout.readline().strip()
        if first != "READY":
            self.close()
            self.errors.seek(0)
            err = self.errors.read()
            self.errors.close()
            raise RuntimeError(f"probe responder in {ns} did not start: {first!r} {err.strip()}")
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            words = line.split(maxsplit=3)
            with self.cond:
                if words[:1] == ["GOT"] and len(words) == 4:
                    self.received[words[1]] = (words[2], words[3].strip())
                elif words[:1] == ["SENT"] and len(words) >= 3:
                    self.sent[words[1]] = " ".join(words[2:]).strip()
                self.cond.notify_all()

    def send(self, marker: str, proto: str, dst: str, port: int = 0, timeout: float = 1.0,
             src: Optional[str] = None) -> None:
        self.proc.stdin.write(f"SEND {marker} {proto} {dst} {port or 0} {timeout} {src or '-'}\n")
        self.proc.stdin.flush()

    def wait(self, markers: Iterable[str], deadline: float) -> set[str]:
        """Markers (of `markers`) received by `deadline` (time.monotonic())."""
        wanted = set(markers)
        with self.cond:
            while not wanted <= self.received.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return wanted & self.received.keys()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        reader = getattr(self, "reader", None)
        if reader is not None:
            reader.join(timeout=2)              # it ends at the EOF of the exited process
        if reader is None or not reader.is_alive():
            self.proc.stdout.close()


@dataclass(frozen=True)
class ProbeSpec:
    """One new connection: from the responder of `src_ns` to `dst` (an address in
    `dst_ns`); `src` overrides the source address (anti-spoofing tests)."""
    src_ns: str
    dst_ns: str
    dst: str
    proto: str                     # tcp | udp | icmp | icmpv6
    port: int = 0
    src: Optional[str] = None


def probe_many(responders: dict[str, Responder], specs: list[ProbeSpec],
               timeout: float = 0.8) -> list[ProbeResult]:
    """Send every probe at once; each is delivered when its receiver got its marker
    within `timeout` (so a batch costs at most one timeout, however many it holds)."""
    markers = [f"m{uuid.uuid4().hex[:16]}" for _ in specs]
    for marker, spec in zip(markers, specs):
        responders[spec.src_ns].send(marker, spec.proto, spec.dst, spec.port, timeout, spec.src)
    deadline = time.monotonic() + timeout
    got: set[str] = set()
    for dst_ns in {s.dst_ns for s in specs}:
        got |= responders[dst_ns].wait([m for m, s in zip(markers, specs) if s.dst_ns == dst_ns], deadline)
    out = []
    for marker, spec in zip(markers, specs):
        if marker in got:
            proto, source = responders[spec.dst_ns].received[marker]
            out.append(ProbeResult(True, f"received from {source}", "ok"))
        else:
            sent = responders[spec.src_ns].sent.get(marker, "no send report")
            out.append(ProbeResult(False, f"not received (sender: {sent})", sent))
    return out


def _hold(dst: str, port: int, interval: float, timeout: float, src: Optional[str]) -> int:
    """A long-lived TCP client: one line every `interval`, each echoed by `serve`.
    Prints `UP <sport>`, then `OK <n>` per echo, `BROKEN <n> <why>` when an echo does
    not come back within `timeout` (then exits 1)."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(max(timeout, 3.0))            # connecting may wait for a neighbour
    try:
        if src:
            sock.bind((src, 0))
        sock.connect((dst, port))
    except OSError as exc:
        print(f"BROKEN 0 connect: {exc}", flush=True)
        return 1
    sock.settimeout(timeout)
    print(f"UP {sock.getsockname()[1]}", flush=True)
    n, buf = 0, b""
    while True:
        n += 1
        try:
            sock.sendall(HOLD_TAG + str(n).encode() + b"\n")
            while b"\n" not in buf:
                data = sock.recv(256)
                if not data:
                    raise OSError("closed by the peer")
                buf += data
            _line, buf = buf.split(b"\n", 1)
        except OSError as exc:
            print(f"BROKEN {n} {exc or 'timeout'}", flush=True)
            return 1
        print(f"OK {n}", flush=True)
        time.sleep(interval)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sandbox.probe")
    sub = p.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("listen")
    sp = sub.add_parser("send")
    vp = sub.add_parser("serve")
    vp.add_argument("--ports", required=True, help="comma-separated TCP/UDP ports")
    hp = sub.add_parser("hold")
    hp.add_argument("--dst", required=True)
    hp.add_argument("--port", type=int, required=True)
    hp.add_argument("--src")
    hp.add_argument("--interval", type=float, default=0.1)
    hp.add_argument("--timeout", type=float, default=0.5)
    for x in (lp, sp):
        x.add_argument("--proto", choices=("tcp", "udp"), required=True)
        x.add_argument("--port", type=int, required=True)
        x.add_argument("--timeout", type=float, default=2.0)
    sp.add_argument("--dst", required=True)
    sp.add_argument("--src")
    sp.add_argument("--marker", required=True)
    a = p.parse_args(argv)
    if a.cmd == "serve":
        return _Server([int(x) for x in a.ports.split(",") if x]).run()
    if a.cmd == "hold":
        return _hold(a.dst, a.port, a.interval, a.timeout, a.src)
    if a.cmd == "listen":
        return _listen(a.proto, a.port, a.timeout)
    return _send(a.proto, a.dst, a.port, a.marker, a.timeout, a.src)


if __name__ == "__main__":
    sys.exit(main())
