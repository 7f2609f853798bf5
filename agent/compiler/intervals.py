"""Intervals of addresses, protocols and ports as nft text (pure; shared by the builder,
the compiler and the shared sets)."""
from __future__ import annotations

import ipaddress
import socket


def net_interval(net) -> tuple[int, int]:
    lo = int(net.network_address)
    return lo, lo | ((1 << (net.max_prefixlen - net.prefixlen)) - 1)     # == broadcast


def render_interval(version: int, iv: tuple[int, int]) -> str:
    """version 4/6: an address range; 0: a plain integer range (protocol, port)."""
    lo, hi = iv
    if version:
        text = _ADDR_TEXT[version]
        return text(lo) if lo == hi else f"{text(lo)}-{text(hi)}"
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _ipv4_text(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "big"))      # == str(IPv4Address(value))


def _ipv6_text(value: int) -> str:
    """RFC 5952, as nft and ipaddress print it; inet_ntop (C) is ~10x faster than
    ipaddress and agrees with it except for the embedded-IPv4 forms it prints dotted."""
    text = socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))
    return text if "." not in text else str(ipaddress.IPv6Address(value))


_ADDR_TEXT = {4: _ipv4_text, 6: _ipv6_text}
