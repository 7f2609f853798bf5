"""The one nfnetlink codec: netlink messages and attributes to and from bytes, and the
netfilter socket. Pure except `open_socket`/`set_buffers`; used by agent.kernel.elements (set
element batches) and agent.kernel.monitor (change notifications, generation, table dump).

A message is nlmsghdr (16 bytes) + nfgenmsg (4 bytes: family, version, res_id big-endian)
+ attributes (type-length-value, each padded to 4 bytes).
"""
from __future__ import annotations

import errno
import select
import socket
import struct
from typing import Iterator, NamedTuple, Optional

NETLINK_NETFILTER = 12
SOL_NETLINK, NETLINK_CAP_ACK, NETLINK_EXT_ACK = 270, 10, 11
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33          # socket(7): may exceed rmem_max (root)
NFNL_SUBSYS_NFTABLES, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 10, 0x10, 0x11
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
NLM_F_ACK_TLVS, NLMSGERR_ATTR_OFFS, NLA_F_NESTED = 0x200, 2, 0x8000
NLMSG_HDRLEN, NFGENMSG_LEN = 16, 4
FAMILY_NUMBERS = {"ip": 2, "ip6": 10, "inet": 1, "arp": 3, "bridge": 7, "netdev": 5}
FAMILY_NAMES = {number: name for name, number in FAMILY_NUMBERS.items()}


class Message(NamedTuple):
    """One received netlink message: its type, flags, sequence number and what follows
    the 16-byte header."""
    kind: int
    flags: int
    seq: int
    payload: bytes


# -- encoding ---------------------------------------------------------------------------
_TLV_HEAD = struct.Struct("=HH").pack
_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")              # by size % 4: to the next multiple of 4


def attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return _TLV_HEAD(size, kind) + payload + _PADS[size & 3]


def nest(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(parts))


def header(mtype: int, flags: int, seq: int, family: int, res_id: int, size: int) -> bytes:
    """nlmsghdr + nfgenmsg of a message with `size` bytes after them."""
    return struct.pack("=IHHIIBB", NLMSG_HDRLEN + NFGENMSG_LEN + size, mtype, flags, seq, 0, family, 0) \
        + res_id.to_bytes(2, "big")


def nftables_request(msg: int, flags: int, seq: int = 1, family: int = socket.AF_UNSPEC) -> bytes:
    """An nf_tables request without attributes (a get or a dump)."""
    return header(NFNL_SUBSYS_NFTABLES << 8 | msg, NLM_F_REQUEST | flags, seq, family, 0, 0)


# -- decoding ---------------------------------------------------------------------------
def messages(data: bytes) -> Iterator[Message]:
    off = 0
    while off + NLMSG_HDRLEN <= len(data):
        length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < NLMSG_HDRLEN:
            return
        yield Message(kind, flags, seq, data[off + NLMSG_HDRLEN:off + length])
        off += (length + 3) & ~3


def attrs(payload: bytes) -> Iterator[tuple[int, bytes]]:
    """(type without the nested/byte-order bits, value) of each attribute."""
    off = 0
    while off + 4 <= len(payload):
        length, kind = struct.unpack_from("=HH", payload, off)
        if length < 4:
            return
        yield kind & 0x3FFF, payload[off + 4:off + length]
        off += (length + 3) & ~3


def nft_attrs(payload: bytes) -> dict[int, bytes]:
    """The attributes of an nf_tables message (after its nfgenmsg)."""
    return dict(attrs(payload[NFGENMSG_LEN:]))


def family_of(payload: bytes) -> str:
    return FAMILY_NAMES.get(payload[0], str(payload[0]))


def string(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode(errors="replace")


def u32(value: bytes) -> int:
    """A big-endian 32-bit attribute (0 when short)."""
    return struct.unpack(">I", value[:4].rjust(4, b"\0"))[0]


def error_code(message: Message) -> int:
    """The errno of an NLMSG_ERROR (0: an acknowledgement)."""
    return -struct.unpack_from("=i", message.payload)[0]


def error_offset(message: Message) -> Optional[int]:
    """NLMSGERR_ATTR_OFFS of an extended ack: where in the request the refused attribute
    starts (None when the kernel did not say). The request's header is not echoed
    (NETLINK_CAP_ACK), so the TLVs follow errno + that header."""
    if not message.flags & NLM_F_ACK_TLVS:
        return None
    tlvs = message.payload[4 + NLMSG_HDRLEN:]
    for kind, value in attrs(tlvs):
        if kind == NLMSGERR_ATTR_OFFS and len(value) >= 4:
            return struct.unpack_from("=I", value)[0]
    return None


# -- the socket ---------------------------------------------------------------------------
def open_socket(groups: int = 0, extended_acks: bool = False) -> socket.socket:
    """A netfilter netlink socket bound to the multicast `groups` (a bit mask); with
    `extended_acks`, errors do not echo the request but point at the refused attribute."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    if extended_acks:
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
    sock.bind((0, groups))
    return sock


def set_buffers(sock: socket.socket, size: int, send: bool = True) -> None:
    """Receive (and send) buffers of `size` bytes: forced past the sysctl limits where
    allowed (root), else as large as they allow."""
    pairs = [(SO_RCVBUFFORCE, socket.SO_RCVBUF)]
    if send:
        pairs.insert(0, (SO_SNDBUFFORCE, socket.SO_SNDBUF))
    for force, plain in pairs:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


def drain(sock: socket.socket, timeout: float) -> tuple[list[bytes], int]:
    """What a subscribed socket holds after waiting up to `timeout` seconds for the
    first message: the datagrams read without blocking, and how many reads failed with
    ENOBUFS (the kernel could not queue some messages: an overrun, counted, not raised)."""
    ready, _, _ = select.select([sock], [], [], timeout)
    batches: list[bytes] = []
    overruns = 0
    while ready:
        try:
            batches.append(sock.recv(1 << 20, socket.MSG_DONTWAIT))
        except BlockingIOError:
            break
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            overruns += 1
    return batches, overruns
