"""The nftables change-notification boundary: a netlink socket on NFNLGRP_NFTABLES
(what `nft monitor` reads), with the standard library only.

    watch = TableWatch({("inet", "secgroup_agent")}, on_foreign, on_overflow)
    watch.start() ... watch.close()
    ruleset_generation() -> int            the kernel's ruleset generation id
    table_names() -> set[(family, name)]   every nftables table (cheap: no elements)

The kernel sends one message per changed object (table, chain, rule, set, element), then
NFT_MSG_NEWGEN naming the generation, the process id and the command of whoever
committed. Messages are collected per transaction; at NEWGEN, if any touched one of the
watched tables and the committer is not a thread of this process (the agent's own
transactions), `on_foreign(description, objects)` is called: `objects` are the chains
and sets touched, as (family, table, kind, name) with kind "chain" or "set" (a rule's
chain, an element's set), or None when a table itself (or an object of another kind)
was touched, so only a full replace can repair it. A socket overrun (ENOBUFS: the
kernel dropped notifications, e.g. during a very large transaction) calls
`on_overflow()`: the caller must then verify the tables itself.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from typing import Callable, Iterator, Optional

from agent.kernel import netlink
from agent.kernel.netlink import NFNL_SUBSYS_NFTABLES, NLM_F_DUMP, NLMSG_DONE, NLMSG_ERROR

log = logging.getLogger(__name__)

NFNLGRP_NFTABLES = 7
NFT_MSG_NEWGEN, NFT_MSG_GETGEN = 15, 16
NFTA_GEN_ID, NFTA_GEN_PROC_PID, NFTA_GEN_PROC_NAME = 1, 2, 3
NFT_MSG_GETTABLE, NFTA_TABLE_NAME = 1, 1
_NAMES = {0: "add table", 2: "delete table", 3: "add chain", 5: "delete chain", 6: "add rule",
          8: "delete rule", 9: "add set", 11: "delete set", 12: "add element", 14: "delete element"}
# per message type: (kind, the attribute naming the object); attribute 1 is the table
_OBJECTS = {3: ("chain", 3), 5: ("chain", 3), 6: ("chain", 2), 8: ("chain", 2),
            9: ("set", 2), 11: ("set", 2), 12: ("set", 2), 14: ("set", 2)}


def is_own_thread(pid: int) -> bool:
    return os.path.exists(f"/proc/self/task/{pid}")


def is_own_commit(pid: int, comm: str) -> bool:
    """This process committed it: by thread id where pids are ours to see, else by the
    thread name every commit is made under (agent.kernel.nft.COMMIT_COMM) - in a container the
    kernel reports the host's pid, which /proc/self cannot match."""
    from agent.kernel.nft import COMMIT_COMM
    return comm == COMMIT_COMM or is_own_thread(pid)


class TableWatch:
    def __init__(self, tables: set[tuple[str, str]], on_foreign: Callable[[str, Optional[frozenset]], None],
                 on_overflow: Callable[[], None], rcvbuf: int = 8 << 20) -> None:
        self.tables = set(tables)
        self.on_foreign = on_foreign
        self.on_overflow = on_overflow
        self._sock = netlink.open_socket(groups=1 << (NFNLGRP_NFTABLES - 1))
        netlink.set_buffers(self._sock, rcvbuf, send=False)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._touched: list[str] = []
        self._objects: Optional[set[tuple[str, str, str, str]]] = set()

    def start(self) -> None:
        self._sock.settimeout(1.0)
        self._thread = threading.Thread(target=self._run, name="nft-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                if exc.errno == errno.ENOBUFS:
                    self._touched.clear()
                    self._objects = set()
                    log.warning("nftables notifications overran (ENOBUFS); tables will be verified")
                    self.on_overflow()
                    continue
                raise
            for message in netlink.messages(data):
                self.handle(message.kind, message.payload)

    def handle(self, kind: int, payload: bytes) -> None:
        """One netlink message (header stripped): collect, or judge the transaction."""
        if kind >> 8 != NFNL_SUBSYS_NFTABLES or len(payload) < 4:
            return
        msg, family = kind & 0xFF, netlink.family_of(payload)
        attrs = netlink.nft_attrs(payload)
        if msg == NFT_MSG_NEWGEN:
            touched, self._touched = self._touched, []
            objects, self._objects = self._objects, set()
            pid = netlink.u32(attrs.get(NFTA_GEN_PROC_PID, b""))
            comm = netlink.string(attrs.get(NFTA_GEN_PROC_NAME, b"?"))
            if touched and not is_own_commit(pid, comm):
                what = ", ".join(dict.fromkeys(touched))
                self.on_foreign(f"{comm}[{pid}]: {what}", None if objects is None else frozenset(objects))
            return
        table = netlink.string(attrs.get(NFTA_TABLE_NAME, b""))
        if (family, table) not in self.tables:
            return
        obj_kind, name_attr = _OBJECTS.get(msg, (None, 0))
        name = netlink.string(attrs.get(name_attr, b"")) if obj_kind else ""
        if obj_kind is None or not name:
            self._objects = None
        elif self._objects is not None:
            self._objects.add((family, table, obj_kind, name))
        if len(self._touched) < 64:
            self._touched.append(f"{_NAMES.get(msg, f'msg {msg}')} {family} {table}" + (f" {name}" if name else ""))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._sock.close()


def _request(msg: int, flags: int, sock: Optional[socket.socket] = None) -> Iterator[bytes]:
    """Send one nf_tables request; yield the payload of each answer. On `sock` (kept by
    the caller) or a socket of its own."""
    if sock is None:
        with netlink.open_socket() as own:
            own.settimeout(2.0)
            yield from _request(msg, flags, own)
        return
    sock.send(netlink.nftables_request(msg, flags))
    while True:
        for message in netlink.messages(sock.recv(1 << 16)):
            if message.kind == NLMSG_DONE:
                return
            if message.kind == NLMSG_ERROR:
                code = netlink.error_code(message)
                if code:
                    raise OSError(code, os.strerror(code))
                return
            yield message.payload
        if not flags & NLM_F_DUMP:
            return


class _GenSocket:
    """One socket kept for the generation query, asked before and after every commit:
    closing a netlink socket right after a commit waits for the kernel's RCU grace
    period (3 -> 13-17 ms per query at 1,000 x 100, agent.kernel.elements._Channel)."""
    lock = threading.Lock()
    sock: Optional[socket.socket] = None


def ruleset_generation() -> int:
    """The kernel's current nftables generation id (NFT_MSG_GETGEN): it changes with
    every committed transaction, by anyone."""
    with _GenSocket.lock:
        try:
            if _GenSocket.sock is None:
                _GenSocket.sock = netlink.open_socket()
                _GenSocket.sock.settimeout(2.0)
            for payload in _request(NFT_MSG_GETGEN, 0, _GenSocket.sock):
                attrs = netlink.nft_attrs(payload)
                if NFTA_GEN_ID in attrs:
                    return netlink.u32(attrs[NFTA_GEN_ID])
        except OSError:             # a failed query leaves no answer behind: the socket goes
            if _GenSocket.sock is not None:
                _GenSocket.sock.close()
            _GenSocket.sock = None
            raise
    raise OSError(errno.EPROTO, "no generation id in the kernel's answer")


def table_names() -> set[tuple[str, str]]:
    """(family, name) of every nftables table, by netlink dump (libnftables' `list
    tables` loads much more and takes seconds with a large ruleset)."""
    out = set()
    for payload in _request(NFT_MSG_GETTABLE, NLM_F_DUMP):
        name = netlink.nft_attrs(payload).get(NFTA_TABLE_NAME)
        if name is not None:
            out.add((netlink.family_of(payload), netlink.string(name)))
    return out
