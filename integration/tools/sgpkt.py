"""Packet tool of the integration suite's instance containers.

    python3 sgpkt.py daemon          # the container's main process (see below)
    python3 sgpkt.py send JSON       # craft and send probes (through the daemon)
    python3 sgpkt.py captures        # print the capture log

`daemon`
  * captures: one AF_PACKET socket on every interface (those moved in later too) logs, as
    JSON lines in /tmp/sgpkt/capture.jsonl, every IP packet that carries a probe marker
    (`SGM` + 12 hex digits) in its payload, every TCP SYN/RST and every ICMP/ICMPv6
    message other than neighbour discovery — with direction (in/out), addresses, ports,
    TCP flags;
  * serves: TCP and UDP on PORTS, echoing every line (TCP) or datagram (UDP) back, so
    replies of accepted flows can be observed and `python3 -m sandbox.probe hold` works;
  * crafts: probes sent by `send` are built with scapy (IPv4/IPv6 header, TCP SYN, UDP,
    ICMP echo, ICMPv6 echo, each with its marker in the payload, any source address) and
    written to raw IPPROTO_RAW sockets: the kernel routes them, nothing checks the source.

`send` takes a JSON list of {"marker", "proto": tcp|udp|icmp|icmpv6, "src", "dst",
"dport", "sport", "flags" (tcp, default "S")} and hands it to the daemon over /tmp/sgpkt/ctl.sock (no scapy import
per call: a probe costs one `docker exec`).
"""
from __future__ import annotations

import json
import os
import re
import selectors
import socket
import struct
import sys
import threading
import time

DIR = "/tmp/sgpkt"
LOG = f"{DIR}/capture.jsonl"
CTL = f"{DIR}/ctl.sock"
PORTS = [22, 80, 443, 3389, 5432, 5433, 7000, 7001, 7002, 7003, 8080, 9000, 9001, 9002, 9999]
MARKER = re.compile(rb"SGM[0-9a-f]{12}")
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
ND_TYPES = {133, 134, 135, 136}


# -- capture -------------------------------------------------------------------------
def _tcp_flags(b: int) -> str:
    return "".join(c for c, bit in zip("FSRPAU", (1, 2, 4, 8, 16, 32)) if b & bit)


def parse(frame: bytes) -> dict | None:
    if len(frame) < 14:
        return None
    etype = struct.unpack("!H", frame[12:14])[0]
    ip = frame[14:]
    if etype == 0x0800 and len(ip) >= 20:
        ihl = (ip[0] & 0x0F) * 4
        proto, v = ip[9], 4
        src, dst = socket.inet_ntop(socket.AF_INET, ip[12:16]), socket.inet_ntop(socket.AF_INET, ip[16:20])
        total = struct.unpack("!H", ip[2:4])[0]
        l4 = ip[ihl:total]
    elif etype == 0x86DD and len(ip) >= 40:
        proto, v = ip[6], 6
        src, dst = socket.inet_ntop(socket.AF_INET6, ip[8:24]), socket.inet_ntop(socket.AF_INET6, ip[24:40])
        plen = struct.unpack("!H", ip[4:6])[0]
        l4 = ip[40:40 + plen]
    else:
        return None
    rec = {"v": v, "src": src, "dst": dst}
    payload = b""
    if proto == 6 and len(l4) >= 20:
        sport, dport = struct.unpack("!HH", l4[:4])
        off = (l4[12] >> 4) * 4
        flags = _tcp_flags(l4[13])
        payload = l4[off:]
        rec.update(proto="tcp", sport=sport, dport=dport, flags=flags)
        keep = "S" in flags or "R" in flags
    elif proto == 17 and len(l4) >= 8:
        sport, dport = struct.unpack("!HH", l4[:4])
        payload = l4[8:]
        rec.update(proto="udp", sport=sport, dport=dport)
        keep = False
    elif proto in (1, 58) and len(l4) >= 4:
        rec.update(proto="icmp" if proto == 1 else "icmpv6", type=l4[0], code=l4[1])
        payload = l4[4:]
        keep = not (proto == 58 and l4[0] in ND_TYPES)
    else:
        rec.update(proto=str(proto))
        keep = False
    m = MARKER.search(payload)
    if m:
        rec["marker"] = m.group().decode()
    return rec if (m or keep) else None


def capture() -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    with open(LOG, "a", buffering=1) as out:
        while True:
            frame, addr = sock.recvfrom(65535)
            ifname, pkttype = addr[0], addr[2]
            if ifname == "lo":
                continue
            rec = parse(frame)
            if rec:
                rec["dir"] = "out" if pkttype == PACKET_OUTGOING else "in"
                rec["if"] = ifname
                rec["t"] = round(time.time(), 3)
                out.write(json.dumps(rec) + "\n")


# -- echo servers --------------------------------------------------------------------
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


def _udp_echo(s: socket.socket, family: int) -> None:
    """Echo a datagram from the address it was sent to (an unconnected socket would
    let source address selection pick another of the host's addresses)."""
    data, anc, _flags, peer = s.recvmsg(65535, 256)
    out = []
    for level, kind, cdata in anc:
        if family == socket.AF_INET6 and level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
            out = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, cdata[:16] + struct.pack("i", 0))]
        elif family == socket.AF_INET and level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            # struct in_pktinfo {int ifindex; in_addr spec_dst; in_addr addr}: answer from addr
            out = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("i", 0) + cdata[8:12] + bytes(4))]
    s.sendmsg([data], out, 0, peer)


def serve() -> None:
    sel = selectors.DefaultSelector()
    for port in PORTS:
        for family in (socket.AF_INET, socket.AF_INET6):
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                s = socket.socket(family, kind)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    if kind == socket.SOCK_DGRAM:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                elif kind == socket.SOCK_DGRAM:
                    s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
                if kind == socket.SOCK_STREAM:
                    s.listen(64)
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ,
                             "listen" if kind == socket.SOCK_STREAM else ("udp", family))
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            try:
                if key.data == "listen":
                    conn, _ = s.accept()
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, "conn")
                elif isinstance(key.data, tuple):
                    _udp_echo(s, key.data[1])
                else:
                    data = s.recv(65535)
                    if not data:
                        raise OSError("eof")
                    s.setblocking(True)
                    s.settimeout(1.0)
                    s.sendall(data)          # echo: `sandbox.probe hold` waits for its line
                    s.setblocking(False)
            except OSError:
                if key.data == "conn":
                    sel.unregister(s)
                    s.close()


# -- crafting ------------------------------------------------------------------------
def craft(p: dict) -> tuple[int, bytes]:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
    from scapy.packet import Raw

    v6 = ":" in p["dst"]
    net = IPv6(src=p["src"], dst=p["dst"], hlim=64) if v6 else IP(src=p["src"], dst=p["dst"], ttl=64)
    data = Raw(load=(p["marker"] + "\n").encode())
    sport = int(p.get("sport") or 40000 + int(p["marker"][-4:], 16) % 20000)
    proto = p["proto"]
    if proto == "tcp":
        pkt = net / TCP(sport=sport, dport=int(p["dport"]), flags=p.get("flags", "S"),
                        seq=int(p["marker"][-8:], 16), ack=1 if "A" in p.get("flags", "S") else 0) / data
    elif proto == "udp":
        pkt = net / UDP(sport=sport, dport=int(p["dport"])) / data
    elif proto == "icmp" and not v6:
        pkt = net / ICMP(type=8, id=sport, seq=1) / data
    elif proto in ("icmp", "icmpv6") and v6:
        pkt = net / ICMPv6EchoRequest(id=sport, seq=1, data=data.load)
    else:
        raise ValueError(f"cannot craft {proto} to {p['dst']}")
    return (6 if v6 else 4), bytes(pkt)


def send_probes(probes: list[dict]) -> list[str]:
    raw = {4: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW),
           6: socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)}
    results = []
    try:
        for p in probes:
            try:
                v, data = craft(p)
                for _ in range(int(p.get("copies", 2))):      # a lost first copy (ND) is no verdict
                    raw[v].sendto(data, (p["dst"], 0))
                results.append("ok")
            except (OSError, ValueError) as exc:
                results.append(f"error: {exc}")
    finally:
        for s in raw.values():
            s.close()
    return results


def control() -> None:
    import scapy.all  # noqa: F401  (import once, at start: sends are then fast)
    if os.path.exists(CTL):
        os.unlink(CTL)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(CTL)
    srv.listen(8)
    while True:
        conn, _ = srv.accept()
        with conn:
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buf += chunk
            try:
                reply = send_probes(json.loads(buf))
            except Exception as exc:                         # noqa: BLE001 - report, keep serving
                reply = [f"error: {exc!r}"]
            conn.sendall(json.dumps(reply).encode() + b"\n")


def daemon() -> int:
    os.makedirs(DIR, exist_ok=True)
    open(LOG, "a").close()
    threading.Thread(target=capture, daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()
    control()
    return 0


def client_send(arg: str) -> int:
    for _ in range(100):                     # the daemon may still be importing scapy
        if os.path.exists(CTL):
            break
        time.sleep(0.1)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(CTL)
    s.sendall(arg.encode().strip() + b"\n")
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    print(buf.decode().strip())
    return 0 if all(r == "ok" for r in json.loads(buf)) else 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["daemon"]:
        return daemon()
    if argv[:1] == ["send"] and len(argv) == 2:
        return client_send(argv[1])
    if argv[:1] == ["ready"]:
        return 0 if os.path.exists(CTL) else 1
    if argv[:1] == ["captures"]:
        with open(LOG) as f:
            sys.stdout.write(f.read())
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
