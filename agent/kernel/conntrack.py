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
from agent.policy.revocation import Flow

log = logging.getLogger(__name__)
ICMP_PROTOCOLS = (1, 58)


def list_flows(addresses: Optional[Iterable] = None) -> list[Flow]:
    """Original-direction tuples of every tracked connection (IPv4 then IPv6, sorted);
    with `addresses`, only the connections from or to one of them (filtered before
    anything is built: the cheap way to list what a change can revoke)."""
    wanted = None if addresses is None else {ipaddress.ip_address(a).packed for a in addresses}
    try:
        with CtSocket() as ct:
            raw = {t for t in ct.dump() if wanted is None or t.src in wanted or t.dst in wanted}
    except OSError as exc:
        raise KernelError(f"cannot read conntrack: {exc}") from exc
    ordered = sorted(raw, key=lambda t: (len(t.src), t.src, t.dst, t.protocol, t.sport or 0, t.dport or 0,
                                         t.icmp_type or 0, t.icmp_id or 0))
    return build_flows(ordered)


def build_flows(raw: Iterable[RawTuple]) -> list[Flow]:
    """Flows of raw tuples; each distinct address object built once."""
    addrs: dict[bytes, object] = {}

    def addr(packed: bytes):
        a = addrs.get(packed)
        if a is None:
            a = addrs[packed] = ipaddress.ip_address(packed)
        return a

    return [Flow(addr(t.src), addr(t.dst), t.protocol, t.sport, t.dport, t.icmp_type, t.icmp_id) for t in raw]


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
