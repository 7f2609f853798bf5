"""The conntrack boundary: what the agent reads from and deletes in the connection table.

The netlink work is agent.kernel.ctnetlink's (one dump of both families, parsed only as
far as each entry's original tuple; deletions many to a write): listing 100,000 flows
takes about what `conntrack -L` takes (docs/fail-closed.md, bench/conntrack.py), where
pyroute2's decoder took 4.5 s per 10,000. An ICMP/ICMPv6 entry is addressed by id,
type and code (code 0: the agent tracks echo).
"""
from __future__ import annotations

import ipaddress
import logging
from typing import Iterable, Optional

from agent.errors import KernelError
from agent.kernel.ctnetlink import CtSocket, RawTuple
from agent.model.objects import IPAddress
from agent.policy.revocation import Flow

log = logging.getLogger(__name__)
ICMP_PROTOCOLS = (1, 58)
KERNEL_FILTER_MAX = 64          # addresses filtered by the kernel (bench/conntrack.py)
# A dump walks every bucket of the table however few entries match: ~6 ms at 262,144
# buckets (6.18, 2 CPUs, an empty table); one unfiltered dump parses each entry instead
# (~2.2 us, docs/fail-closed.md). The kernel filter is worth its walks only when the
# table is large against the walks it takes (2 an address).
WALK_NS_PER_BUCKET = 23
PARSE_NS_PER_ENTRY = 3000
PROC = "/proc/sys/net/netfilter/"


def list_flows(addresses: Optional[Iterable] = None) -> list[Flow]:
    """Original-direction tuples of every tracked connection, IPv4 and IPv6, in the
    kernel's order (not sorted: at 100,000 flows sorting cost more than the dump).
    With `addresses`, only the connections from or to one of them: up to
    KERNEL_FILTER_MAX addresses the kernel filters (two dumps an address, each a
    walk of the table in the kernel, no copy of what does not match) when the table is
    large enough for that to pay; else (more addresses, or a small table: a walk costs
    ~6 ms empty) one dump is filtered here before anything is built."""
    wanted = None if addresses is None else {ipaddress.ip_address(a).packed for a in addresses}
    filtered = wanted if wanted is not None and len(wanted) <= KERNEL_FILTER_MAX and \
        not _one_dump_cheaper(len(wanted)) else None
    try:
        with CtSocket() as ct:
            if filtered is not None:
                raw = [t for a in sorted(filtered) for which in ("src", "dst") for t in ct.dump((which, a))]
            else:
                raw = ct.dump()
    except OSError as exc:
        raise KernelError(f"cannot read conntrack: {exc}") from exc
    if wanted is not None and filtered is None:
        raw = [t for t in raw if t[0] in wanted or t[1] in wanted]
    return build_flows(dict.fromkeys(raw))       # once each, in the order listed


def _one_dump_cheaper(addresses: int) -> bool:
    """Whether one dump filtered here costs less than the kernel's 2 walks an address,
    from the table's size and buckets (this namespace's); False when unknown."""
    try:
        entries = int(open(PROC + "nf_conntrack_count").read())
        buckets = int(open(PROC + "nf_conntrack_buckets").read())
    except (OSError, ValueError):
        return False
    return entries * PARSE_NS_PER_ENTRY < (2 * addresses - 1) * buckets * WALK_NS_PER_BUCKET


def build_flows(raw: Iterable[tuple]) -> list[Flow]:
    """Flows of raw tuples (as CtSocket.dump gives them); each distinct address built once."""
    addrs: dict[bytes, IPAddress] = {}

    def addr(packed: bytes) -> IPAddress:
        a = addrs.get(packed)
        if a is None:
            a = addrs[packed] = ipaddress.ip_address(packed)
        return a

    return [Flow(addr(src), addr(dst), proto, sport, dport, itype, iid)
            for src, dst, proto, sport, dport, itype, iid, _code in raw]


def build_raw(f: Flow) -> RawTuple:
    if f.protocol in ICMP_PROTOCOLS:
        return RawTuple(f.src.packed, f.dst.packed, f.protocol, None, None, f.icmp_type, f.icmp_id)
    return RawTuple(f.src.packed, f.dst.packed, f.protocol, f.sport, f.dport, None, None)


def delete_flows(flows: Iterable[Flow]) -> int:
    """Delete each flow's entry; returns how many were deleted (gone ones are skipped)."""
    raw = [build_raw(f) for f in flows]
    if not raw:
        return 0
    try:
        with CtSocket() as ct:
            return ct.delete(raw)
    except OSError as exc:
        raise KernelError(f"cannot delete conntrack entries: {exc}") from exc
