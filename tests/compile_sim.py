"""A small, strict simulator of a compiled `Ruleset` (test helper, not a test file).

It judges one packet on one interface and direction the way the kernel would walk the
agent's `inet` table: the base chain of the direction (`forward_egress` /
`forward_ingress`) and its verdict maps (by name for routed ports; by the mark the
`bridge` table stamps, or by address, for bridged ports) send it to the per-interface
chain (`in_<if>` / `eg_<if>`, see `compile.interface_chain_name`), whose rules run top to
bottom and end with a `goto` to the shared policy chain. The rule strings are the compiler's fixed
grammar (below); anything else raises `UnknownRule`, so the simulator can never pass a
packet it does not understand. Set lookups read the `NftSet` elements (ranges `a-b`,
single values, CIDR prefixes) and check the set's declared type against the lookup key.

Grammar (VERDICT is `accept` or `drop`; an optional leading `counter` is a no-op):

    ct state vmap { STATE : VERDICT, ... }
    tcp flags & (FLAG | ...) ==|!= FLAG[|FLAG...] VERDICT
    icmpv6 type { nd-router-solicit, ... } accept|drop
    ether saddr != MAC drop                      ether saddr != { MAC, ... } drop
    TERM [TERM ...] VERDICT                      a conjunction of the first-hop guard's terms:
        icmpv6 type NAME | { NAME, ... }         (nd-* names only)
        @th,64,128 != { HEX[-HEX], ... }         the ND target (only after an icmpv6 type
                                                 term of solicitations/advertisements)
        ip saddr ADDR|CIDR   ip6 saddr ADDR|CIDR   meta nfproto ipv4|ipv6
        ip saddr != { ADDR|CIDR, ... }           ip6 saddr != { ... }
        udp sport PORT       udp dport PORT
    ip saddr != { ADDR|CIDR, ... } drop          ip6 saddr != { ... } drop
    meta nfproto ipv4|ipv6 VERDICT
    ip|ip6 saddr|daddr @SET VERDICT
    ip|ip6 saddr|daddr @SET goto CHAIN | jump CHAIN (the member path: at its end, back)
    ip|ip6 saddr|daddr . meta l4proto [. th sport] [. th dport] @SET VERDICT
    ip|ip6 saddr|daddr . meta l4proto [. th sport] [. th dport] vmap @MAP      (no element: next rule)
    ip|ip6 saddr|daddr @SET meta l4proto [. th sport] [. th dport] vmap @MAP
    ip|ip6 saddr|daddr ADDR|ADDR-ADDR|@SET [meta l4proto N] [th sport P[-Q]] [th dport P[-Q]] VERDICT
    meta nfproto ipv4|ipv6 [meta l4proto N] [th sport P[-Q]] [th dport P[-Q]] VERDICT
    goto CHAIN
    VERDICT
    any rule above ending in `goto v_<n>` instead of its VERDICT: the match, then the
    verdict chain v_<n>, whose one rule `counter [ct mark set ...] [log ...] VERDICT
    comment "<key>"` decides (SimResult.identity: the key); map elements likewise

Modelling choices:

* `Packet.state` decides `ct state` ("new" falls through).
* `tcp flags`: `Packet` has no flags; it is a connection's first packet, so a TCP
  packet carries SYN alone (`TCP_FLAGS`). A non-TCP packet never matches `tcp ...`.
* `@th,64,128` reads `Packet.nd_target`; a packet without one is outside every set.
* `ether saddr`: a packet with `src_mac=None` is taken to come from the interface's
  own MAC (the semantics engine does the same: no MAC, no spoofing verdict).
* `th sport` / `th dport` read the packet's sport/dport, or 0 when the packet has none.
  The kernel reads *some* 16-bit values at those offsets for any protocol (for ICMP the
  checksum bytes, for GRE the flags and protocol type), which is why the compiler gives
  portless protocols the full 0-65535 range: whatever is read there, it matches.
* `ip`/`ip6` matches carry the implicit `meta nfproto` dependency: an IPv6 packet never
  matches an `ip saddr ...` rule, whatever the set holds.
* falling off the end of a chain reached through `jump` goes on after the jump; of one
  reached through `goto`, returns to the base chain, whose policy is accept (the compiler always ends policy chains with `drop`).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Callable, Optional

from agent.compiler.attribution import VerdictId, ct_mark_statement, number_of_chain
from agent.compiler.logs import DYNAMIC_SETS
from agent.compiler.compile import TABLE, Chain, NftSet, Ruleset, Table, interface_chain_name
from agent.model.objects import EGRESS, INGRESS
from agent.policy.effective import Packet
from bridge_sim import BridgeGuardSim

VERDICTS = ("accept", "drop")
ND_NAMES = {"nd-router-solicit": 133, "nd-router-advert": 134,
            "nd-neighbor-solicit": 135, "nd-neighbor-advert": 136, "nd-redirect": 137}
PROTO_NAMES = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58, "gre": 47}
TCP_FLAG_BITS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10,
                 "urg": 0x20, "ecn": 0x40, "cwr": 0x80}
TCP_FLAGS = TCP_FLAG_BITS["syn"]     # the first packet of a new TCP connection
CT_STATES = ("new", "established", "related", "invalid", "untracked")
KEY_TYPES = {"ip saddr": "ipv4_addr", "ip daddr": "ipv4_addr", "ip6 saddr": "ipv6_addr",
             "ip6 daddr": "ipv6_addr", "meta l4proto": "inet_proto",
             "th sport": "inet_service", "th dport": "inet_service"}


class UnknownRule(ValueError):
    """A rule, set or chain the simulator does not understand: never guess."""


@dataclass(frozen=True)
class SimResult:
    verdict: str
    chain: str                       # where the verdict was reached
    index: Optional[int]             # rule index in that chain (None: fell off the end)
    rule: str
    trace: tuple[str, ...] = field(default=())
    identity: Optional[str] = None   # the verdict chain's comment (VerdictId.key) that decided


Interval = tuple[int, int]
Element = tuple[Interval, ...]
Pred = Callable[[Packet], bool]


# ---------------------------------------------------------------- sets and elements

def _addr_interval(text: str, version: int) -> Interval:
    text = text.strip()
    try:
        if "/" in text:
            net = ipaddress.ip_network(text, strict=True)
            lo, hi = net.network_address, net.broadcast_address
        elif "-" in text:
            a, b = text.split("-")
            lo, hi = ipaddress.ip_address(a.strip()), ipaddress.ip_address(b.strip())
        else:
            lo = hi = ipaddress.ip_address(text)
    except ValueError as exc:
        raise UnknownRule(f"bad address element {text!r}: {exc}") from None
    if lo.version != version or hi.version != version:
        raise UnknownRule(f"address {text!r} is not IPv{version}")
    if int(lo) > int(hi):
        raise UnknownRule(f"empty range {text!r}")
    return int(lo), int(hi)


def _int_value(text: str, kind: str) -> int:
    text = text.strip()
    if kind == "inet_proto" and text in PROTO_NAMES:
        return PROTO_NAMES[text]
    if not re.fullmatch(r"\d+", text):
        raise UnknownRule(f"bad {kind} value {text!r}")
    value = int(text)
    if value > (255 if kind == "inet_proto" else 65535):
        raise UnknownRule(f"{kind} value {value} out of range")
    return value


def _int_interval(text: str, kind: str) -> Interval:
    parts = text.split("-")
    if len(parts) == 1:
        v = _int_value(parts[0], kind)
        return v, v
    if len(parts) != 2:
        raise UnknownRule(f"bad {kind} element {text!r}")
    lo, hi = _int_value(parts[0], kind), _int_value(parts[1], kind)
    if lo > hi:
        raise UnknownRule(f"empty range {text!r}")
    return lo, hi


def _component(text: str, kind: str) -> Interval:
    if kind == "ipv4_addr":
        return _addr_interval(text, 4)
    if kind == "ipv6_addr":
        return _addr_interval(text, 6)
    if kind in ("inet_proto", "inet_service"):
        return _int_interval(text, kind)
    if kind == "ifname" and re.fullmatch(r'"[^"*]+"', text):      # the known-port sets (fail closed)
        value = int.from_bytes(text.strip('"').encode(), "big")
        return value, value
    raise UnknownRule(f"unknown set element type {kind!r}")


@dataclass(frozen=True)
class ParsedSet:
    name: str
    types: tuple[str, ...]
    elements: tuple[Element, ...]

    def lookup(self, key: tuple[int, ...]) -> bool:
        return any(all(lo <= k <= hi for (lo, hi), k in zip(el, key)) for el in self.elements)


def parse_set(s: NftSet) -> ParsedSet:
    if s.map_to is not None:
        raise UnknownRule(f"{s.name} is a map, not a set")
    types = tuple(t.strip() for t in s.type.split(" . "))
    elements = []
    for text in s.elements:
        parts = text.split(" . ")
        if len(parts) != len(types):
            raise UnknownRule(f"set {s.name}: element {text!r} does not have type {s.type}")
        el = tuple(_component(p, t) for p, t in zip(parts, types))
        if not s.interval and any(lo != hi for lo, hi in el):
            raise UnknownRule(f"set {s.name}: range {text!r} in a set without flags interval")
        elements.append(el)
    return ParsedSet(s.name, types, tuple(elements))


# ---------------------------------------------------------------- packet fields

def _field(packet: Packet, key: str) -> Optional[int]:
    """The value of one key of a lookup; None when the packet has no such field (an IPv6
    packet has no `ip saddr`), which makes the match fail, as the nfproto dependency
    does in the kernel."""
    if key in ("ip saddr", "ip daddr", "ip6 saddr", "ip6 daddr"):
        fam, which = key.split()
        addr = packet.src if which == "saddr" else packet.dst
        want = 4 if fam == "ip" else 6
        return int(addr) if addr.version == want else None
    if key == "meta l4proto":
        return packet.protocol
    if key == "th sport":
        return packet.sport if packet.sport is not None else 0
    if key == "th dport":
        return packet.dport if packet.dport is not None else 0
    raise UnknownRule(f"unknown key {key!r}")


def _version(packet: Packet) -> int:
    if packet.src.version != packet.dst.version:
        raise UnknownRule("packet mixes IPv4 and IPv6 addresses")
    return packet.src.version


def _tcp_flags(text: str, raw: str) -> int:
    bits = 0
    for name in (x.strip() for x in text.split("|")):
        if name not in TCP_FLAG_BITS:
            raise UnknownRule(f"unknown tcp flag {name!r} in {raw!r}")
        bits |= TCP_FLAG_BITS[name]
    return bits


def _anon_set(body: str, version: int) -> tuple[Interval, ...]:
    items = [x.strip() for x in body.split(",")]
    if not items or any(not x for x in items):
        raise UnknownRule(f"bad anonymous set {{{body}}}")
    return tuple(_addr_interval(x, version) for x in items)


# ---------------------------------------------------------------- rules

@dataclass(frozen=True)
class ParsedRule:
    text: str
    match: Pred                      # does the rule's match part hold?
    verdict: Optional[str] = None    # accept | drop | None with goto
    goto: Optional[str] = None
    vmap: Optional[dict] = None      # ct state vmap: state -> verdict
    decide: Optional[Callable[[Packet], Optional[str]]] = None   # verdict-map lookup (None: next rule)
    jump: Optional[str] = None       # `jump`: the chain, then back to the next rule here


_V = r"(?P<verdict>accept|drop)"
_ADDRKEY = r"(?P<fam>ip6?) (?P<dir>saddr|daddr)"


_NEQ_RUN = re.compile(r"(?P<key>ip6? saddr|@th,64,128|ether type|arp saddr ip|arp saddr ether|ether saddr) != "
                      r"[^\s{}]+(?: (?P=key) != [^\s{}]+)*")
_ND_RANGES = {"133-136": "{ nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }",
              "135-136": "{ nd-neighbor-solicit, nd-neighbor-advert }"}


def normalize_conjunctions(text: str) -> str:
    """The compiler writes "not in {a, b}" as `KEY != a KEY != b` (one rule, matches ANDed:
    no anonymous set) and ND type ranges as numbers; this gives the equivalent set form
    (`KEY != { a, b }`, a single MAC bare, `icmpv6 type { nd-... }`) the parsers below
    know. Exactly equivalent: a conjunction of inequalities is non-membership."""
    def group(m: re.Match) -> str:
        key = m["key"]
        values = [v.split(" != ", 1)[1] for v in re.findall(rf"{re.escape(key)} != [^\s{{}}]+", m.group(0))]
        if key in ("ether saddr", "arp saddr ether") and len(values) == 1:
            return f"{key} != {values[0]}"
        return f"{key} != {{ {', '.join(values)} }}"
    text = _NEQ_RUN.sub(group, text)
    text = re.sub(r"^icmpv6 type (nd-[a-z-]+) (accept|drop)$", r"icmpv6 type { \1 } \2", text)
    return re.sub(r"icmpv6 type (133-136|135-136)\b", lambda m: f"icmpv6 type {_ND_RANGES[m[1]]}", text)


def parse_rule(text: str, sets: dict[str, ParsedSet], chains: set[str],
               maps: Optional[dict[str, "ParsedMap"]] = None) -> ParsedRule:
    raw = text
    maps = maps or {}
    text = re.sub(r"^counter ", "", text.strip())
    text = re.sub(r" counter (accept|drop)$", r" \1", text)
    jump = re.fullmatch(r"(?P<head>.+) goto (?P<chain>v_\d+)", text)
    if jump and not jump["head"].startswith("goto"):      # MATCH goto v_<n>: MATCH, then the verdict chain
        if jump["chain"] not in chains:
            raise UnknownRule(f"goto to a missing chain: {raw!r}")
        inner = parse_rule(jump["head"] + " drop", sets, chains, maps)
        if inner.verdict != "drop" or inner.goto or inner.vmap or inner.decide:
            raise UnknownRule(f"unknown rule form: {raw!r}")
        return replace(inner, text=raw, verdict=None, goto=jump["chain"])
    text = normalize_conjunctions(text)

    if re.fullmatch(r"ct count over [1-9][0-9]* drop", text):     # a quota: one new packet never reaches it
        return ParsedRule(raw, lambda p: False, "drop")
    m = re.fullmatch(r"ct state (?P<states>[a-z]+(?:,[a-z]+)*) " + _V, text)
    if m:
        states = m["states"].split(",")
        if any(st not in CT_STATES for st in states):
            raise UnknownRule(f"unknown ct state in {raw!r}")
        return ParsedRule(raw, lambda p, states=states: p.state in states, m["verdict"])

    m = re.fullmatch(r"ct state vmap \{ (?P<body>[^{}]+) \}", text)
    if m:
        vmap = {}
        for item in m["body"].split(","):
            parts = [p.strip() for p in item.split(":")]
            if len(parts) != 2 or parts[0] not in CT_STATES or parts[1] not in VERDICTS:
                raise UnknownRule(f"bad ct state vmap item {item!r} in {raw!r}")
            vmap[parts[0]] = parts[1]
        return ParsedRule(raw, lambda p: p.state in vmap, vmap=vmap)

    m = re.fullmatch(r"tcp flags & \((?P<mask>[a-z |]+)\) (?P<op>==|!=) (?P<value>[a-z|]+) " + _V, text)
    if m:
        mask, value = _tcp_flags(m["mask"], raw), _tcp_flags(m["value"], raw)
        if value & ~mask:
            raise UnknownRule(f"compared flags outside the mask in {raw!r}")
        equal = m["op"] == "=="
        return ParsedRule(raw, lambda p: p.protocol == 6 and ((TCP_FLAGS & mask) == value) == equal,
                          m["verdict"])

    m = re.fullmatch(r"icmpv6 type \{ (?P<body>[^{}]+) \} " + _V, text)
    if m:
        types = set()
        for name in (x.strip() for x in m["body"].split(",")):
            if name not in ND_NAMES:
                raise UnknownRule(f"unknown icmpv6 type {name!r} in {raw!r}")
            types.add(ND_NAMES[name])
        return ParsedRule(raw, lambda p: _version(p) == 6 and p.protocol == 58
                          and p.icmp_type in types, m["verdict"])

    m = re.fullmatch(rf"ether saddr != (?:(?P<mac>{_MAC})|\{{ (?P<macs>{_MAC}(?:, {_MAC})*) \}}) " + _V, text)
    if m:
        macs = {x.strip().lower() for x in (m["mac"] or m["macs"]).split(",")}
        return ParsedRule(raw, lambda p: p.src_mac is not None and p.src_mac.lower() not in macs,
                          m["verdict"])

    m = re.fullmatch(r"(?P<fam>ip6?) saddr != \{ (?P<body>[^{}]+) \} " + _V, text)
    if m:
        version = 4 if m["fam"] == "ip" else 6
        ivs = _anon_set(m["body"], version)
        return ParsedRule(raw, lambda p: _version(p) == version
                          and not any(lo <= int(p.src) <= hi for lo, hi in ivs), m["verdict"])

    m = re.fullmatch(r"meta nfproto (?P<fam>ipv4|ipv6) " + _V, text)
    if m:
        version = 4 if m["fam"] == "ipv4" else 6
        return ParsedRule(raw, lambda p: _version(p) == version, m["verdict"])

    parsed = _parse_lookup_rule(text, raw, sets, chains, maps)
    if parsed is not None:
        return parsed

    m = re.fullmatch(r"goto (?P<chain>[A-Za-z0-9_.-]+)", text)
    if m:
        if m["chain"] not in chains:
            raise UnknownRule(f"goto to a missing chain: {raw!r}")
        return ParsedRule(raw, lambda p: True, goto=m["chain"])

    m = re.fullmatch(r"(?P<key>[a-z0-9 .]+?) @(?P<set>[A-Za-z0-9_.-]+) " + _V, text)
    if m:
        keys = tuple(k.strip() for k in m["key"].split(" . "))
        if not re.fullmatch(_ADDRKEY, keys[0]) or keys[1:] not in (
                (), ("meta l4proto",), ("meta l4proto", "th sport"),
                ("meta l4proto", "th dport"), ("meta l4proto", "th sport", "th dport")):
            raise UnknownRule(f"unknown lookup key {m['key']!r} in {raw!r}")
        if m["set"] not in sets:
            raise UnknownRule(f"lookup in a missing set: {raw!r}")
        s = sets[m["set"]]
        want = tuple(KEY_TYPES[k] for k in keys)
        if s.types != want:
            raise UnknownRule(f"set {s.name} has type {' . '.join(s.types)}, key wants {' . '.join(want)}")

        def lookup(p: Packet, keys=keys, s=s) -> bool:
            _version(p)
            values = tuple(_field(p, k) for k in keys)
            return None not in values and s.lookup(values)
        return ParsedRule(raw, lookup, m["verdict"])

    if text in VERDICTS:
        return ParsedRule(raw, lambda p: True, text)

    conjunction = _parse_conjunction(text, raw)
    if conjunction is not None:
        return conjunction
    raise UnknownRule(f"unknown rule form: {raw!r}")


TAIL_KEYS = ((), ("meta l4proto",), ("meta l4proto", "th sport"), ("meta l4proto", "th dport"),
             ("meta l4proto", "th sport", "th dport"))


@dataclass(frozen=True)
class ParsedMap:
    """A verdict map with a concatenated key (intervals where the map has the flag)."""
    name: str
    types: tuple[str, ...]
    elements: tuple[tuple[Element, str], ...]

    def lookup(self, key: tuple[int, ...]) -> Optional[str]:
        hits = [v for el, v in self.elements if all(lo <= k <= hi for (lo, hi), k in zip(el, key))]
        if len(hits) > 1:
            raise UnknownRule(f"map {self.name}: overlapping elements for {key}")
        return hits[0] if hits else None


def parse_concat_map(s: NftSet) -> ParsedMap:
    types = tuple(t.strip() for t in s.type.split(" . "))
    out = []
    for text in s.elements:
        m = re.fullmatch(r"(?P<key>.+) : (?P<verdict>accept|drop|goto v_\d+)", text)
        if not m:
            raise UnknownRule(f"map {s.name}: bad element {text!r}")
        parts = m["key"].split(" . ")
        if len(parts) != len(types):
            raise UnknownRule(f"map {s.name}: element {text!r} does not have type {s.type}")
        el = tuple(_component(p, t) for p, t in zip(parts, types))
        if not s.interval and any(lo != hi for lo, hi in el):
            raise UnknownRule(f"map {s.name}: range {text!r} without flags interval")
        out.append((el, m["verdict"]))
    return ParsedMap(s.name, types, tuple(out))


def _check_types(want: tuple[str, ...], have: tuple[str, ...], name: str) -> None:
    if want != have:
        raise UnknownRule(f"{name} has type {' . '.join(have)}, key wants {' . '.join(want)}")


def _parse_lookup_rule(text: str, raw: str, sets: dict, chains: set, maps: dict) -> Optional[ParsedRule]:
    """The member-path forms: set lookups that goto, verdict maps, plain matches."""
    m = re.fullmatch(_ADDRKEY + r" @(?P<set>[A-Za-z0-9_.-]+) (?P<how>goto|jump) (?P<chain>[A-Za-z0-9_.-]+)", text)
    if m:
        pred = _set_pred(f"{m['fam']} {m['dir']}", m["set"], sets, raw)
        if m["chain"] not in chains:
            raise UnknownRule(f"{m['how']} to a missing chain: {raw!r}")
        if m["how"] == "jump":
            return ParsedRule(raw, pred, jump=m["chain"])
        return ParsedRule(raw, pred, goto=m["chain"])
    m = re.fullmatch(_ADDRKEY + r"(?: @(?P<set>[A-Za-z0-9_.-]+) | \. )(?P<tail>[a-z0-9 .]+) vmap @(?P<map>[A-Za-z0-9_.-]+)", text)
    if m:
        addr_key = f"{m['fam']} {m['dir']}"
        tail = tuple(k.strip() for k in m["tail"].split(" . "))
        if tail not in TAIL_KEYS[1:] or m["map"] not in maps:
            raise UnknownRule(f"unknown map lookup {raw!r}")
        keys = tail if m["set"] else (addr_key,) + tail
        pm = maps[m["map"]]
        _check_types(tuple(KEY_TYPES[k] for k in keys), pm.types, pm.name)
        member = _set_pred(addr_key, m["set"], sets, raw) if m["set"] else (lambda p: True)

        def decide(p: Packet, keys=keys, pm=pm, member=member) -> Optional[str]:
            _version(p)
            values = tuple(_field(p, k) for k in keys)
            if None in values or (addr_key.startswith("ip6") != (p.src.version == 6)) or not member(p):
                return None
            return pm.lookup(values)
        return ParsedRule(raw, lambda p: True, decide=decide)
    m = re.fullmatch(r"(?:" + _ADDRKEY + r" (?P<addr>@[A-Za-z0-9_.-]+|[0-9a-fA-F:.]+(?:-[0-9a-fA-F:.]+)?)"
                     r"|meta nfproto (?P<nfp>ipv4|ipv6))"
                     r"(?: meta l4proto (?P<proto>\d+(?:-\d+)?))?(?: th sport (?P<sport>\d+(?:-\d+)?))?"
                     r"(?: th dport (?P<dport>\d+(?:-\d+)?))? " + _V, text)
    if m and (m["proto"] or m["sport"] or m["dport"] or (m["addr"] and not m["addr"].startswith("@"))):
        preds = _plain_preds(m, sets, raw)
        return ParsedRule(raw, lambda p, preds=preds: all(f(p) for f in preds), m["verdict"])
    return None


def _set_pred(key: str, name: str, sets: dict, raw: str) -> Pred:
    if name not in sets:
        raise UnknownRule(f"lookup in a missing set: {raw!r}")
    s = sets[name]
    _check_types((KEY_TYPES[key],), s.types, s.name)

    def pred(p: Packet) -> bool:
        _version(p)
        value = _field(p, key)
        return value is not None and s.lookup((value,))
    return pred


def _plain_preds(m: re.Match, sets: dict, raw: str) -> list[Pred]:
    preds: list[Pred] = []
    if m["nfp"]:
        version = 4 if m["nfp"] == "ipv4" else 6
        preds.append(lambda p: _version(p) == version)
    else:
        key = f"{m['fam']} {m['dir']}"
        if m["addr"].startswith("@"):
            preds.append(_set_pred(key, m["addr"][1:], sets, raw))
        else:
            lo, hi = _addr_interval(m["addr"], 4 if m["fam"] == "ip" else 6)
            preds.append(lambda p: (v := _field(p, key)) is not None and lo <= v <= hi)
    for kind, field_key, name in (("inet_proto", "meta l4proto", "proto"), ("inet_service", "th sport", "sport"),
                                  ("inet_service", "th dport", "dport")):
        if m[name]:
            a, b = _int_interval(m[name], kind)
            preds.append(lambda p, a=a, b=b, k=field_key: a <= _field(p, k) <= b)
    return preds


_MAC = r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}"
_TERMS = (
    ("icmp", re.compile(r"icmpv6 type (?:(?P<one>nd-[a-z-]+)|\{ (?P<body>[a-z, -]+) \})")),
    ("target", re.compile(r"@th,64,128 != \{ (?P<body>[0-9a-fx, -]+) \}")),
    ("saddr", re.compile(r"(?P<fam>ip6?) saddr (?P<addr>[0-9a-fA-F.:/]+)")),
    ("not-saddr", re.compile(r"(?P<fam>ip6?) saddr != \{ (?P<body>[0-9a-fA-F.:/, ]+) \}")),
    ("nfproto", re.compile(r"meta nfproto (?P<fam>ipv4|ipv6)")),
    ("udp", re.compile(r"udp (?P<which>sport|dport) (?P<port>\d+)")),
)


def _term(kind: str, m: re.Match, raw: str, seen: dict) -> Pred:
    if kind == "icmp":
        names = [m["one"]] if m["one"] else [x.strip() for x in m["body"].split(",")]
        if any(n not in ND_NAMES for n in names):
            raise UnknownRule(f"unknown icmpv6 type in {raw!r}")
        types = {ND_NAMES[n] for n in names}
        seen["icmp"] = types
        return lambda p: _version(p) == 6 and p.protocol == 58 and p.icmp_type in types
    if kind == "target":
        if not seen.get("icmp") or not seen["icmp"] <= {135, 136}:
            raise UnknownRule(f"@th,64,128 is an ND target only after an NS/NA type match: {raw!r}")
        ivs = []
        for item in (x.strip() for x in m["body"].split(",")):
            lo, _, hi = item.partition("-")
            if not re.fullmatch(r"0x[0-9a-f]{32}", lo) or (hi and not re.fullmatch(r"0x[0-9a-f]{32}", hi)):
                raise UnknownRule(f"bad 128-bit value {item!r} in {raw!r}")
            ivs.append((int(lo, 16), int(hi or lo, 16)))
        return lambda p: p.nd_target is None or not any(lo <= int(p.nd_target) <= hi for lo, hi in ivs)
    if kind == "saddr":
        version = 4 if m["fam"] == "ip" else 6
        lo, hi = _addr_interval(m["addr"], version)
        return lambda p: _version(p) == version and lo <= int(p.src) <= hi
    if kind == "not-saddr":
        version = 4 if m["fam"] == "ip" else 6
        ivs = _anon_set(m["body"], version)
        return lambda p: _version(p) == version and not any(lo <= int(p.src) <= hi for lo, hi in ivs)
    if kind == "nfproto":
        version = 4 if m["fam"] == "ipv4" else 6
        return lambda p: _version(p) == version
    port = int(m["port"])
    if port > 65535:
        raise UnknownRule(f"port out of range in {raw!r}")
    which = m["which"]
    return lambda p: p.protocol == 17 and (p.sport if which == "sport" else p.dport) == port


def _parse_conjunction(text: str, raw: str) -> Optional[ParsedRule]:
    """`TERM [TERM ...] VERDICT` (the first-hop guard's lines), or None when `text` does
    not start with a known term. Every term must be known: no guessing."""
    m = re.fullmatch(r"(?P<terms>.+) " + _V, text)
    if not m:
        return None
    rest, preds, seen = m["terms"], [], {}
    while rest:
        for kind, pattern in _TERMS:
            tm = pattern.match(rest)
            if tm and (tm.end() == len(rest) or rest[tm.end()] == " "):
                preds.append(_term(kind, tm, raw, seen))
                rest = rest[tm.end():].lstrip()
                break
        else:
            if not preds:
                return None
            raise UnknownRule(f"unknown term {rest!r} in {raw!r}")
    if len(preds) < 2:
        return None
    return ParsedRule(raw, lambda p: all(pred(p) for pred in preds), m["verdict"])


# ---------------------------------------------------------------- the walk

def inet_table(ruleset: Ruleset) -> Table:
    found = [t for t in ruleset.tables if (t.family, t.name) == ("inet", TABLE)]
    if len(found) != 1:
        raise UnknownRule(f"expected exactly one inet {TABLE} table, found {len(found)}")
    return found[0]


_VERDICT_RULE = re.compile(r'counter(?: (?P<mark>ct mark set ct mark and 0x[0-9a-f]{8} or 0x[0-9a-f]{8}))?'
                           r'(?: (?P<log>log(?: [a-z]+ (?:"[^"]*"|[0-9a-z/]+))+))? (?P<verdict>accept|drop) '
                           r'comment "(?P<key>[^"]+)"')


def parse_verdict_chain(c: Chain) -> tuple[str, str, str]:
    """A verdict chain `v_<n>` (agent.compiler.verdicts): exactly one rule, `counter`,
    on an accept the connection mark of its number in its direction's half, an optional
    log statement, the verdict its key names, the key as comment. (verdict, key, rule)."""
    number = number_of_chain(c.name)
    m = _VERDICT_RULE.fullmatch(c.rules[0]) if len(c.rules) == 1 else None
    if len(c.rules) == 5 and number is not None:        # a logging chain: its log rules never change the verdict
        m = _LOG_HEAD.fullmatch(c.rules[0])
        verdict = VerdictId.from_key(m["key"]).verdict if m else ""
        for rule, form in zip(c.rules[1:], _LOG_RULES):
            if not re.fullmatch(form.format(v=verdict, n=number), rule):
                raise UnknownRule(f"verdict chain {c.name}: unknown log rule {rule!r}")
        if m:
            return _checked(c, number, m, verdict)
    if m is None or number is None:
        raise UnknownRule(f"unknown verdict chain {c.name}: {c.rules!r}")
    return _checked(c, number, m, m["verdict"])


_LOG_HEAD = re.compile(r'counter(?: (?P<mark>ct mark set ct mark and 0x[0-9a-f]{8} or 0x[0-9a-f]{8}))? '
                       r'comment "(?P<key>[^"]+)"')
_RATE = r"[0-9]+/(?:second|minute) burst [0-9]+ packets"
_LOG_RULES = (r"limit rate over " + _RATE + r" counter {v}",
              r"add @log_iface \{{ iifname \. oifname \. meta mark limit rate over " + _RATE + r" \}} counter {v}",
              r"add @log_all \{{ meta nfproto limit rate over " + _RATE + r" \}} counter {v}",
              r'counter log group [0-9]+ prefix "sg:{n}:" {v}')


def _checked(c: Chain, number: int, m: re.Match, verdict: str) -> tuple[str, str, str]:
    vid = VerdictId.from_key(m["key"])
    if vid.verdict != verdict:
        raise UnknownRule(f"verdict chain {c.name}: key {m['key']!r} says {vid.verdict}, rule {verdict}")
    want = ct_mark_statement(number, vid.direction) if vid.verdict == "accept" and vid.direction else None
    if m["mark"] != want:
        raise UnknownRule(f"verdict chain {c.name}: mark {m['mark']!r}, expected {want!r}")
    return verdict, m["key"], c.rules[0]


class NotDispatched(AssertionError):
    """The base chains do not send this interface's packets to its own chain."""


_CHAIN = r"[A-Za-z0-9_.-]+"
_HEX = r"0x[0-9a-f]+"


def _parse_vmap(s: NftSet) -> dict:
    """A verdict map: key -> ('goto', chain) or ('verdict', accept|drop)."""
    out: dict = {}
    for el in s.elements:
        m = re.fullmatch(rf'(?P<key>.+?) : (?:goto (?P<chain>{_CHAIN})|(?P<verdict>accept|drop))', el)
        if not m:
            raise UnknownRule(f"bad element {el!r} in map {s.name}")
        text = m["key"]
        if s.type == "ifname":
            km = re.fullmatch(r'"([^"]+)"', text)
            if not km:
                raise UnknownRule(f"unquoted ifname {text!r} in {s.name}")
            key = km.group(1)
        elif s.type == "mark":
            if not re.fullmatch(_HEX, text):
                raise UnknownRule(f"bad mark {text!r} in {s.name}")
            key = int(text, 16)
        elif s.type in ("ipv4_addr", "ipv6_addr"):
            lo, hi = _addr_interval(text, 4 if s.type == "ipv4_addr" else 6)
            if lo != hi:
                raise UnknownRule(f"range {text!r} in map {s.name}")
            key = lo
        else:
            raise UnknownRule(f"unknown map type {s.type!r} in {s.name}")
        if key in out:
            raise UnknownRule(f"duplicate key {text!r} in map {s.name} (the kernel rejects it)")
        out[key] = ("goto", m["chain"]) if m["chain"] else ("verdict", m["verdict"])
    return out


@dataclass(frozen=True)
class _Context:
    iifname: str
    oifname: str
    mark: int


class Simulator:
    """Parses a ruleset once (every chain, every set, every map: an unknown form raises
    here, not only when a packet happens to reach it) and judges packets.

    Dispatch is walked like the kernel: the base chain of the direction
    (`forward_egress` / `forward_ingress`) looks the packet up in its verdict maps in
    order. A routed port is seen by name (iifname/oifname); a bridged port only as the
    bridge, so the `bridge` table's stamps are replayed: egress carries the port's
    `port_from` mark, ingress the mark its `to_<port>` chain ORs in (`via="bridge"`), or
    no mark at all when the host routes the packet into the bridge (`via="routed"`,
    dispatched by destination address)."""

    def __init__(self, ruleset: Ruleset):
        self.table = inet_table(ruleset)
        self.sets = {s.name: parse_set(s) for s in self.table.sets if s.map_to is None and not s.extra}
        if any(s.extra and s.name not in DYNAMIC_SETS for s in self.table.sets):
            raise UnknownRule("a set with declaration statements other than the log limits'")
        # dispatch maps (ifname, mark, address) and the policy chains' maps (keyed by
        # protocol and ports, with or without an address in front)
        self.vmaps = {s.name: _parse_vmap(s) for s in self.table.sets
                      if s.map_to == "verdict" and "inet_proto" not in s.type}
        self.cmaps = {s.name: parse_concat_map(s) for s in self.table.sets
                      if s.map_to == "verdict" and "inet_proto" in s.type}
        if any(s.map_to not in (None, "verdict") for s in self.table.sets):
            raise UnknownRule("unknown map kind in the inet table")
        names = [c.name for c in self.table.chains]
        if len(set(names)) != len(names):
            raise UnknownRule("duplicate chain names")
        regular = {c.name for c in self.table.chains if c.hook is None}
        self.chains: dict[str, list[ParsedRule]] = {}
        self.base: dict[str, list[tuple[str, int, str]]] = {}
        self.verdicts = {c.name: parse_verdict_chain(c) for c in self.table.chains
                         if c.hook is None and number_of_chain(c.name) is not None}
        for c in self.table.chains:
            if c.name in self.verdicts:
                continue
            if c.hook is None:
                self.chains[c.name] = [parse_rule(r, self.sets, regular, self.cmaps) for r in c.rules]
            else:
                self.base[c.name] = self._parse_base_chain(c, regular)
        for name in ("forward_egress", "forward_ingress"):
            if name not in self.base:
                raise UnknownRule(f"no base chain {name}")
        self.port_from, self.to_mark = self._parse_bridge(ruleset)

    def _parse_base_chain(self, c: Chain, regular: set[str]) -> list[tuple[str, int, str]]:
        if not re.fullmatch(r"type filter hook (forward|input|output) priority -?\d+; policy accept;", c.hook):
            raise UnknownRule(f"unknown base chain {c.name}: {c.hook!r}")
        out = []
        for r in c.rules:
            u = re.fullmatch(r'(?P<key>iifname|oifname) "(?P<pat>[^"*]+\*?)"(?: (?P=key) != @instance_ports)? '
                             r'(?:counter drop|goto (?P<v>v_\d+))', r)
            if u and u["v"] and u["v"] not in regular:
                raise UnknownRule(f"goto to a missing chain: {r!r}")
            if u:                                   # an unknown instance interface: dropped
                out.append((u["key"], -1, u["pat"]))
                continue
            m = re.fullmatch(rf"(?P<key>iifname|oifname|ip daddr|ip6 daddr|meta mark & (?P<mask>{_HEX})) "
                             rf"vmap @(?P<map>{_CHAIN})", r)
            if not m or m["map"] not in self.vmaps:
                raise UnknownRule(f"unknown base chain rule in {c.name}: {r!r}")
            key = "meta mark" if m["mask"] else m["key"]
            out.append((key, int(m["mask"], 16) if m["mask"] else 0, m["map"]))
            for kind, target in self.vmaps[m["map"]].values():
                if kind == "goto" and target not in regular:
                    raise UnknownRule(f"map {m['map']} jumps to a missing chain {target}")
        return out

    @staticmethod
    def _parse_bridge(ruleset: Ruleset) -> tuple[dict[str, int], dict[str, int]]:
        tables = [t for t in ruleset.tables if (t.family, t.name) == ("bridge", TABLE)]
        if not tables:
            return {}, {}
        (bt,) = tables
        sets = {s.name: s for s in bt.sets}
        chains = {c.name: c for c in bt.chains}
        port_from, to_mark = {}, {}
        if "port_from" not in sets:                 # no bridged port: only the unknown-port drops
            return port_from, to_mark
        for el in sets["port_from"].elements:
            m = re.fullmatch(rf'"(?P<name>[^"]+)" : (?P<mark>{_HEX})', el)
            if not m:
                raise UnknownRule(f"bad port_from element {el!r}")
            port_from[m["name"]] = int(m["mark"], 16)
        for el in sets["port_to"].elements:
            m = re.fullmatch(rf'"(?P<name>[^"]+)" : goto (?P<chain>{_CHAIN})', el)
            if not m or m["chain"] not in chains:
                raise UnknownRule(f"bad port_to element {el!r}")
            rules = chains[m["chain"]].rules
            rm = re.fullmatch(rf"meta mark set meta mark \| (?P<mark>{_HEX})", rules[0]) if len(rules) == 1 else None
            if not rm:
                raise UnknownRule(f"unknown rules in bridge chain {m['chain']}: {rules!r}")
            to_mark[m["name"]] = int(rm["mark"], 16)
        pre = [c for c in bt.chains if c.hook and "prerouting" in c.hook]
        stamp = "meta mark set iifname map @port_from"
        if len(pre) != 1 or stamp not in pre[0].rules or \
                pre[0].rules[pre[0].rules.index(stamp) + 1:] not in ((), ("iifname vmap @port_guard",)):
            raise UnknownRule("the bridge prerouting chain does not stamp port_from (then guard)")
        BridgeGuardSim(bt)          # the first-hop guard's chains: strict, parsed here too
        return port_from, to_mark

    def _context(self, iface: str, direction: str, via: str) -> _Context:
        bridge = "<bridge>"          # what the inet hooks see for a bridged port
        if iface not in self.port_from:
            return _Context(iface, "<host>", 0) if direction == EGRESS else _Context("<host>", iface, 0)
        if direction == EGRESS:
            return _Context(bridge, "<host>", self.port_from[iface])
        if via == "bridge":
            return _Context(bridge, bridge, 0 | self.to_mark[iface])
        if via == "routed":
            return _Context("<uplink>", bridge, 0)
        raise ValueError(via)

    def dispatch(self, iface: str, direction: str, packet: Packet, via: str = "bridge") -> tuple:
        ctx = self._context(iface, direction, via)
        base = "forward_egress" if direction == EGRESS else "forward_ingress"
        for key, mask, mapname in self.base[base]:
            if mask == -1:                          # (key, -1, pattern): fail closed
                value = ctx.iifname if key == "iifname" else ctx.oifname
                if value == mapname or (mapname.endswith("*") and value.startswith(mapname[:-1])):
                    return ("verdict", "drop", f"{base}: {key} {mapname!r} -> drop (unknown interface)")
                continue
            if key == "iifname":
                value = ctx.iifname
            elif key == "oifname":
                value = ctx.oifname
            elif key == "meta mark":
                value = ctx.mark & mask
            else:
                value = _field(packet, key)
                if value is None:
                    continue
            hit = self.vmaps[mapname].get(value)
            if hit is not None:
                return hit + (f"{base}: {key} vmap @{mapname} -> {hit[0]} {hit[1]}",)
        raise NotDispatched(f"{iface} {direction} ({via}): no verdict map in {base} matches")

    def judge(self, iface: str, direction: str, packet: Packet, via: str = "bridge") -> SimResult:
        if direction not in (INGRESS, EGRESS):
            raise ValueError(direction)
        _version(packet)
        kind, chain, how = self.dispatch(iface, direction, packet, via)
        trace = [how]
        # the per-interface chain: `interface_chain_name`, or that name with a `_<n>`
        # suffix where the compiler had to disambiguate two interfaces' names
        expected = interface_chain_name(SimpleNamespace(name=iface), direction)  # type: ignore[arg-type]
        if kind != "goto" or (chain != expected and not re.fullmatch(re.escape(expected) + r"_\d+", chain)):
            raise NotDispatched(f"{iface} {direction} dispatches to {kind} {chain}, expected {expected}")
        returns: list[tuple[str, int]] = []        # `jump`: where to go on at a chain's end
        start = 0
        for _hop in range(16):                       # no loops expected
            if chain in self.verdicts:              # a verdict chain: counts, marks, decides
                verdict, key, text = self.verdicts[chain]
                trace.append(f"{chain}[0] {text}")
                return SimResult(verdict, chain, 0, text, tuple(trace), key)
            if chain not in self.chains:
                raise UnknownRule(f"missing chain {chain}")
            for i, rule in enumerate(self.chains[chain]):
                if i < start or not rule.match(packet):
                    continue
                if rule.jump is not None:
                    trace.append(f"{chain}[{i}] {rule.text}")
                    returns.append((chain, i + 1))
                    chain, start = rule.jump, 0
                    break
                if rule.decide is not None:
                    decided = rule.decide(packet)
                    if decided is None:
                        continue
                    trace.append(f"{chain}[{i}] {rule.text} -> {decided}")
                    if decided.startswith("goto "):
                        chain = decided[len("goto "):]
                        break
                    return SimResult(decided, chain, i, rule.text, tuple(trace))
                if rule.vmap is not None:
                    trace.append(f"{chain}[{i}] {rule.text}")
                    return SimResult(rule.vmap[packet.state], chain, i, rule.text, tuple(trace))
                if rule.goto is not None:
                    trace.append(f"{chain}[{i}] {rule.text}")
                    chain, start = rule.goto, 0
                    break
                trace.append(f"{chain}[{i}] {rule.text}")
                return SimResult(rule.verdict, chain, i, rule.text, tuple(trace))
            else:
                if returns:                          # the end of a jumped-to chain: back
                    trace.append(f"{chain}: end of chain, return")
                    chain, start = returns.pop()
                    continue
                trace.append(f"{chain}: end of chain, base chain policy accept")
                return SimResult("accept", chain, None, "", tuple(trace))
        raise UnknownRule("goto loop")


def simulate(ruleset: Ruleset, iface: str, direction: str, packet: Packet,
             via: str = "bridge") -> SimResult:
    """The verdict of the compiled ruleset for one packet on `iface` in `direction`.
    (Parses the whole ruleset each call; build a `Simulator` once for many packets.)"""
    return Simulator(ruleset).judge(iface, direction, packet, via)
