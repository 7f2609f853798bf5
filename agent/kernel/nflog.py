"""NFLOG reader: the packets the datapath's `log group N prefix "sg:<n>:"` statements send
(nfnetlink_log, NETLINK_NETFILTER subsystem NFNL_SUBSYS_ULOG), decoded here.

    with NflogReader(group=2701) as reader:
        for packet in reader.read(timeout=1.0): ...     # LoggedPacket each
        reader.lost()                                    # (overruns, sequence gaps)

Why a small codec and not pyroute2: pyroute2 0.9 has nfnetlink bases for conntrack,
ipset and nf_tables but no nfnetlink_log family, and its generic decoder builds objects
per attribute (agent.kernel.ctnetlink measured ~450 us an entry); a log message needs six
fixed attributes and the first 128 bytes of the packet. The framing is agent.kernel.netlink's.

Why the agent reads NFLOG itself and not ulogd2: a logged packet only names a number
(`sg:<n>:`); turning it into stage, group, rule, instance and interface needs the
table's chain comments and the desired state, which the agent has and ulogd2 does not
(ulogd2 would write the number, and a second process would have to join it later).
One binder per group is all the kernel allows (EBUSY for a second), so running both is
not an option either; and the agent counts what it lost (ENOBUFS overruns and gaps in
NFULA_SEQ) where ulogd2 drops silently. ulogd2 stays usable on another group number
(`log: group` in the document) for sites that want its outputs (pcap, databases).

Loss: the kernel queues messages in the socket's receive buffer (RCVBUF, forced); when
it is full the next recvmsg fails with ENOBUFS (counted as one overrun) and the messages
it could not queue are gone. Each message carries the instance's sequence number
(NFULNL_CFG_F_SEQ), so the reader also counts exactly how many messages it never saw.

Message layout (linux/netfilter/nfnetlink_log.h): nlmsghdr, nfgenmsg (family of the
packet, res_id = group), attributes: PACKET_HDR {be16 hw_protocol, u8 hook, pad},
MARK be32, TIMESTAMP {be64 sec, be64 usec}, IFINDEX_INDEV/OUTDEV/PHYSINDEV/PHYSOUTDEV be32,
PAYLOAD (from the network header), PREFIX (NUL-terminated), SEQ be32.
"""
from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass
from typing import Optional

from agent.errors import KernelError
from agent.kernel import netlink

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
CFG_CMD, CFG_MODE, CFG_NLBUFSIZ, CFG_TIMEOUT, CFG_QTHRESH, CFG_FLAGS = 1, 2, 3, 4, 5, 6
CMD_BIND, CMD_UNBIND = 1, 2
COPY_PACKET = 2
F_SEQ = 0x0001
(A_HDR, A_MARK, A_TIMESTAMP, A_INDEV, A_OUTDEV, A_PHYSINDEV, A_PHYSOUTDEV, A_HWADDR,
 A_PAYLOAD, A_PREFIX, A_UID, A_SEQ) = range(1, 13)
COPY_RANGE = 128            # bytes of each packet copied: the IP header and the ports
RCVBUF = 4 << 20
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
IPV6_EXTENSIONS = {0, 43, 60}          # hop-by-hop, routing, destination options (44: fragment)


@dataclass(frozen=True)
class Headers:
    """What the payload says: IP version, addresses (text), protocol number, ports or
    ICMP type/code (None when absent or not in the copied bytes), length."""
    version: int
    src: str
    dst: str
    protocol: int
    sport: Optional[int] = None
    dport: Optional[int] = None
    icmp_type: Optional[int] = None
    icmp_code: Optional[int] = None
    length: int = 0


@dataclass(frozen=True)
class LoggedPacket:
    """One NFULNL_MSG_PACKET: nfgenmsg family, hook, prefix, interfaces by ifindex (None:
    not given), mark, kernel timestamp (None: not given), sequence number, headers."""
    family: int
    group: int
    hook: int
    hw_protocol: int
    prefix: str
    indev: Optional[int]
    outdev: Optional[int]
    physindev: Optional[int]
    physoutdev: Optional[int]
    mark: int
    timestamp: Optional[float]
    seq: Optional[int]
    headers: Optional[Headers]


# -- encoding ---------------------------------------------------------------------------
def config_message(group: int, seq: int, *attributes: bytes) -> bytes:
    """An NFULNL_MSG_CONFIG request for `group` (acknowledged)."""
    body = b"".join(attributes)
    return netlink.header(NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_CONFIG, netlink.NLM_F_REQUEST | netlink.NLM_F_ACK,
                          seq, socket.AF_UNSPEC, group, len(body)) + body


def bind_messages(group: int, copy_range: int = COPY_RANGE, timeout_cs: int = 5) -> list[bytes]:
    """Bind, copy the first `copy_range` bytes of each packet, number the messages, and
    flush a batch at least every `timeout_cs` hundredths of a second."""
    return [config_message(group, 1, netlink.attr(CFG_CMD, bytes((CMD_BIND,)))),
            config_message(group, 2, netlink.attr(CFG_MODE, struct.pack(">IBB", copy_range, COPY_PACKET, 0)),
                           netlink.attr(CFG_FLAGS, struct.pack(">H", F_SEQ)),
                           netlink.attr(CFG_TIMEOUT, struct.pack(">I", timeout_cs)))]


# -- decoding ---------------------------------------------------------------------------
def parse_packet(payload: bytes) -> LoggedPacket:
    """A NFULNL_MSG_PACKET's payload (after the nlmsghdr) as a LoggedPacket."""
    family, group = payload[0], int.from_bytes(payload[2:4], "big")
    a = dict(netlink.attrs(payload[netlink.NFGENMSG_LEN:]))
    hw_protocol, hook = struct.unpack_from(">HB", a[A_HDR]) if len(a.get(A_HDR, b"")) >= 3 else (0, 0)

    def ifindex(kind: int) -> Optional[int]:
        return netlink.u32(a[kind]) if kind in a else None

    ts = None
    if len(a.get(A_TIMESTAMP, b"")) >= 16:
        sec, usec = struct.unpack_from(">QQ", a[A_TIMESTAMP])
        ts = sec + usec / 1e6
    data = a.get(A_PAYLOAD, b"")
    return LoggedPacket(family, group, hook, hw_protocol, netlink.string(a.get(A_PREFIX, b"")),
                        ifindex(A_INDEV), ifindex(A_OUTDEV), ifindex(A_PHYSINDEV), ifindex(A_PHYSOUTDEV),
                        netlink.u32(a[A_MARK]) if A_MARK in a else 0, ts,
                        netlink.u32(a[A_SEQ]) if A_SEQ in a else None, parse_headers(data))


def parse_headers(data: bytes) -> Optional[Headers]:
    """The IPv4/IPv6 header and the TCP/UDP ports or ICMP type of a packet's first bytes
    (None: neither IPv4 nor IPv6, or too short)."""
    if len(data) >= 20 and data[0] >> 4 == 4:
        ihl = (data[0] & 0x0F) * 4
        fragment = struct.unpack_from(">H", data, 6)[0] & 0x1FFF
        proto = data[9]
        src, dst = socket.inet_ntop(socket.AF_INET, data[12:16]), socket.inet_ntop(socket.AF_INET, data[16:20])
        length = struct.unpack_from(">H", data, 2)[0]
        return _transport(Headers(4, src, dst, proto, length=length), data[ihl:] if not fragment else b"")
    if len(data) >= 40 and data[0] >> 4 == 6:
        src, dst = socket.inet_ntop(socket.AF_INET6, data[8:24]), socket.inet_ntop(socket.AF_INET6, data[24:40])
        proto, off = data[6], 40
        while proto in IPV6_EXTENSIONS and off + 2 <= len(data):
            proto, off = data[off], off + (data[off + 1] + 1) * 8
        rest = data[off:]
        if proto == 44 and len(rest) >= 8:                   # fragment header: first fragment only
            first = struct.unpack_from(">H", rest, 2)[0] & 0xFFF8 == 0
            proto, rest = rest[0], rest[8:] if first else b""
        length = struct.unpack_from(">H", data, 4)[0] + 40
        return _transport(Headers(6, src, dst, proto, length=length), rest)
    return None


def _transport(h: Headers, rest: bytes) -> Headers:
    if h.protocol in (6, 17, 132, 136) and len(rest) >= 4:       # tcp, udp, sctp, udplite
        sport, dport = struct.unpack_from(">HH", rest)
        return Headers(h.version, h.src, h.dst, h.protocol, sport, dport, length=h.length)
    if h.protocol in (1, 58) and len(rest) >= 2:
        return Headers(h.version, h.src, h.dst, h.protocol, icmp_type=rest[0], icmp_code=rest[1], length=h.length)
    return h


# -- the socket -------------------------------------------------------------------------
class NflogReader:
    """The bound group; `read` returns the packets that arrived, counting losses."""

    def __init__(self, group: int, rcvbuf: int = RCVBUF, copy_range: int = COPY_RANGE) -> None:
        self.group = group
        self.overruns = 0              # ENOBUFS: the kernel could not queue some messages
        self.gaps = 0                  # messages missing by their sequence numbers
        self._next_seq: Optional[int] = None
        self._sock = netlink.open_socket()
        try:
            netlink.set_buffers(self._sock, rcvbuf, send=False)
            for message in bind_messages(group, copy_range):
                self._request(message)
        except OSError as exc:
            self._sock.close()
            why = "another process (ulogd2? a second agent?) has bound it" if exc.errno == errno.EBUSY else exc.strerror
            raise KernelError(f"NFLOG group {group}: cannot bind: {why}") from exc

    def __enter__(self) -> "NflogReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, message: bytes) -> None:
        self._sock.send(message)
        while True:
            for m in netlink.messages(self._sock.recv(65536)):
                if m.kind == netlink.NLMSG_ERROR:
                    code = netlink.error_code(m)
                    if code:
                        raise OSError(code, errno.errorcode.get(code, str(code)))
                    return

    def read(self, timeout: float) -> list[LoggedPacket]:
        """The packets that arrived within `timeout` seconds (at least one batch if any)."""
        batches, overruns = netlink.drain(self._sock, timeout)
        self.overruns += overruns
        out: list[LoggedPacket] = []
        for data in batches:
            out += self._packets(data)
        return out

    def _packets(self, data: bytes) -> list[LoggedPacket]:
        out = []
        for m in netlink.messages(data):
            if m.kind != NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET:
                continue
            p = parse_packet(m.payload)
            if p.seq is not None:
                if self._next_seq is not None and p.seq != self._next_seq:
                    self.gaps += (p.seq - self._next_seq) & 0xFFFFFFFF
                self._next_seq = (p.seq + 1) & 0xFFFFFFFF
            out.append(p)
        return out

    def close(self) -> None:
        try:
            self._sock.send(config_message(self.group, 3, netlink.attr(CFG_CMD, bytes((CMD_UNBIND,)))))
        except OSError:
            pass
        self._sock.close()
