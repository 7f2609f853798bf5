"""Raw frames in a namespace, for the first-hop guard's kernel tests (run with
`ip netns exec NS python l2tool.py ...`; no scapy needed here: the tests craft and
parse frames with scapy in their own process and pass them as hex).

    send IFACE HEX [HEX ...]          send each frame on IFACE (AF_PACKET)
    sniff IFACE SECONDS               print READY, then the hex of every frame IFACE
                                      receives (not those it sends) for SECONDS
    udp PORT SECONDS                  print READY, then `src sport` of every UDP datagram
                                      to PORT (any address, broadcasts too) for SECONDS
"""
from __future__ import annotations

import select
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def send(iface: str, frames: list[str]) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        for text in frames:
            s.send(bytes.fromhex(text))


def _loop(sock: socket.socket, seconds: float, emit) -> None:
    print("READY", flush=True)
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if select.select([sock], [], [], left)[0]:
            emit(*sock.recvfrom(65535))


def sniff(iface: str, seconds: float) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as s:
        s.bind((iface, 0))
        _loop(s, seconds, lambda data, addr: addr[2] != PACKET_OUTGOING and print(data.hex(), flush=True))


def udp(port: int, seconds: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.bind(("0.0.0.0", port))
        _loop(s, seconds, lambda data, addr: print(f"{addr[0]} {addr[1]}", flush=True))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "send":
        send(args[0], args[1:])
    elif cmd == "sniff":
        sniff(args[0], float(args[1]))
    elif cmd == "udp":
        udp(int(args[0]), float(args[1]))
    else:
        sys.exit(f"unknown command {cmd}")
