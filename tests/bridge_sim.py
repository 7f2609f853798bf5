"""A strict simulator of the bridge table's first-hop guard (test helper).

It replays the `bridge` table's prerouting chain for one frame entering from a port:
`iifname vmap @port_guard` sends it to the port's guard chain, whose rules (below; any
other form raises UnknownRule) run top to bottom; falling off the end passes the frame
on (the base chain's policy is accept). Compare with agent.policy.guard.frame_verdict.

    ether type != { arp, ip, ip6 } drop
    ether saddr != MAC | { MAC, ... } drop
    arp saddr ether != MAC | { MAC, ... } drop
    arp saddr ip != { ADDR|CIDR, ... } drop
"""
from __future__ import annotations

import ipaddress
import re
from typing import Callable

from agent.policy.guard import ETHER_ARP, ETHER_IP, ETHER_IP6, Frame
from agent.compiler.ruleset import Table

ETHER_NAMES = {"arp": ETHER_ARP, "ip": ETHER_IP, "ip6": ETHER_IP6}
_MAC = r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}"
_MACS = rf"(?:(?P<one>{_MAC})|\{{ (?P<many>{_MAC}(?:, {_MAC})*) \}})"


class UnknownBridgeRule(ValueError):
    pass


def _macs(m: re.Match) -> set[str]:
    return {x.strip() for x in (m["one"] or m["many"]).split(",")}


def parse_guard_rule(text: str) -> Callable[[Frame], bool]:
    """A predicate: does the (drop) rule match the frame?"""
    from compile_sim import normalize_conjunctions      # compile_sim imports this module
    text = normalize_conjunctions(text)
    m = re.fullmatch(r"ether type != \{ (?P<body>[a-z0-9, ]+) \} drop", text)
    if m:
        names = [x.strip() for x in m["body"].split(",")]
        if any(n not in ETHER_NAMES for n in names):
            raise UnknownBridgeRule(text)
        types = {ETHER_NAMES[n] for n in names}
        return lambda f: f.ethertype not in types
    m = re.fullmatch(rf"ether saddr != {_MACS} drop", text)
    if m:
        macs = _macs(m)
        return lambda f: f.src_mac.lower() not in macs
    m = re.fullmatch(rf"arp saddr ether != {_MACS} drop", text)
    if m:
        macs = _macs(m)
        return lambda f: f.ethertype == ETHER_ARP and (f.arp_sha or "").lower() not in macs
    m = re.fullmatch(r"arp saddr ip != \{ (?P<body>[0-9./, ]+) \} drop", text)
    if m:
        nets = [ipaddress.IPv4Network(x.strip()) for x in m["body"].split(",")]
        return lambda f: f.ethertype == ETHER_ARP and (f.arp_spa is None or not any(f.arp_spa in n for n in nets))
    raise UnknownBridgeRule(text)


class BridgeGuardSim:
    """Parses every guard chain of a bridge table at once; `judge(port, frame)`."""

    def __init__(self, table: Table):
        chains = {c.name: c for c in table.chains}
        pre = [c for c in table.chains if c.hook and "prerouting" in c.hook]
        if len(pre) != 1:
            raise UnknownBridgeRule("no single prerouting chain")
        self.ports: dict[str, list] = {}
        guard = [s for s in table.sets if s.name == "port_guard"]
        if "iifname vmap @port_guard" not in pre[0].rules:
            if guard:
                raise UnknownBridgeRule("port_guard map that nothing looks up")
            return
        (vmap,) = guard
        for el in vmap.elements:
            m = re.fullmatch(r'"(?P<port>[^"]+)" : goto (?P<chain>[A-Za-z0-9_.-]+)', el)
            if not m or m["chain"] not in chains:
                raise UnknownBridgeRule(f"bad port_guard element {el!r}")
            self.ports[m["port"]] = [parse_guard_rule(r) for r in chains[m["chain"]].rules]

    def judge(self, port: str, frame: Frame) -> str:
        for rule in self.ports.get(port, ()):
            if rule(frame):
                return "drop"
        return "pass"
