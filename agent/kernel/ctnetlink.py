"""Conntrack over a plain netlink socket: one dump of both address families parsed
with `struct`, deletions sent many to a write (agent.kernel.conntrack is the API).

Why not pyroute2: its ctnetlink dump decodes every attribute of every entry into
objects, ~450 us an entry (4.5 s for 10,000 flows, docs/fail-closed.md), where the
agent needs only the original tuple. Here a dump request with family AF_UNSPEC returns
the IPv4 and IPv6 tables in one pass and each message is read as far as its
CTA_TUPLE_ORIG; deletions are IPCTNL_MSG_CT_DELETE messages concatenated into one
buffer per write (the kernel handles them one by one, each acknowledged).

Message layout (linux/netfilter/nfnetlink_conntrack.h): nlmsghdr, nfgenmsg, attributes;
CTA_TUPLE_ORIG { CTA_TUPLE_IP { V4/V6 SRC, DST }, CTA_TUPLE_PROTO { NUM, SRC_PORT,
DST_PORT | ICMP(V6)_ID, TYPE, CODE } }, ports and ids in network byte order.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NETLINK_CAP_ACK = 10
CTNETLINK = 1                                 # NFNL_SUBSYS_CTNETLINK
CT_NEW, CT_GET, CT_DELETE = 0, 1, 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_NESTED, NLA_TYPE_MASK = 0x8000, 0x3FFF
CTA_TUPLE_ORIG, CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 1, 2
CTA_FILTER, CTA_FILTER_ORIG_FLAGS, CTA_FILTER_REPLY_FLAGS = 25, 1, 2
FILTER_FLAG = {"src": 1 << 0, "dst": 1 << 1}    # CTA_FILTER_F_CTA_IP_SRC, _DST (kernel 5.10+)
FAMILY = {4: socket.AF_INET, 16: socket.AF_INET6}
ICMP_ATTRS = ((4, 5, 6), (7, 8, 9))           # (id, type, code) of ICMP, of ICMPv6
RCVBUF = 8 << 20
CHUNK = 256                                   # delete messages per write

HDR = struct.Struct("=IHHII")                 # nlmsghdr: len, type, flags, seq, pid
HDR2 = struct.Struct("=IH")
NLA = struct.Struct("=HH")
U16 = struct.Struct("!H")
# The usual layout of an entry's CTA_TUPLE_ORIG (TCP, UDP, SCTP...: ports), right after
# nlmsghdr and nfgenmsg, read in one unpack: the attribute headers as integers (compared
# with those of the layout at once), the addresses, the protocol, the ports (big-endian,
# read native and swapped).
FAST = {4: struct.Struct("=QI4sI4sQB3xIH2xIH2x"), 16: struct.Struct("=QI16sI16sQB3xIH2xIH2x")}


def _fast_headers(size: int, nested: int) -> tuple:
    v6 = size == 16
    ip_len = 4 + 2 * (4 + size)
    words = struct.unpack("=QIIQII", NLA.pack(4 + ip_len + 28, 1 | nested) + NLA.pack(ip_len, 1 | nested) +
                          NLA.pack(4 + size, 3 if v6 else 1) + NLA.pack(4 + size, 4 if v6 else 2) +
                          NLA.pack(28, 2 | nested) + NLA.pack(5, 1) + NLA.pack(6, 2) + NLA.pack(6, 3))
    return words


FAST_HEADERS = {size: {_fast_headers(size, nested) for nested in (NLA_NESTED, 0)} for size in FAST}


@dataclass(frozen=True)
class RawTuple:
    """An original-direction tuple as the kernel has it: addresses packed (4 or 16
    bytes), ports None for ICMP; icmp fields None for the others."""
    src: bytes
    dst: bytes
    protocol: int
    sport: Optional[int]
    dport: Optional[int]
    icmp_type: Optional[int]
    icmp_id: Optional[int]
    icmp_code: int = 0


class CtSocket:
    """One NETLINK_NETFILTER socket (root in the namespace); use as a context manager."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)          # SO_RCVBUFFORCE
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock.setsockopt(270, NETLINK_CAP_ACK, 1)                    # SOL_NETLINK: short acks
        self.sock.bind((0, 0))
        self.seq = 0
        self.buf = bytearray(1 << 20)

    def __enter__(self) -> "CtSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _header(self, msg: int, flags: int, length: int, family: int) -> bytes:
        self.seq += 1
        return HDR.pack(16 + 4 + length, CTNETLINK << 8 | msg, flags, self.seq, 0) + bytes((family, 0, 0, 0))

    def _messages(self) -> Iterator[tuple[int, int, memoryview]]:
        """(type, seq, message) of what arrives, until the caller stops."""
        view = memoryview(self.buf)
        while True:
            n = self.sock.recv_into(self.buf)
            off = 0
            while off + 16 <= n:
                length, mtype, _flags, seq, _pid = HDR.unpack_from(self.buf, off)
                if length < 16:
                    return
                yield mtype, seq, view[off:off + length]
                off += (length + 3) & ~3

    def dump(self, match: Optional[tuple[str, bytes]] = None) -> list[tuple]:
        """Every tracked connection's original tuple, IPv4 and IPv6 (one dump), as plain
        tuples (src, dst, protocol, sport, dport, icmp_type, icmp_id, icmp_code).
        `match` ("src" or "dst", packed address): only the entries whose original
        source (destination) is that address, filtered by the kernel (CTA_FILTER)."""
        body, family = (build_filter(*match), FAMILY[len(match[1])]) if match else (b"", socket.AF_UNSPEC)
        self.sock.send(self._header(CT_GET, NLM_F_REQUEST | NLM_F_DUMP, len(body), family) + body)
        out: list[tuple] = []
        buf, view = self.buf, memoryview(self.buf)
        while True:
            n = self.sock.recv_into(buf)
            off = 0
            while off + 16 <= n:
                length, mtype = HDR2.unpack_from(buf, off)
                if mtype == NLMSG_DONE or length < 16:
                    return out
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", buf, off + 16)[0]
                    if code:
                        raise OSError(code, f"conntrack dump: {os.strerror(code)}")
                    return out
                parsed = parse_fast(buf, off, length) or parse_entry(view[off:off + length])
                if parsed is not None:
                    out.append(parsed)
                off += (length + 3) & ~3

    def delete(self, tuples: Iterable[RawTuple]) -> int:
        """Delete each entry; returns how many the kernel deleted (ENOENT: already gone)."""
        pending = list(tuples)
        deleted = 0
        for start in range(0, len(pending), CHUNK):
            chunk = pending[start:start + CHUNK]
            first = self.seq + 1
            self.sock.send(b"".join(self._delete_message(t) for t in chunk))
            deleted += self._acks(first, len(chunk))
        return deleted

    def _delete_message(self, t: RawTuple) -> bytes:
        body = build_tuple_attr(t)
        family = socket.AF_INET if len(t.src) == 4 else socket.AF_INET6
        return self._header(CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, len(body), family) + body

    def _acks(self, first: int, count: int) -> int:
        ok = seen = 0
        for mtype, seq, msg in self._messages():
            if mtype != NLMSG_ERROR or not first <= seq < first + count:
                continue
            code = -struct.unpack_from("=i", msg, 16)[0]
            if code == 0:
                ok += 1
            elif code != errno.ENOENT:
                log.debug("ctnetlink: delete #%d: %s", seq - first, os.strerror(code))
            seen += 1
            if seen == count:
                return ok
        return ok


def parse_fast(buf: bytearray, off: int, length: int) -> Optional[tuple]:
    """The original tuple of the message at `off` (of `length` bytes) when it has the
    usual port layout (None: read it with `parse_entry`)."""
    size = 4 if buf[off + 16] == socket.AF_INET else 16 if buf[off + 16] == socket.AF_INET6 else 0
    if not size or length < 20 + FAST[size].size:
        return None
    h1, h2, src, h3, dst, h4, proto, h5, sport, h6, dport = FAST[size].unpack_from(buf, off + 20)
    if (h1, h2, h3, h4, h5, h6) not in FAST_HEADERS[size] or proto in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6):
        return None
    return (src, dst, proto, (sport & 0xFF) << 8 | sport >> 8, (dport & 0xFF) << 8 | dport >> 8, None, None, 0)


def _attrs(buf: memoryview, off: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of the attributes in [off, end)."""
    while off + 4 <= end:
        length, atype = NLA.unpack_from(buf, off)
        if length < 4:
            return
        yield atype & NLA_TYPE_MASK, off + 4, off + length
        off += (length + 3) & ~3


def parse_entry(msg: memoryview) -> Optional[tuple]:
    """The original tuple of one IPCTNL_MSG_CT_NEW message (None: it has none)."""
    for atype, start, end in _attrs(msg, 20, len(msg)):
        if atype == CTA_TUPLE_ORIG:
            return parse_tuple(msg, start, end)
    return None


def parse_tuple(msg: memoryview, start: int, end: int) -> Optional[tuple]:
    src = dst = b""
    fields: dict[int, int] = {}
    proto = -1
    for atype, s, e in _attrs(msg, start, end):
        if atype == CTA_TUPLE_IP:
            for t, a, b in _attrs(msg, s, e):
                if t in (1, 3):
                    src = bytes(msg[a:b])
                elif t in (2, 4):
                    dst = bytes(msg[a:b])
        elif atype == CTA_TUPLE_PROTO:
            for t, a, b in _attrs(msg, s, e):
                if t == 1:
                    proto = msg[a]
                else:
                    fields[t] = msg[a] if b - a == 1 else U16.unpack_from(msg, a)[0]
    if not src or not dst or proto < 0:
        return None
    if proto in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6):
        ident, typ, code = ICMP_ATTRS[proto == socket.IPPROTO_ICMPV6]
        return (src, dst, proto, None, None, fields.get(typ), fields.get(ident), fields.get(code, 0))
    return (src, dst, proto, fields.get(2), fields.get(3), None, None, 0)


def _nla(atype: int, payload: bytes) -> bytes:
    pad = (-len(payload)) % 4
    return NLA.pack(4 + len(payload), atype) + payload + b"\0" * pad


def build_tuple_attr(t: RawTuple) -> bytes:
    """CTA_TUPLE_ORIG of a delete request (ports, or ICMP id/type/code)."""
    v6 = len(t.src) == 16
    ip = _nla(CTA_TUPLE_IP | NLA_NESTED, _nla(3 if v6 else 1, t.src) + _nla(4 if v6 else 2, t.dst))
    proto = _nla(1, bytes((t.protocol,)))
    if t.protocol in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6):
        ident, typ, code = ICMP_ATTRS[t.protocol == socket.IPPROTO_ICMPV6]
        proto += _nla(ident, U16.pack(t.icmp_id or 0)) + _nla(typ, bytes((t.icmp_type or 0,))) + \
            _nla(code, bytes((t.icmp_code,)))
    elif t.sport is not None and t.dport is not None:
        proto += _nla(2, U16.pack(t.sport)) + _nla(3, U16.pack(t.dport))
    return _nla(CTA_TUPLE_ORIG | NLA_NESTED, ip + _nla(CTA_TUPLE_PROTO | NLA_NESTED, proto))


def build_filter(which: str, packed: bytes) -> bytes:
    """The attributes of a dump request for the entries whose original `which` ("src"
    or "dst") address is `packed`: the value in CTA_TUPLE_ORIG, the field in CTA_FILTER."""
    v6 = len(packed) == 16
    attr = {("src", False): 1, ("dst", False): 2, ("src", True): 3, ("dst", True): 4}[(which, v6)]
    tuple_attr = _nla(CTA_TUPLE_ORIG | NLA_NESTED, _nla(CTA_TUPLE_IP | NLA_NESTED, _nla(attr, packed)))
    flags = _nla(CTA_FILTER_ORIG_FLAGS, struct.pack("=I", FILTER_FLAG[which])) + \
        _nla(CTA_FILTER_REPLY_FLAGS, struct.pack("=I", 0))
    return tuple_attr + _nla(CTA_FILTER | NLA_NESTED, flags)
