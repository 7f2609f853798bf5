"""The desired-state document (SPEC §2) as pydantic models: shape and per-field checks.

Cross-references (unknown groups, duplicates, mixing rules) are checked in
`agent.model.validate`, which also turns pydantic's errors into `path: value: message` lines.
Extra fields are ignored, as the spec allows.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from functools import lru_cache
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

PROTOCOLS = ("tcp", "udp", "icmp", "icmpv6", "gre", "all")
PORTED = ("tcp", "udp")
IFNAME = re.compile(r"[A-Za-z0-9_.@+-]{1,15}")      # within the kernel's dev_valid_name
MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
PORT = re.compile(r"-?[0-9]{1,5}")                    # ASCII digits only: int() takes '8_0', '٨٠'
IFPATTERN = re.compile(r"[A-Za-z0-9_.@+-]{1,15}\*?")   # a name, or a name prefix and '*'
DEFAULT_INSTANCE_INTERFACES = ("tap*", "vnet*")        # docs/fail-closed.md
MAX_CONNECTIONS = 2**32 - 1                             # nft `ct count over N` takes a u32
NOT_INSTANCE_NAMES = {".": "not a valid interface name", "..": "not a valid interface name",
                      "lo": "the loopback device is no instance interface"}


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _word(*values: str) -> Any:
    """A Literal of lowercase words that also accepts other cases ('TCP')."""
    return Annotated[Literal[values], BeforeValidator(_lower)]


Direction = _word("ingress", "egress")
Policy = _word("accept", "drop")
Mode = _word("enforce", "audit")
RATE = re.compile(r"^[1-9][0-9]{0,6}/(second|minute)$")


def check_rate(text: str) -> str:
    """A log rate: `N/second` or `N/minute`."""
    if not RATE.fullmatch(text.strip()):
        raise ValueError("not a rate (N/second or N/minute)")
    return text.strip()


Rate = Annotated[str, AfterValidator(check_rate)]
Protocol = _word(*PROTOCOLS)
NicType = _word("intranet", "internet")
NetworkType = _word("vpc", "classic")
GroupType = _word("default", "custom", "enterprise")
Attachment = _word("routed", "bridged")


def parse_port_range(text: Any) -> Optional[tuple[int, int]]:
    """'80/90' -> (80, 90); '-1/-1' -> None. Raises ValueError with a plain message."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = f"{text}/{text}"
    if not isinstance(text, str):
        raise ValueError("must be a string 'from/to'")
    parts = text.strip().split("/")
    if len(parts) != 2:
        raise ValueError("must be 'from/to'")
    if not all(PORT.fullmatch(part.strip()) for part in parts):
        raise ValueError("ports must be whole numbers")
    lo, hi = int(parts[0]), int(parts[1])
    if (lo, hi) == (-1, -1):
        return None
    if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
        raise ValueError("ports must be within 1..65535")
    if lo > hi:
        raise ValueError("start is after end")
    return lo, hi


def parse_network(text: Any) -> Network:
    if not isinstance(text, str):
        raise ValueError("must be a CIDR string")
    if "%" in text:
        raise ValueError("an IPv6 scope (%...) has no place in a CIDR")
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            raise ValueError("host bits are set (did you mean the network address?)") from None
        raise ValueError("not an IPv4 or IPv6 CIDR") from None


@lru_cache(maxsize=1 << 20)
def parse_address(text: str) -> Union[ipaddress.IPv4Address, ipaddress.IPv6Address]:
    """An address, parsed once per process. `ipaddress` parses in Python (~25 us an
    address; a fleet document lends 100,000 member addresses, each read twice): the text
    is read by inet_pton (C) instead, and an IPv4 text is taken only in its canonical form
    (no leading zeros: `ipaddress` refuses them too). ValueError if not an address."""
    if "%" in text:
        raise ValueError("not an IPv4 or IPv6 address (no scope)")
    try:
        if ":" in text:
            return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, text))
        packed = socket.inet_pton(socket.AF_INET, text)
        if socket.inet_ntoa(packed) == text:
            return ipaddress.IPv4Address(packed)
    except OSError:
        pass
    return ipaddress.ip_address(text)


def check_address(text: str) -> str:
    """An interface address: a plain IPv4/IPv6 address, no prefix length."""
    if "/" in text:
        raise ValueError("an interface address takes no prefix length")
    if "%" in text:
        raise ValueError("an IPv6 scope (%...) has no place in an interface address")
    try:
        parse_address(text)
    except ValueError:
        raise ValueError("not an IPv4 or IPv6 address") from None
    return text


def check_cidr(text: str) -> str:
    parse_network(text)
    return text


def check_interface_pattern(text: str) -> str:
    """An `instance_interfaces` pattern: an interface name, or a name prefix followed by
    '*' (nft's wildcard); never one that matches the loopback device."""
    if not IFPATTERN.fullmatch(text):
        raise ValueError("not an interface name pattern (1-15 characters of A-Z a-z 0-9 _ . @ + -, "
                         "optionally followed by '*')")
    prefix, wild = text.rstrip("*"), text.endswith("*")
    if prefix == "lo" or (wild and "lo".startswith(prefix)):
        raise ValueError("the pattern matches the loopback device")
    return text


def parse_interface_patterns(text: str) -> tuple[str, ...]:
    """The value of the --instance-interfaces option: patterns separated by commas or
    spaces ('' turns the unknown-interface drops off). ValueError names the bad one."""
    patterns = tuple(p for p in re.split(r"[,\s]+", text.strip()) if p)
    for p in patterns:
        try:
            check_interface_pattern(p)
        except ValueError as exc:
            raise ValueError(f"{p!r}: {exc}") from None
    return tuple(dict.fromkeys(patterns))


Address = Annotated[str, AfterValidator(check_address)]
InterfacePattern = Annotated[str, AfterValidator(check_interface_pattern)]
Quota = Optional[Annotated[int, Field(ge=0, le=MAX_CONNECTIONS, strict=True)]]
Cidr = Annotated[str, AfterValidator(check_cidr)]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)


class PrefixListDoc(_Doc):
    id: str = Field(min_length=1)
    name: Optional[str] = None
    entries: list[Cidr] = Field(default_factory=list)


class RuleDoc(_Doc):
    id: Optional[str] = None
    direction: Direction
    policy: Policy = "accept"
    priority: int = Field(default=1, ge=1, le=100, strict=True)
    protocol: Protocol
    port_range: Optional[str | int] = None
    source_port_range: Optional[str | int] = None
    source_cidr: Optional[Cidr] = None
    source_group: Optional[str] = None
    source_prefix_list: Optional[str] = None
    dest_cidr: Optional[Cidr] = None
    dest_group: Optional[str] = None
    dest_prefix_list: Optional[str] = None
    nic_type: NicType = "intranet"
    description: str = ""
    mode: Optional[Mode] = None         # audit: a drop is counted, logged and accepted (docs/observability.md)
    log: bool = Field(default=False, strict=True)     # log every packet this rule decides (within the limits)


    @field_validator("port_range", "source_port_range", mode="after")
    @classmethod
    def _ports(cls, value: Optional[str | int]) -> Optional[str | int]:
        if value is not None:
            parse_port_range(value)
        return value


class SecurityGroupDoc(_Doc):
    id: str = Field(min_length=1)
    name: Optional[str] = None
    type: GroupType = "custom"
    network: NetworkType = "vpc"
    inner_access: Optional[Policy] = None
    allow_http: bool = False
    allow_https: bool = False
    rules: list[RuleDoc] = Field(default_factory=list)
    description: str = ""
    mode: Optional[Mode] = None         # the default of its rules' `mode`



def check_mac(mac: Optional[str]) -> Optional[str]:
    if mac is not None and not MAC.fullmatch(mac):
        raise ValueError("not a MAC address (aa:bb:cc:dd:ee:ff)")
    return mac.lower() if mac else mac


def _allowed_item(value: Any) -> Any:
    """`10.0.0.100` is short for `{address: 10.0.0.100}`."""
    if isinstance(value, str):
        return {"address": value}
    if not isinstance(value, dict):
        raise ValueError("must be an address or CIDR, or a mapping {address, mac}")
    return value


class AllowedAddressDoc(_Doc):
    """An allowed address pair: an address or CIDR the interface may also use (a VIP),
    optionally with the MAC it is used with."""
    address: Cidr
    mac: Optional[str] = None

    @field_validator("mac", mode="after")
    @classmethod
    def _mac(cls, mac: Optional[str]) -> Optional[str]:
        return check_mac(mac)


AllowedAddress = Annotated[AllowedAddressDoc, BeforeValidator(_allowed_item)]


class InterfaceDoc(_Doc):
    name: str
    nic_type: NicType = "intranet"
    mac: Optional[str] = None
    addresses: list[Address] = Field(default_factory=list)
    attachment: Optional[Attachment] = None
    allowed_addresses: list[AllowedAddress] = Field(default_factory=list)
    spoofing_guard: bool = True
    max_connections: Quota = None       # conntrack quota per direction; 0: none (docs/fail-closed.md)

    @field_validator("name", mode="after")
    @classmethod
    def _name(cls, name: str) -> str:
        if name in NOT_INSTANCE_NAMES:
            raise ValueError(NOT_INSTANCE_NAMES[name])
        if not IFNAME.fullmatch(name):
            raise ValueError("not a valid interface name (1-15 characters, no spaces or '/')")
        return name

    @field_validator("mac", mode="after")
    @classmethod
    def _mac(cls, mac: Optional[str]) -> Optional[str]:
        return check_mac(mac)


class InstanceDoc(_Doc):
    id: str = Field(min_length=1)
    host: Optional[str] = Field(default=None, min_length=1)
    network: NetworkType = "vpc"
    security_groups: list[str] = Field(min_length=1)
    interfaces: list[InterfaceDoc] = Field(default_factory=list)



class LogDoc(_Doc):
    """Top-level `log:` settings (docs/observability.md, "Log settings")."""
    drops: bool = Field(default=False, strict=True)     # log every drop (not only rules with log: true)
    rate: Rate = "10/second"            # per rule, and per interface (and direction)
    burst: int = Field(default=5, ge=1, le=10000, strict=True)
    global_rate: Rate = "200/second"    # per IP version, all rules and interfaces together
    group: int = Field(default=2701, ge=1, le=65535, strict=True)   # NFLOG group


class DocumentDoc(_Doc):
    host: Optional[str] = Field(default=None, min_length=1)
    strict: bool = Field(default=False, strict=True)     # warnings (unknown fields) are errors
    attachment: Attachment = "routed"
    anti_spoofing: bool = True
    revoke_connections: bool = True
    instance_interfaces: list[InterfacePattern] = Field(default=list(DEFAULT_INSTANCE_INTERFACES))
    max_connections: Quota = None       # the interfaces' default quota
    mode: Mode = "enforce"              # the default of groups' and rules' `mode`
    log: LogDoc = Field(default_factory=LogDoc)
    prefix_lists: list[PrefixListDoc] = Field(default_factory=list)
    security_groups: list[SecurityGroupDoc] = Field(default_factory=list)
    instances: list[InstanceDoc] = Field(default_factory=list)


    @model_validator(mode="before")
    @classmethod
    def _none_lists(cls, data: Any) -> Any:
        # `instances:` with nothing after it is null in YAML; treat as empty.
        if isinstance(data, dict):
            return {k: ([] if v is None and k in ("prefix_lists", "security_groups", "instances",
                                                          "instance_interfaces")
                        else v) for k, v in data.items()}
        return data
