"""The conntrack boundary: the only module that imports pyroute2's Conntrack.

ctnetlink works per address family: a dump or a delete is one request whose
`nfgen_family` says which table (IPv4 or IPv6) it reads, so each family needs its own
socket. An ICMP/ICMPv6 entry is addressed by id, type and code (all three required).
"""
from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any, Iterable

from agent.errors import KernelError
from agent.policy.revocation import Flow

log = logging.getLogger(__name__)
FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
ICMP_PROTOCOLS = (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6)


def list_flows() -> list[Flow]:
    """Original-direction tuples of every tracked connection (IPv4 and IPv6)."""
    try:
        from pyroute2 import Conntrack
        flows = []
        for family in FAMILIES.values():
            with Conntrack(nfgen_family=family) as ct:
                for entry in ct.dump_entries():
                    flows.append(_flow(entry.tuple_orig))
        return sorted(set(flows), key=lambda f: (f.src.version, f))   # IPv4 then IPv6
    except (OSError, ImportError) as exc:
        raise KernelError(f"cannot read conntrack: {exc}") from exc


def _flow(t: Any) -> Flow:
    """A pyroute2 conntrack tuple (typed Any: pyroute2 publishes no types) as a Flow."""
    icmp = t.proto in ICMP_PROTOCOLS
    return Flow(ipaddress.ip_address(t.saddr), ipaddress.ip_address(t.daddr), t.proto,
                None if icmp else t.sport, None if icmp else t.dport,
                t.icmp_type if icmp else None, t.icmp_id if icmp else None)


def _tuple(f: Flow) -> Any:
    from pyroute2.conntrack import NFCTAttrTuple
    kw = dict(family=FAMILIES[f.src.version], saddr=str(f.src), daddr=str(f.dst), proto=f.protocol)
    if f.protocol in ICMP_PROTOCOLS:
        kw.update(icmp_id=f.icmp_id, icmp_type=f.icmp_type, icmp_code=0)
    elif f.sport is not None and f.dport is not None:
        kw.update(sport=f.sport, dport=f.dport)
    return NFCTAttrTuple(**kw)


def delete_flows(flows: Iterable[Flow]) -> int:
    """Delete each flow's entry; returns how many were deleted (gone ones are skipped)."""
    from pyroute2 import Conntrack
    by_family: dict[int, list[Flow]] = {}
    for f in flows:
        by_family.setdefault(f.src.version, []).append(f)
    deleted = 0
    for version, group in sorted(by_family.items()):
        with Conntrack(nfgen_family=FAMILIES[version]) as ct:
            for f in group:
                try:
                    ct.entry("del", tuple_orig=_tuple(f))
                    deleted += 1
                except Exception as exc:  # noqa: BLE001 - netlink errors: the entry may be gone
                    log.debug("conntrack: could not delete %s: %s", f, exc)
    return deleted
