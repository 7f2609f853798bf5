"""Conntrack events and full dumps for flow records: a netlink socket on the
NFNLGRP_CONNTRACK_NEW and _DESTROY groups, each message decoded with the tuples, mark,
counters and timestamps (agent.kernel.ctnetlink reads only the original tuple: revocation
needs no more).

    with CtEvents() as events:
        for e in events.read(timeout=1.0): ...    # CtEvent: "new" | "update" | "destroy"
        events.overruns                             # ENOBUFS: events the kernel could not queue
    dump_entries() -> list[CtEvent]                 # every entry now ("update"), for long flows

Periodic records of long connections come from a dump every N seconds, not from
NFNLGRP_CONNTRACK_UPDATE: the kernel sends updates on state and mark changes, never on
counter growth, so updates carry no news a flow record needs, and subscribing would add
an event per TCP state change.

Counters need `net.netfilter.nf_conntrack_acct=1` and start/stop times
`nf_conntrack_timestamp=1` (both per network namespace, both for connections created
after they are set: `enable_accounting`). Without them the fields are None.

Loss: events are queued in the socket's receive buffer; when it is full the kernel drops
them and the next recv fails with ENOBUFS, counted here as one overrun (the number of
events lost is not known: conntrack events carry no sequence number).
"""
from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from agent.kernel import netlink
from agent.kernel.ctnetlink import CT_GET, CTNETLINK, NLM_F_DUMP, CtSocket, _attrs, parse_tuple

NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY = 1, 2, 3
CT_NEW, CT_DELETE = 0, 2
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_MARK = 1, 2, 3, 8
CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_ID, CTA_TIMESTAMP = 9, 10, 12, 20
NLM_F_CREATE = 0x400
RCVBUF = 8 << 20
SYSCTLS = ("nf_conntrack_acct", "nf_conntrack_timestamp")


@dataclass(frozen=True)
class CtEvent:
    """One conntrack message. Tuples as ctnetlink.parse_tuple gives them (src, dst,
    protocol, sport, dport, icmp_type, icmp_id, icmp_code; addresses packed);
    counters (packets, bytes) per direction and start/stop (seconds since the epoch)
    None when the kernel does not keep them."""
    kind: str
    id: int
    orig: Optional[tuple]
    reply: Optional[tuple]
    mark: int = 0
    status: int = 0
    counters_orig: Optional[tuple[int, int]] = None
    counters_reply: Optional[tuple[int, int]] = None
    start: Optional[float] = None
    stop: Optional[float] = None


def parse_event(msg: memoryview) -> Optional[CtEvent]:
    """A whole ctnetlink message (nlmsghdr included) as a CtEvent (None: not a CT one)."""
    mtype, flags = struct.unpack_from("=HH", msg, 4)
    if mtype >> 8 != CTNETLINK or mtype & 0xFF not in (CT_NEW, CT_DELETE):
        return None
    kind = "destroy" if mtype & 0xFF == CT_DELETE else "new" if flags & NLM_F_CREATE else "update"
    fields: dict = {}
    for atype, start, end in _attrs(msg, 20, len(msg)):
        if atype in (CTA_TUPLE_ORIG, CTA_TUPLE_REPLY):
            fields[atype] = parse_tuple(msg, start, end)
        elif atype in (CTA_STATUS, CTA_MARK, CTA_ID) and end - start >= 4:
            fields[atype] = struct.unpack_from(">I", msg, start)[0]
        elif atype in (CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_TIMESTAMP):
            fields[atype] = _u64s(msg, start, end)
    times = fields.get(CTA_TIMESTAMP, {})
    return CtEvent(kind, fields.get(CTA_ID, 0), fields.get(CTA_TUPLE_ORIG), fields.get(CTA_TUPLE_REPLY),
                   fields.get(CTA_MARK, 0), fields.get(CTA_STATUS, 0),
                   _pair(fields.get(CTA_COUNTERS_ORIG)), _pair(fields.get(CTA_COUNTERS_REPLY)),
                   times[1] / 1e9 if 1 in times else None, times[2] / 1e9 if 2 in times else None)


def _u64s(msg: memoryview, start: int, end: int) -> dict[int, int]:
    return {t: struct.unpack_from(">Q", msg, a)[0] for t, a, b in _attrs(msg, start, end) if b - a >= 8}


def _pair(values: Optional[dict[int, int]]) -> Optional[tuple[int, int]]:
    return (values.get(1, 0), values.get(2, 0)) if values else None


def parse_buffer(data: bytes) -> list[CtEvent]:
    view = memoryview(data)
    out = []
    off = 0
    while off + 16 <= len(data):
        length = struct.unpack_from("=I", data, off)[0]
        if length < 16:
            break
        e = parse_event(view[off:off + length])
        if e is not None:
            out.append(e)
        off += (length + 3) & ~3
    return out


class CtEvents:
    """Subscribed to new and destroyed connections of this network namespace."""

    def __init__(self, rcvbuf: int = RCVBUF, updates: bool = False) -> None:
        groups = 1 << (NFNLGRP_CONNTRACK_NEW - 1) | 1 << (NFNLGRP_CONNTRACK_DESTROY - 1)
        if updates:
            groups |= 1 << (NFNLGRP_CONNTRACK_UPDATE - 1)
        self._sock = netlink.open_socket(groups=groups)
        netlink.set_buffers(self._sock, rcvbuf, send=False)
        self.overruns = 0

    def __enter__(self) -> "CtEvents":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, timeout: float) -> list[CtEvent]:
        batches, overruns = netlink.drain(self._sock, timeout)
        self.overruns += overruns
        out: list[CtEvent] = []
        for data in batches:
            out += parse_buffer(data)
        return out

    def close(self) -> None:
        self._sock.close()


def dump_entries() -> list[CtEvent]:
    """Every tracked connection of both families, fully decoded (kind "update")."""
    sock = netlink.open_socket()
    try:
        netlink.set_buffers(sock, RCVBUF, send=False)
        sock.send(netlink.header(CTNETLINK << 8 | CT_GET, netlink.NLM_F_REQUEST | NLM_F_DUMP, 1,
                                 socket.AF_UNSPEC, 0, 0))
        out: list[CtEvent] = []
        while True:
            data = sock.recv(1 << 20)
            out += parse_buffer(data)
            for m in netlink.messages(data):
                if m.kind == netlink.NLMSG_DONE:
                    return out
                if m.kind == netlink.NLMSG_ERROR:
                    code = netlink.error_code(m)
                    if code:
                        raise OSError(code, f"conntrack dump: {errno.errorcode.get(code, code)}")
                    return out
    finally:
        sock.close()


NO_ADDRESS = b"\xff\xff\xff\xff"     # no connection's source: the reaping dump returns nothing


def reap_expired() -> None:
    """Make the kernel report connections that ended but are still in its table.

    A closed connection's entry expires (TIME_WAIT, CLOSE, a UDP timeout) without an
    event: the kernel sends DESTROY only when its garbage collector or a lookup finds
    it, and on a quiet host the collector's scan interval grows to a minute, so a flow
    record would come that late. A conntrack dump evicts the expired entries it walks
    (ctnetlink_dump_table), which sends their DESTROY events now; filtered by the kernel
    on a source no connection has (CTA_FILTER), it returns nothing to decode. The
    recorder calls it every few seconds (RecordOptions.reap_every)."""
    with CtSocket() as ct:
        ct.dump(("src", NO_ADDRESS))


def enable_accounting(root: Path = Path("/proc/sys/net/netfilter")) -> list[str]:
    """Turn on per-connection counters and timestamps in this network namespace; the
    sysctls that could not be set (missing module, read-only /proc/sys)."""
    failed = []
    for name in SYSCTLS:
        try:
            (root / name).write_text("1\n")
        except OSError:
            failed.append(name)
    return failed
