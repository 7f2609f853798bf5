"""Set-element changes over netlink (NETLINK_NETFILTER) in ONE nfnetlink batch: one
transaction, all deletions then all additions, committed or aborted whole; a few ms
whatever the table size (libnftables 1.0.6 first fetches the table's elements).
Encoding as libnftnl's (checked against strace / `nft --debug=mnl` of nft 1.0.6):
concatenations (pipapo): KEY = the fields' starts, KEY_END = their ends, each field
padded to 4 bytes. Single fields (rbtree; key unpadded): [lo, hi] is KEY=lo plus KEY=hi+1
flagged INTERVAL_END (adjacent intervals: an end and the next start share a key); if hi
is the maximum, no end element and the start carries libnftnl's F_INTERVAL_OPEN userdata.
(libnftables also puts an end element at key 0 into a set it fills while empty: it
matches nothing, the kernel does not need it, and we cannot know the set is empty.)
Additions are NLM_F_EXCL (without it an rbtree interval whose end element exists, an
overlap, is accepted). The kernel (6.18) refuses overlaps in rbtree sets, in pipapo ones
only when the new start or end lies in an element; a pipapo delete removes the element
CONTAINING the start key. libnftables checks these against its cache: here the caller's
`removed` and `added` must be exact (the agent's diff of what it applied).
"""
from __future__ import annotations

import bisect
import ipaddress
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence

from agent.errors import KernelError
from agent.compiler.transaction import ElementChange
from agent.kernel import netlink
from agent.kernel.netlink import (FAMILY_NUMBERS as FAMILIES, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END,
                                  NFNL_SUBSYS_NFTABLES, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
                                  NLMSG_ERROR, attr as _attr, header as _header, nest as _nest)
from agent.kernel.nft import committing

log = logging.getLogger(__name__)

FIELD_BYTES = {"ipv4_addr": 4, "ipv6_addr": 16, "inet_proto": 1, "inet_service": 2}
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
LIST_TABLE, LIST_SET, LIST_ELEMENTS, LIST_ELEM = 1, 2, 3, 1
ELEM_KEY, ELEM_FLAGS, ELEM_USERDATA, ELEM_KEY_END, DATA_VALUE, ELEM_INTERVAL_END = 1, 3, 6, 10, 1, 1
# libnftnl userdata TLV: NFTNL_UDATA_SET_ELEM_FLAGS (1), length 4, F_INTERVAL_OPEN (1) host order
OPEN_INTERVAL_UDATA = bytes([1, 4]) + struct.pack("=I", 1)
MAX_ELEMENTS_BYTES = 60_000        # per message: the elements attribute has a u16 length
TIMEOUT = 5.0


SET_ELEM_DATA, DATA_VERDICT, VERDICT_CODE, VERDICT_CHAIN = 2, 2, 1, 2
VERDICT_CODES = {"accept": 1, "drop": 0, "jump": -3, "goto": -4}   # NF_ACCEPT, NF_DROP, NFT_JUMP, NFT_GOTO
CHAIN_NAME_MAX = 255                                     # NFT_CHAIN_MAXNAMELEN - 1


def supported(set_type: str, interval: bool, map_to: Optional[str]) -> bool:
    """Whether commit_element_changes can encode the elements of this set: interval sets,
    and verdict maps (accept, drop, `goto`/`jump` a chain) keyed by a concatenation
    (pipapo) or by exact keys (hash), as the compiler's region, member-path and points
    maps are."""
    fields = [f.strip() for f in set_type.split(".")]
    if not all(f in FIELD_BYTES for f in fields):
        return False
    if map_to is None:
        return interval
    return map_to == "verdict" and (len(fields) > 1 or not interval)


def _field_range(kind: str, text: str) -> tuple[int, int]:
    """One field ("10.0.0.0-10.0.0.255", "fd00::5", "6", "1000-2000") as [lo, hi]."""
    if kind in ("ipv4_addr", "ipv6_addr"):
        bounds = [ipaddress.ip_address(t) for t in text.split("-", 1)]
        if any(b.version != (4 if kind == "ipv4_addr" else 6) for b in bounds):
            raise ValueError(f"{text!r} is not an {kind}")
        lo, hi = int(bounds[0]), int(bounds[-1])
    else:
        lo_text, _, hi_text = text.partition("-")
        lo, hi = int(lo_text), int(hi_text or lo_text)
    if not 0 <= lo <= hi < 1 << (8 * FIELD_BYTES[kind]):
        raise ValueError(f"{text!r} is not a {kind} range")
    return lo, hi


def _value(kind: str, value: int, padded: bool) -> bytes:
    size = FIELD_BYTES[kind]
    return value.to_bytes(size, "big") + (bytes(-size % 4) if padded else b"")


def _data(kind: int, value: bytes) -> bytes:
    return _nest(kind, _attr(DATA_VALUE, value))


def _verdict(text: str, verdict: str) -> list[bytes]:
    """NFTA_VERDICT_CODE (and NFTA_VERDICT_CHAIN, NUL-terminated, for goto and jump), as
    libnftnl writes them."""
    code, _, chain = verdict.partition(" ")
    if code not in VERDICT_CODES or bool(chain) != (code in ("goto", "jump")):
        raise ValueError(f"element {text!r}: verdict {verdict!r} is not accept, drop, goto CHAIN or jump CHAIN")
    out = [_attr(VERDICT_CODE, struct.pack(">i", VERDICT_CODES[code]))]
    if chain:
        name = chain.encode()
        if len(name) > CHAIN_NAME_MAX or not chain.isprintable() or " " in chain:
            raise ValueError(f"element {text!r}: bad chain name {chain!r}")
        out.append(_attr(VERDICT_CHAIN, name + b"\0"))
    return out


def encode_element(set_type: str, text: str, map_to: Optional[str] = None, interval: bool = True,
                   with_data: bool = True) -> list[bytes]:
    """The NFTA_LIST_ELEM attributes of one element text of a set (or of a verdict map:
    `key : accept|drop|goto CHAIN|jump CHAIN`, its verdict as NFTA_SET_ELEM_DATA unless
    `with_data` is false, as libnftnl leaves it out of deletions)."""
    data = b""
    if map_to == "verdict" and (with_data or " : " in text):     # deletions may name the key alone
        text, _, verdict = text.rpartition(" : ")
        if with_data:
            data = _nest(SET_ELEM_DATA, _nest(DATA_VERDICT, *_verdict(text, verdict)))
    kinds = [f.strip() for f in set_type.split(".")]
    parts = [p.strip() for p in text.split(" . ")]
    if len(parts) != len(kinds):
        raise ValueError(f"element {text!r} does not match type {set_type!r}")
    ranges = [_field_range(k, p) for k, p in zip(kinds, parts)]
    padded = len(kinds) > 1
    if not interval:                                      # hash: one exact key
        if any(lo != hi for lo, hi in ranges):
            raise ValueError(f"element {text!r}: a range in a set without intervals")
        key = b"".join(_value(k, lo, padded) for k, (lo, _hi) in zip(kinds, ranges))
        return [_nest(LIST_ELEM, _data(ELEM_KEY, key), data)]
    if len(kinds) > 1:                                    # pipapo: start and end keys
        start = b"".join(_value(k, lo, True) for k, (lo, _hi) in zip(kinds, ranges))
        end = b"".join(_value(k, hi, True) for k, (_lo, hi) in zip(kinds, ranges))
        return [_nest(LIST_ELEM, _data(ELEM_KEY, start), _data(ELEM_KEY_END, end), data)]
    (kind,), ((lo, hi),) = kinds, ranges                   # rbtree: start + end elements
    if hi + 1 == 1 << (8 * FIELD_BYTES[kind]):            # open interval: no end element
        return [_nest(LIST_ELEM, _data(ELEM_KEY, _value(kind, lo, False)),
                      _attr(ELEM_USERDATA, OPEN_INTERVAL_UDATA))]
    return [_nest(LIST_ELEM, _data(ELEM_KEY, _value(kind, lo, False))),
            _nest(LIST_ELEM, _attr(ELEM_FLAGS, struct.pack(">I", ELEM_INTERVAL_END)),
                  _data(ELEM_KEY, _value(kind, hi + 1, False)))]


@dataclass
class _Sent:
    """One element message of a batch: its set, its elements, their texts by offset."""
    set_name: str
    verb: str
    offsets: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    parts: list[bytes] = field(default_factory=list)
    size: int = 0

    def describe(self, offset: Optional[int]) -> str:
        at = bisect.bisect_right(self.offsets, offset) - 1 if offset is not None else -1
        what = f"{self.texts[at]!r}" if at >= 0 else f"{len(self.texts)} element(s)"
        return f"{self.verb} {what} in set {self.set_name}"


def _messages(change: ElementChange, delete: bool, seq: int) -> list[tuple[bytes, _Sent]]:
    """The messages (each < 64 KB) deleting or adding the elements of one set."""
    family, name = FAMILIES[change.family], change.set.name
    mtype = (NFNL_SUBSYS_NFTABLES << 8) | (NFT_MSG_DELSETELEM if delete else NFT_MSG_NEWSETELEM)
    flags = NLM_F_REQUEST | NLM_F_ACK | (0 if delete else NLM_F_CREATE | NLM_F_EXCL)
    head = _attr(LIST_TABLE, change.table.encode() + b"\0") + _attr(LIST_SET, name.encode() + b"\0")
    verb = "deleting" if delete else "adding"
    chunks = [_Sent(name, verb)]
    for text in change.removed if delete else change.added:
        encoded = encode_element(change.set.type, text, change.set.map_to, change.set.interval, not delete)
        need = sum(len(e) for e in encoded)
        if chunks[-1].size + need > MAX_ELEMENTS_BYTES and chunks[-1].texts:
            chunks.append(_Sent(name, verb))
        last = chunks[-1]
        last.offsets.append(24 + len(head) + last.size)      # after nlmsghdr, nfgenmsg, nest
        last.texts.append(text)
        last.parts += encoded
        last.size += need
    bodies = [(head + _nest(LIST_ELEMENTS, *c.parts), c) for c in chunks if c.texts]
    return [(_header(mtype, flags, seq + i, family, 0, len(body)) + body, c)
            for i, (body, c) in enumerate(bodies)]


class Describes(Protocol):
    """What a message of a batch did, for the error naming the refused one (`offset`:
    where in it the kernel says the refused attribute starts, or None)."""
    def describe(self, offset: Optional[int]) -> str: ...


def element_messages(changes: Sequence[ElementChange], seq: int) -> list[tuple[bytes, _Sent]]:
    """All deletions, then all additions, numbered from `seq`; ValueError for a set whose
    elements it cannot encode."""
    for change in changes:
        if not supported(change.set.type, change.set.interval, change.set.map_to):
            raise ValueError(f"set {change.set.name}: cannot encode elements of {change.set.type!r}")
    msgs: list[tuple[bytes, _Sent]] = []
    for delete in (True, False):
        for change in changes:
            msgs += _messages(change, delete, seq + len(msgs))
    return msgs


def frame(messages: Sequence[bytes], seq: int) -> bytes:
    """BATCH_BEGIN (sequence number `seq`), the messages (seq + 1...), BATCH_END."""
    begin = _header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, 0)
    end = _header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 1 + len(messages), 0, NFNL_SUBSYS_NFTABLES, 0)
    return begin + b"".join(messages) + end


def build_batch(changes: Sequence[ElementChange], seq: int = 1) -> tuple[bytes, dict[int, _Sent]]:
    """BATCH_BEGIN, all deletions, all additions, BATCH_END; and the messages by seq."""
    msgs = element_messages(changes, seq + 1)
    return frame([m for m, _ in msgs], seq), {seq + 1 + i: s for i, (_, s) in enumerate(msgs)}


def _replies(data: bytes) -> list[tuple[int, int, Optional[int]]]:
    """(seq, errno, offset of the refused attribute or None) of each NLMSG_ERROR."""
    return [(m.seq, netlink.error_code(m), netlink.error_offset(m)) for m in netlink.messages(data)
            if m.kind == NLMSG_ERROR and len(m.payload) >= 4 + netlink.NLMSG_HDRLEN]


class _Channel:
    """The netlink socket, kept open as libnftables keeps its own: closing one right after
    a commit waits for the kernel's RCU grace period (10-20 ms: nft_rcv_nl_event flushes
    the transaction's destroy work). Used only within agent.kernel.nft.committing()."""
    sock: Optional[socket.socket] = None
    seq = 0


def _talk(batch: bytes, expected: set[int]) -> dict[int, tuple[int, Optional[int]]]:
    """Send the batch in one sendto (one transaction); collect the answer to each message."""
    if _Channel.sock is None:
        _Channel.sock = netlink.open_socket(extended_acks=True)
    sock = _Channel.sock
    netlink.set_buffers(sock, len(batch) + (1 << 20))
    sock.settimeout(0.0)
    try:
        while sock.recv(65536):      # answers to an abandoned batch
            pass
    except BlockingIOError:
        pass
    sock.settimeout(TIMEOUT)
    sock.sendto(batch, (0, 0))
    answers: dict[int, tuple[int, Optional[int]]] = {}
    while not expected <= answers.keys():
        if any(err for err, _off in answers.values()):
            sock.settimeout(0.0)           # the kernel answered the whole batch during sendto
        try:
            data = sock.recv(65536)
        except (BlockingIOError, socket.timeout):
            break
        answers.update((seq, (err, off)) for seq, err, off in _replies(data))
    return answers


def commit_element_changes(changes: Sequence[ElementChange]) -> float:
    """Commit all element changes (agent.compiler.transaction.plan_element_changes) as one
    transaction; returns the seconds it took. Raises KernelError (and nothing changed)
    when the kernel refuses any of them, ValueError for a set it cannot encode."""
    if not any(c.removed or c.added for c in changes):
        return 0.0
    where = ", ".join(sorted({f"{c.family} {c.table}" for c in changes}))
    return commit_messages(lambda seq: list(element_messages(changes, seq)), where, "element changes")


def commit_messages(build: Callable[[int], list[tuple[bytes, Describes]]], where: str, what: str) -> float:
    """Commit the messages `build(first seq)` makes as ONE batch (one transaction, all or
    nothing); returns the seconds the kernel took. KernelError naming each refused
    message when the kernel refuses (nothing changed); `build`'s ValueError passes.
    The kernel answers a message with NLM_F_ACK always, any other only when it refuses
    it, all before sendto returns and in order: the last message must ask for an ACK."""
    with committing():
        _Channel.seq = _Channel.seq % 0x7fff + 1
        seq = _Channel.seq << 16
        msgs = build(seq + 1)
        batch = frame([m for m, _ in msgs], seq)
        sent = {seq + 1 + i: d for i, (_, d) in enumerate(msgs)}
        acked = {seq + 1 + i for i, (m, _) in enumerate(msgs) if struct.unpack_from("=H", m, 6)[0] & NLM_F_ACK}
        try:
            start = time.monotonic()
            answers = _talk(batch, acked)
            took = time.monotonic() - start
        except OSError as exc:
            if _Channel.sock is not None:
                _Channel.sock.close()
            _Channel.sock = None
            raise KernelError(f"netlink commit of the {what} in {where} failed: {exc}") from exc
    refused = [f"{sent[seq].describe(off) if seq in sent else 'the batch'}: {os.strerror(err)} "
               f"(errno {err})" for seq, (err, off) in sorted(answers.items()) if err]
    if refused:
        raise KernelError(f"the kernel refused the {what} in {where} "
                          f"(nothing was changed): {'; '.join(refused)}")
    if not acked <= answers.keys():
        raise KernelError(f"no answer from the kernel to the {what} in {where}")
    log.debug("%s in %s committed in %.4fs (%d messages, %d bytes)", what, where, took, len(sent), len(batch))
    return took
