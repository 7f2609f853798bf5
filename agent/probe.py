"""Traffic probes for the sandbox: a listener in the receiving namespace and a sender in
the sending one. A probe passes only when the *receiver* got its unique marker, so a
verdict is read where the packet should arrive, not inferred from a missing reply.

    python -m agent.probe listen --proto tcp --port 8080 --timeout 2
    python -m agent.probe send --proto udp --dst 10.0.0.5 --port 8080 --marker m1
"""
from __future__ import annotations

import argparse
import select
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import Optional

from agent.sandbox import Sandbox

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


def probe(sb: Sandbox, src_ns: str, dst_ns: str, dst: str, proto: str, port: int = 0,
          timeout: float = 1.5, src: Optional[str] = None) -> ProbeResult:
    """Send one new connection from src_ns to dst; True when dst_ns received it."""
    if proto in ("icmp", "icmpv6"):
        args = ["ping", "-c", "1", "-W", str(max(1, int(timeout))), dst] + (["-I", src] if src else [])
        r = sb.exec(src_ns, *args, check=False, timeout=timeout + 5)
        return ProbeResult(r.returncode == 0, "echo reply" if r.returncode == 0 else "no reply")
    marker = uuid.uuid4().hex[:12]
    listener = sb.popen(dst_ns, PYTHON, "-m", "agent.probe", "listen", "--proto", proto,
                        "--port", str(port), "--timeout", str(timeout),
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        if listener.stdout.readline().strip() != "READY":
            return ProbeResult(False, "listener failed to start")
        cmd = [PYTHON, "-m", "agent.probe", "send", "--proto", proto, "--dst", dst, "--port",
               str(port), "--marker", marker, "--timeout", str(timeout)] + (["--src", src] if src else [])
        sb.exec(src_ns, *cmd, check=False, timeout=timeout + 5)
        out, _ = listener.communicate(timeout=timeout + 5)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    got = marker in out
    return ProbeResult(got, "received" if got else "not received")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.probe")
    sub = p.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("listen")
    sp = sub.add_parser("send")
    for x in (lp, sp):
        x.add_argument("--proto", choices=("tcp", "udp"), required=True)
        x.add_argument("--port", type=int, required=True)
        x.add_argument("--timeout", type=float, default=2.0)
    sp.add_argument("--dst", required=True)
    sp.add_argument("--src")
    sp.add_argument("--marker", required=True)
    a = p.parse_args(argv)
    if a.cmd == "listen":
        return _listen(a.proto, a.port, a.timeout)
    return _send(a.proto, a.dst, a.port, a.marker, a.timeout, a.src)


if __name__ == "__main__":
    sys.exit(main())
