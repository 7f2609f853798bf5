"""What a number, an interface or an address means, and the JSON records built from
what the kernel reports (docs/observability-records.md):

* `Resolver`: identity number -> VerdictId through the `v_<n>` chain comments of the
  applied tables (listed once, listed again when a number is unknown, at most every
  `min_refresh` seconds), interface -> instance and address -> local interface from
  the desired state when one is given;
* `log_record(packet)`: one line per packet an NFLOG statement sent;
* `flow_record(event)`: one line per connection that ended (or is long-lived).
"""
from __future__ import annotations

import ipaddress
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from agent.compiler.attribution import VerdictId, ct_mark_numbers, number_of_prefix
from agent.kernel.ctevents import CtEvent
from agent.kernel.nflog import LoggedPacket
from agent.kernel.verdicts import VerdictChain
from agent.model.objects import DesiredState
from agent.reconciler.revoke import RecentlyRevoked, flow_key

PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 58: "icmpv6", 132: "sctp"}
StateFn = Callable[[], Optional[DesiredState]]


def iso_time(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Resolver:
    def __init__(self, read_chains: Callable[[], dict[int, VerdictChain]], state: StateFn = lambda: None,
                 min_refresh: float = 5.0) -> None:
        self.read_chains, self.state, self.min_refresh = read_chains, state, min_refresh
        self.chains: dict[int, VerdictChain] = {}
        self.refreshes = 0
        self._last = -1e9
        self._lock = threading.Lock()
        self._by_address: tuple[Optional[DesiredState], dict[str, str]] = (None, {})

    def refresh(self) -> dict[int, VerdictChain]:
        """List the tables now (counters too); the chains by number."""
        chains = self.read_chains()
        with self._lock:
            self.chains, self._last = chains, time.monotonic()
            self.refreshes += 1
        return chains

    def identity(self, number: int) -> Optional[VerdictId]:
        if not number:
            return None
        chain = self.chains.get(number)
        if chain is None and time.monotonic() - self._last >= self.min_refresh:
            chain = self.refresh().get(number)
        if chain is None or not chain.key:
            return None
        try:
            return VerdictId.from_key(chain.key)
        except (ValueError, IndexError):
            return None

    def instance_of(self, interface: Optional[str]) -> Optional[str]:
        state = self.state()
        nic = state.local_interfaces.get(interface or "") if state is not None else None
        return nic.instance_id if nic is not None else None

    def interface_of_address(self, address: str) -> Optional[str]:
        state = self.state()
        if state is None:
            return None
        cached_for, table = self._by_address
        if cached_for is not state:
            table = {str(a): nic.name for nic in state.local_interfaces.values() for a in nic.addresses}
            self._by_address = (state, table)
        return table.get(address)


def identity_fields(v: Optional[VerdictId], number: int) -> dict[str, Any]:
    if v is None:
        return {"number": number or None, "stage": None, "group": None, "rule": None, "priority": None,
                "verdict": None, "audit": False}
    return {"number": number, "stage": v.stage, "group": v.group or None, "rule": v.rule or None,
            "priority": v.priority, "verdict": v.verdict, "audit": v.audit}


def packet_interface(p: LoggedPacket, direction: str, name: Callable[[Optional[int]], Optional[str]],
                     is_local: Callable[[Optional[str]], bool]) -> Optional[str]:
    """The instance's interface of a logged packet: where it came in (egress of the
    instance) or goes out (ingress); the bridge port (physdev) when bridged."""
    inside = name(p.physindev) or name(p.indev)
    outside = name(p.physoutdev) or name(p.outdev)
    if direction == "egress":
        return inside
    if direction == "ingress":
        return outside or inside
    return inside if is_local(inside) or not outside else outside


def log_record(p: LoggedPacket, resolver: Resolver, host: str,
               name: Callable[[Optional[int]], Optional[str]]) -> dict[str, Any]:
    number = number_of_prefix(p.prefix) or 0
    v = resolver.identity(number)
    direction = v.direction if v is not None else ""
    nic = packet_interface(p, direction, name, lambda n: resolver.instance_of(n) is not None)
    h = p.headers
    out: dict[str, Any] = {"type": "packet", "time": iso_time(p.timestamp or time.time()), "host": host,
                           "instance": resolver.instance_of(nic), "interface": nic, "direction": direction or None}
    out.update(identity_fields(v, number))
    out.update({"nflog_group": p.group, "protocol": PROTOCOLS.get(h.protocol, h.protocol) if h else None,
                "ip_version": h.version if h else None, "src": h.src if h else None, "dst": h.dst if h else None,
                "sport": h.sport if h else None, "dport": h.dport if h else None,
                "icmp_type": h.icmp_type if h else None, "icmp_code": h.icmp_code if h else None,
                "length": h.length if h else None})
    if number == 0:
        out["prefix"] = p.prefix
    return out


def _address(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


def flow_record(e: CtEvent, resolver: Resolver, host: str, revoked: RecentlyRevoked,
                first_seen: Optional[float] = None) -> Optional[dict[str, Any]]:
    """The record of a connection (None: the event has no original tuple)."""
    if e.orig is None:
        return None
    src, dst, proto, sport, dport, itype, iid, _code = e.orig
    s, d = _address(src), _address(dst)
    egress_n, ingress_n = ct_mark_numbers(e.mark)
    ends = {}
    for side, address, number in (("src", s, egress_n), ("dst", d, ingress_n)):
        nic = resolver.interface_of_address(address)
        ends[side] = {"address": address, "interface": nic, "instance": resolver.instance_of(nic),
                      "rule": identity_fields(resolver.identity(number), number) if number else None}
    cut = revoked.pop(flow_key(s, d, proto, sport, dport, iid)) if e.kind == "destroy" else None
    start = e.start if e.start is not None else first_seen
    counters = {k: {"packets": c[0], "bytes": c[1]} if c else None
                for k, c in (("orig", e.counters_orig), ("reply", e.counters_reply))}
    return {"type": "flow", "event": "end" if e.kind == "destroy" else "update", "time": iso_time(time.time()),
            "host": host, "id": e.id, "protocol": PROTOCOLS.get(proto, proto), "src": s, "dst": d,
            "sport": sport, "dport": dport, "icmp_type": itype, "icmp_id": iid,
            "source": ends["src"], "destination": ends["dst"], **counters,
            "start": iso_time(start) if start else None,
            "end": iso_time(e.stop) if e.stop else (iso_time(time.time()) if e.kind == "destroy" else None),
            "revoked": {"revision": cut[0], "reason": cut[1]} if cut else None}
