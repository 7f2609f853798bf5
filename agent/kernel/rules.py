"""One rule text, as the compiler renders it, encoded as the kernel's NFT_MSG_NEWRULE
attributes exactly as nft 1.0.6 / libnftnl encode the same text in an inet table
(checked byte for byte against nft's messages, tests/unit/test_nl_rules.py, and as
`nft --debug=netlink` listings, tests/kernel/test_nl_rules_kernel.py). Only a strict
grammar; any other text raises ValueError (the caller commits it through libnftables):

    [ (ip|ip6) (saddr|daddr) (ADDR | ADDR-ADDR | @set) | meta nfproto (ipv4|ipv6) ]
        [meta l4proto N|N-M] [th sport N|N-M] [th dport N|N-M] (goto|jump) CHAIN
    (ip|ip6) (saddr|daddr) . meta l4proto [. th sport] [. th dport] vmap @map
    (ip|ip6) (saddr|daddr) @set meta l4proto [. th sport] [. th dport] vmap @map

What nft makes of them: an address match first loads `meta nfproto` and compares it (its
dependency in an inet table); a value is `cmp eq`, a range `cmp gte` + `cmp lte` (never
the range expression), a set `lookup`; every load goes to register 1. nft merges the
adjacent equality matches `th sport N th dport M` into one 4-byte load and compare. A
lookup key (a concatenation) lays its fields out from register 1, each in whole 32-bit
registers, named NFT_REG_1..4 where a field starts on a 16-byte boundary and
NFT_REG32_00 + its 32-bit offset otherwise; `meta l4proto` in a concatenation is
followed by `byteorder hton` (length 1, size 2). Not sent: libnftnl's NFTA_LOOKUP_SET_ID
(nft numbers its cached sets; the kernel resolves a set by name and uses the id only for
a set added in the same batch, which a refill never does).
"""
from __future__ import annotations

import functools
import ipaddress
import re
import struct
from typing import Callable, Optional

from agent.kernel.netlink import attr, nest

LIST_ELEM, EXPR_NAME, EXPR_DATA, DATA_VALUE, DATA_VERDICT = 1, 1, 2, 1, 2
RULE_TABLE, RULE_CHAIN, RULE_EXPRESSIONS = 1, 2, 4
META_DREG, META_KEY, META_NFPROTO, META_L4PROTO = 1, 2, 15, 16
CMP_SREG, CMP_OP, CMP_DATA, CMP_EQ, CMP_LTE, CMP_GTE = 1, 2, 3, 0, 3, 5
PAYLOAD_DREG, PAYLOAD_BASE, PAYLOAD_OFFSET, PAYLOAD_LEN, NETWORK, TRANSPORT = 1, 2, 3, 4, 1, 2
LOOKUP_SET, LOOKUP_SREG, LOOKUP_DREG = 1, 2, 3
IMMEDIATE_DREG, IMMEDIATE_DATA, VERDICT_CODE, VERDICT_CHAIN = 1, 2, 1, 2
BYTEORDER_SREG, BYTEORDER_DREG, BYTEORDER_OP, BYTEORDER_LEN, BYTEORDER_SIZE, HTON = 1, 2, 3, 4, 5, 1
REG_VERDICT, REG_1, REG32_00 = 0, 1, 8
VERDICTS = {"jump": -3, "goto": -4}                      # NFT_JUMP, NFT_GOTO
NFPROTO = {"ipv4": 2, "ipv6": 10}
# (version, field) -> (nfproto, network header offset, length)
ADDRESSES = {("ip", "saddr"): (2, 12, 4), ("ip", "daddr"): (2, 16, 4),
             ("ip6", "saddr"): (10, 8, 16), ("ip6", "daddr"): (10, 24, 16)}
PORTS = {"sport": 0, "dport": 2}                         # transport header offsets
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,254}")
NUMBER = re.compile(r"0|[1-9][0-9]{0,4}")


# -- expressions ------------------------------------------------------------------------
def _u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack(">I", value))


def _string(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def _expr(name: str, *parts: bytes) -> bytes:
    return nest(LIST_ELEM, _string(EXPR_NAME, name), nest(EXPR_DATA, *parts))


@functools.lru_cache(maxsize=4096)
def meta(key: int, reg: int = REG_1) -> bytes:
    return _expr("meta", _u32(META_KEY, key), _u32(META_DREG, reg))


@functools.lru_cache(maxsize=4096)
def cmp(op: int, value: bytes, reg: int = REG_1) -> bytes:
    return _expr("cmp", _u32(CMP_SREG, reg), _u32(CMP_OP, op), nest(CMP_DATA, attr(DATA_VALUE, value)))


@functools.lru_cache(maxsize=4096)
def payload(base: int, offset: int, length: int, reg: int = REG_1) -> bytes:
    return _expr("payload", _u32(PAYLOAD_DREG, reg), _u32(PAYLOAD_BASE, base), _u32(PAYLOAD_OFFSET, offset),
                 _u32(PAYLOAD_LEN, length))


@functools.lru_cache(maxsize=4096)
def lookup(set_name: str, reg: int = REG_1, verdict_map: bool = False) -> bytes:
    dreg = [_u32(LOOKUP_DREG, REG_VERDICT)] if verdict_map else []
    return _expr("lookup", _u32(LOOKUP_SREG, reg), *dreg, _string(LOOKUP_SET, set_name))


@functools.lru_cache(maxsize=4096)
def byteorder_hton(reg: int) -> bytes:
    return _expr("byteorder", _u32(BYTEORDER_SREG, reg), _u32(BYTEORDER_DREG, reg), _u32(BYTEORDER_OP, HTON),
                 _u32(BYTEORDER_LEN, 1), _u32(BYTEORDER_SIZE, 2))


@functools.lru_cache(maxsize=4096)
def immediate_verdict(code: str, chain: str) -> bytes:
    verdict = nest(DATA_VERDICT, _u32(VERDICT_CODE, VERDICTS[code] & 0xFFFFFFFF), _string(VERDICT_CHAIN, chain))
    return _expr("immediate", _u32(IMMEDIATE_DREG, REG_VERDICT), nest(IMMEDIATE_DATA, verdict))


def register(slot: int) -> int:
    """The register name nft gives a key field starting `slot` 32-bit words into the key."""
    return REG_1 + slot // 4 if slot % 4 == 0 else REG32_00 + slot


# -- values -----------------------------------------------------------------------------
def _name(text: str, token: str) -> str:
    if not NAME.fullmatch(token):
        raise ValueError(f"rule {text!r}: {token!r} is not a plain chain or set name")
    return token


def _set_name(text: str, token: str) -> str:
    if not token.startswith("@"):
        raise ValueError(f"rule {text!r}: {token!r} is not a set reference")
    return _name(text, token[1:])


def _address(text: str, token: str, version: str) -> bytes:
    try:
        value = ipaddress.ip_address(token)
    except ValueError:
        raise ValueError(f"rule {text!r}: {token!r} is not an address") from None
    if value.version != (4 if version == "ip" else 6) or str(value) != token:
        raise ValueError(f"rule {text!r}: {token!r} is not a canonical {version} address")
    return value.packed


def _integer(text: str, token: str, size: int) -> bytes:
    if not NUMBER.fullmatch(token) or int(token) >= 1 << (8 * size):
        raise ValueError(f"rule {text!r}: {token!r} is not a number below {1 << (8 * size)}")
    return int(token).to_bytes(size, "big")


def _bounds(text: str, token: str, parse: Callable[[str], bytes]) -> tuple[bytes, Optional[bytes]]:
    """A value (hi None) or a range `lo-hi` with lo <= hi, each encoded by `parse`."""
    lo_text, dash, hi_text = token.partition("-")
    lo = parse(lo_text)
    if not dash:
        return lo, None
    hi = parse(hi_text)
    if lo > hi:              # big-endian bytes of one length compare as the numbers
        raise ValueError(f"rule {text!r}: empty range {token!r}")
    return lo, hi


def _compare(lo: bytes, hi: Optional[bytes]) -> list[bytes]:
    return [cmp(CMP_EQ, lo)] if hi is None else [cmp(CMP_GTE, lo), cmp(CMP_LTE, hi)]


# -- the grammar ------------------------------------------------------------------------
def _tokens(tokens: list[str], at: int, count: int, text: str) -> list[str]:
    if len(tokens) < at + count:
        raise ValueError(f"rule {text!r} ends early")
    return tokens[at:at + count]


def _address_load(text: str, version: str, field: str) -> tuple[list[bytes], int]:
    """The nfproto dependency and the address's load into register 1; the length."""
    if (version, field) not in ADDRESSES:
        raise ValueError(f"rule {text!r}: {version} {field} is not an address match")
    nfproto, offset, length = ADDRESSES[(version, field)]
    return [meta(META_NFPROTO), cmp(CMP_EQ, bytes([nfproto])), payload(NETWORK, offset, length)], length


def _head(text: str, tokens: list[str]) -> tuple[list[bytes], int]:
    """`(ip|ip6) (saddr|daddr) (ADDR|ADDR-ADDR|@set)` or `meta nfproto (ipv4|ipv6)` or
    nothing: the expressions and how many tokens they took."""
    if tokens[:1] in (["ip"], ["ip6"]):
        version, field, value = _tokens(tokens, 0, 3, text)
        out, _length = _address_load(text, version, field)
        if value.startswith("@"):
            return out + [lookup(_set_name(text, value))], 3
        return out + _compare(*_bounds(text, value, lambda t: _address(text, t, version))), 3
    if tokens[:2] == ["meta", "nfproto"]:
        proto = _tokens(tokens, 2, 1, text)[0]
        if proto not in NFPROTO:
            raise ValueError(f"rule {text!r}: meta nfproto {proto!r} is not ipv4 or ipv6")
        return [meta(META_NFPROTO), cmp(CMP_EQ, bytes([NFPROTO[proto]]))], 3
    return [], 0


def _match_rule(text: str, tokens: list[str]) -> list[bytes]:
    out, at = _head(text, tokens)
    if tokens[at:at + 2] == ["meta", "l4proto"]:
        proto = _tokens(tokens, at + 2, 1, text)[0]
        out += [meta(META_L4PROTO)] + _compare(*_bounds(text, proto, lambda t: _integer(text, t, 1)))
        at += 3
    ports: dict[str, tuple[bytes, Optional[bytes]]] = {}
    for name in PORTS:
        if tokens[at:at + 2] == ["th", name]:
            ports[name] = _bounds(text, _tokens(tokens, at + 2, 1, text)[0], lambda t: _integer(text, t, 2))
            at += 3
    if len(ports) == 2 and ports["sport"][1] is None and ports["dport"][1] is None:   # nft merges them
        out += [payload(TRANSPORT, 0, 4), cmp(CMP_EQ, ports["sport"][0] + ports["dport"][0])]
    else:
        for name, bounds in ports.items():
            out += [payload(TRANSPORT, PORTS[name], 2)] + _compare(*bounds)
    verdict = tokens[at:]
    if len(verdict) != 2 or verdict[0] not in VERDICTS:
        raise ValueError(f"rule {text!r}: {' '.join(verdict)!r} is not the grammar's match tail and verdict")
    return out + [immediate_verdict(verdict[0], _name(text, verdict[1]))]


def _lookup_rule(text: str, tokens: list[str]) -> list[bytes]:
    """`A . meta l4proto [. th sport] [. th dport] vmap @map` (A the address: a key field)
    or `A @set meta l4proto [...] vmap @map` (the address looked up in a set first)."""
    version, field, link = _tokens(tokens, 0, 3, text)
    out, length = _address_load(text, version, field)
    if link == ".":
        slot, rest = length // 4, tokens[3:]
    else:
        out.append(lookup(_set_name(text, link)))
        slot, rest = 0, tokens[3:]
    if rest[:2] != ["meta", "l4proto"]:
        raise ValueError(f"rule {text!r}: a lookup key is not followed by meta l4proto")
    fields, at = ["l4proto"], 2
    for name in PORTS:
        if rest[at:at + 3] == [".", "th", name]:
            fields.append(name)
            at += 3
    if len(rest) != at + 2 or rest[at] != "vmap":
        raise ValueError(f"rule {text!r}: {' '.join(rest[at:])!r} is not `vmap @map`")
    concatenated = link == "." or len(fields) > 1
    for name in fields:
        reg = register(slot)
        if name == "l4proto":
            out += [meta(META_L4PROTO, reg)] + [byteorder_hton(reg)] * concatenated
        else:
            out.append(payload(TRANSPORT, PORTS[name], 2, reg))
        slot += 1
    return out + [lookup(_set_name(text, rest[at + 1]), REG_1, verdict_map=True)]


def rule_expressions(text: str) -> list[bytes]:
    """The NFTA_LIST_ELEM attributes (one per expression) of a rule text of the grammar;
    ValueError for any other text."""
    tokens = text.split()
    if not tokens:
        raise ValueError("an empty rule")
    return _lookup_rule(text, tokens) if "vmap" in tokens else _match_rule(text, tokens)


@functools.lru_cache(maxsize=16384)
def _expressions(text: str) -> bytes:
    """NFTA_RULE_EXPRESSIONS of a rule text; remembered (~0.5 KB each): a rule edit
    refills chains whose other rules were encoded before (~60 us a rule, ~1 us again)."""
    return nest(RULE_EXPRESSIONS, *rule_expressions(text))


def rule_attributes(table: str, chain: str, text: str) -> bytes:
    """NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS of NFT_MSG_NEWRULE
    appending `text` to the chain."""
    return _string(RULE_TABLE, table) + _string(RULE_CHAIN, chain) + _expressions(text)


@functools.lru_cache(maxsize=16384)
def rule_lookups(text: str) -> tuple[tuple[str, tuple[str, ...], bool], ...]:
    """The sets a rule text of the grammar looks up: (name, the key's types, whether as a
    verdict map). The kernel checks only that a key fits the registers (it takes `ip6
    saddr @s4` for a 4-byte set), nft checks the types: agent.kernel.batch does it here."""
    _expressions(text)                                       # in the grammar, or ValueError
    tokens = text.split()
    if tokens[0] not in ("ip", "ip6"):
        return ()
    address = "ipv4_addr" if tokens[0] == "ip" else "ipv6_addr"
    if "vmap" not in tokens:
        return ((tokens[2][1:], (address,), False),) if tokens[2].startswith("@") else ()
    ports = tuple("inet_service" for t in tokens if t in PORTS)
    if tokens[2] == ".":
        return ((tokens[-1][1:], (address, "inet_proto") + ports, True),)
    return ((tokens[2][1:], (address,), False), (tokens[-1][1:], ("inet_proto",) + ports, True))
