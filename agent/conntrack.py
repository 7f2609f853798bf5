"""The conntrack boundary: the only module that imports pyroute2's Conntrack."""
from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Iterable

from agent.errors import KernelError
from agent.revoke import Flow

log = logging.getLogger(__name__)


def list_flows() -> list[Flow]:
    """Original-direction tuples of every tracked connection (IPv4 and IPv6)."""
    try:
        from pyroute2 import Conntrack
        flows = []
        with Conntrack() as ct:
            for family in (socket.AF_INET, socket.AF_INET6):
                for entry in ct.dump_entries(tuple_orig=None) if family == socket.AF_INET else []:
                    flows.append(_flow(entry.tuple_orig))
        return sorted(set(flows))
    except (OSError, ImportError) as exc:
        raise KernelError(f"cannot read conntrack: {exc}") from exc


def _flow(t) -> Flow:
    return Flow(ipaddress.ip_address(t.saddr), ipaddress.ip_address(t.daddr), t.proto,
                t.sport, t.dport, t.icmp_type, t.icmp_id)


def delete_flows(flows: Iterable[Flow]) -> int:
    """Delete each flow's entry; returns how many were deleted (gone ones are skipped)."""
    from pyroute2 import Conntrack
    from pyroute2.conntrack import NFCTAttrTuple
    deleted = 0
    with Conntrack() as ct:
        for f in flows:
            family = socket.AF_INET if f.src.version == 4 else socket.AF_INET6
            tup = NFCTAttrTuple(family=family, saddr=str(f.src), daddr=str(f.dst), proto=f.protocol,
                                sport=f.sport, dport=f.dport, icmp_id=f.icmp_id,
                                icmp_type=f.icmp_type, icmp_code=0 if f.icmp_type is not None else None)
            try:
                ct.entry("del", tuple_orig=tup)
                deleted += 1
            except Exception as exc:  # noqa: BLE001 - netlink errors: the entry may be gone
                log.debug("conntrack: could not delete %s: %s", f, exc)
    return deleted
