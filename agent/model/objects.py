"""The validated desired state as frozen, sorted domain objects.

`agent.model.validate.load_state` is the only producer: it parses a document, checks it and
calls `build_state`. Everything downstream (policy, compile, reconciler) reads these.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import Iterable, Optional, Union

from agent.model.schema import (DEFAULT_INSTANCE_INTERFACES, DocumentDoc, InstanceDoc, PrefixListDoc, RuleDoc,
                                SecurityGroupDoc,
                          parse_address, parse_network, parse_port_range)

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

INGRESS, EGRESS = "ingress", "egress"
DIRECTIONS = (INGRESS, EGRESS)
ACCEPT, DROP = "accept", "drop"
ENFORCE, AUDIT = "enforce", "audit"
INTRANET, INTERNET = "intranet", "internet"
VPC, CLASSIC = "vpc", "classic"
ROUTED, BRIDGED = "routed", "bridged"
DEFAULT_PRIORITY = 110


@dataclass(frozen=True, order=True)
class PortRange:
    lo: int
    hi: int

    def __contains__(self, port: int) -> bool:
        return self.lo <= port <= self.hi

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


@dataclass(frozen=True, order=True)
class Peer:
    """Who is on the other side: kind is 'cidr', 'group' or 'prefix_list'."""
    kind: str
    value: str

    def __str__(self) -> str:
        return self.value if self.kind == "cidr" else f"{self.kind.replace('_', '-')} {self.value}"


@dataclass(frozen=True, order=True)
class Rule:
    group_id: str
    id: str
    direction: str
    policy: str
    priority: int
    protocol: str
    ports: Optional[PortRange]
    sports: Optional[PortRange]
    peer: Peer
    nic_type: str
    description: str = field(default="", compare=False)
    mode: Optional[str] = None          # "audit" | "enforce" | None: the document's (its own, else its group's)
    log: bool = False                   # log what it decides

    def audits(self, default_mode: str) -> bool:
        """A drop rule in audit mode: the kernel counts, logs and accepts what it matches."""
        return self.policy == DROP and (self.mode or default_mode) == AUDIT


@dataclass(frozen=True)
class LogSettings:
    """The document's `log:` (docs/observability.md): whether every drop is logged, the
    rate limits (per rule and per interface; per IP version over all) and NFLOG group."""
    drops: bool = False
    rate: str = "10/second"
    burst: int = 5
    global_rate: str = "200/second"
    group: int = 2701


@dataclass(frozen=True)
class Group:
    id: str
    name: str
    type: str
    network: str
    inner_access: str
    allow_http: bool
    allow_https: bool
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class AllowedAddress:
    """An allowed address pair (a VIP): a network the interface may also use as its
    source, in ARP and in neighbour advertisements; `mac`, if given, is also accepted
    as the interface's source MAC."""
    network: IPNetwork
    mac: Optional[str] = None


@lru_cache(maxsize=1 << 14)
def _source_networks(addresses: tuple[IPAddress, ...], allowed: tuple[AllowedAddress, ...],
                     version: int) -> tuple[IPNetwork, ...]:
    """`Interface.source_networks`, once per interface (a compile asks ~10 times each)."""
    nets = [host_network(a) for a in addresses if a.version == version] + \
        [p.network for p in allowed if p.network.version == version]
    return tuple(ipaddress.collapse_addresses(nets)) if nets else ()


@dataclass(frozen=True)
class Interface:
    name: str
    instance_id: str
    nic_type: str
    mac: Optional[str]
    addresses: tuple[IPAddress, ...]
    attachment: str
    allowed: tuple[AllowedAddress, ...] = ()
    spoofing_guard: bool = True          # False: no first-hop guard, no anti-spoofing here
    max_connections: Optional[int] = None    # conntrack quota per direction (None: none)

    def source_networks(self, version: int) -> tuple[IPNetwork, ...]:
        """The interface's own addresses and allowed networks of one IP version, merged."""
        return _source_networks(self.addresses, self.allowed, version)

    def source_macs(self) -> tuple[str, ...]:
        """The interface's MAC and the MACs of its allowed address pairs (none when the
        interface's MAC is unknown: then no MAC is checked)."""
        if not self.mac:
            return ()
        return tuple(dict.fromkeys([self.mac] + [p.mac for p in self.allowed if p.mac]))


@dataclass(frozen=True)
class Instance:
    id: str
    host: Optional[str]
    network: str
    groups: tuple[str, ...]
    interfaces: tuple[Interface, ...]


@dataclass(frozen=True)
class DesiredState:
    host: str
    groups: tuple[Group, ...]
    instances: tuple[Instance, ...]
    prefix_lists: tuple[tuple[str, tuple[IPNetwork, ...]], ...]
    anti_spoofing: bool = True
    revoke_connections: bool = True
    instance_interfaces: tuple[str, ...] = DEFAULT_INSTANCE_INTERFACES   # unknown ones: dropped
    max_connections: Optional[int] = None     # the document's default quota (0/None: none)
    mode: str = ENFORCE                       # the default mode of rules (and groups) without one
    log: LogSettings = LogSettings()

    @cached_property
    def group_by_id(self) -> dict[str, Group]:
        return {g.id: g for g in self.groups}

    @cached_property
    def prefix_list_by_id(self) -> dict[str, tuple[IPNetwork, ...]]:
        return dict(self.prefix_lists)

    @cached_property
    def local_instances(self) -> tuple[Instance, ...]:
        return tuple(i for i in self.instances if i.host in (None, self.host))

    @cached_property
    def local_interfaces(self) -> dict[str, Interface]:
        return {nic.name: nic for inst in self.local_instances for nic in inst.interfaces}

    @cached_property
    def instance_by_id(self) -> dict[str, Instance]:
        return {i.id: i for i in self.instances}

    @cached_property
    def members(self) -> dict[str, tuple[Instance, ...]]:
        """Group id -> instances (local and remote) that belong to it."""
        out: dict[str, list[Instance]] = {g.id: [] for g in self.groups}
        for inst in self.instances:
            for gid in inst.groups:
                out.setdefault(gid, []).append(inst)
        return {gid: tuple(v) for gid, v in out.items()}

    @cached_property
    def group_addresses(self) -> dict[str, tuple[IPAddress, ...]]:
        """Group id -> every address it lends as a peer, sorted (IPv4 first)."""
        out = {}
        for gid, insts in self.members.items():
            addrs = {a for inst in insts for a in member_addresses(inst)}
            out[gid] = tuple(sorted([a for a in addrs if a.version == 4], key=int) +
                             sorted([a for a in addrs if a.version == 6], key=int))
        return out

    @cached_property
    def group_networks(self) -> dict[str, tuple[IPNetwork, ...]]:
        """Group id -> its member addresses as host networks (/32, /128), computed once."""
        return {gid: tuple(host_network(a) for a in addrs)
                for gid, addrs in self.group_addresses.items()}


@lru_cache(maxsize=1 << 20)
def host_network(address: IPAddress) -> IPNetwork:
    """The /32 or /128 of an address, built once per process (addresses recur in every
    revision of the desired state the daemon validates). From the integer: a quarter of
    the cost of `ip_network(address)`, which a fleet's 100,000 members feel."""
    if address.version == 4:
        return ipaddress.IPv4Network((int(address), 32))
    return ipaddress.IPv6Network((int(address), 128))


def member_addresses(inst: Instance) -> tuple[IPAddress, ...]:
    """The addresses an instance lends to its groups: intranet interfaces (VPC: all)."""
    return tuple(a for nic in inst.interfaces
                 if inst.network == VPC or nic.nic_type == INTRANET for a in nic.addresses)


def rule_content(doc: RuleDoc) -> dict:
    """What makes two rules the same rule: every field but id and description, spelled
    canonically (port 80 == "80/80", "-1/-1" == no ports, CIDRs normalised)."""
    content = doc.model_dump(exclude={"id", "description"}, exclude_none=True)
    for key in ("port_range", "source_port_range"):
        ports = _port_range(content.pop(key, None))
        if ports:
            content[key] = f"{ports.lo}/{ports.hi}"
    for key in ("source_cidr", "dest_cidr"):
        if key in content:
            content[key] = str(parse_network(content[key]))
    return content


def derive_rule_id(group_id: str, doc: RuleDoc) -> str:
    """A stable id from the rule's content: the same rule keeps its id across edits
    elsewhere and reorderings, and identical rules get the same id (and are merged)."""
    # a rule without mode or log keeps the id it had before they existed; with them, the
    # id differs from its twin without (identical ids with different content are refused)
    content = {k: v for k, v in rule_content(doc).items() if not (k == "log" and v is False)}
    digest = hashlib.sha256(json.dumps([group_id, content], sort_keys=True).encode())
    return f"{doc.direction[:2]}-{digest.hexdigest()[:10]}"


def _port_range(text: Optional[str | int]) -> Optional[PortRange]:
    parsed = parse_port_range(text) if text is not None else None
    return PortRange(*parsed) if parsed else None


def _rule_key(r: Rule) -> tuple:
    return (r.group_id, r.id, r.direction, r.policy, r.priority, r.protocol, r.ports, r.sports, r.peer,
            r.nic_type, r.mode or "", r.log)


def build_rule(group_id: str, doc: RuleDoc, group_mode: Optional[str] = None) -> Rule:
    side = "source" if doc.direction == INGRESS else "dest"
    peer = next(Peer(kind, getattr(doc, f"{side}_{kind}")) for kind in ("cidr", "group", "prefix_list")
                if getattr(doc, f"{side}_{kind}") is not None)
    if peer.kind == "cidr":
        peer = Peer("cidr", str(parse_network(peer.value)))
    return Rule(group_id=group_id, id=doc.id or derive_rule_id(group_id, doc),
                direction=doc.direction, policy=doc.policy, priority=doc.priority,
                protocol=doc.protocol, ports=_port_range(doc.port_range),
                sports=_port_range(doc.source_port_range), peer=peer, nic_type=doc.nic_type,
                description=doc.description, mode=doc.mode or group_mode, log=doc.log)


def build_group(g: SecurityGroupDoc) -> Group:
    """One group of a valid document: its rules built, sorted, identical ones merged."""
    rules = sorted({build_rule(g.id, r, g.mode) for r in g.rules}, key=_rule_key)
    inner = g.inner_access or ("drop" if g.type == "enterprise" else "accept")
    return Group(g.id, g.name or g.id, g.type, g.network, inner, g.allow_http, g.allow_https,
                 tuple(rules))


def build_instance(i: InstanceDoc, attachment: str, max_connections: Optional[int] = None) -> Instance:
    """One instance of a valid document; `attachment` and `max_connections` are the
    document's defaults (an interface's own quota wins; 0 means none)."""
    nics = tuple(Interface(n.name, i.id, n.nic_type, n.mac,
                           tuple(parse_address(a) for a in n.addresses),
                           n.attachment or attachment,
                           tuple(sorted({AllowedAddress(parse_network(p.address), p.mac)
                                         for p in n.allowed_addresses},
                                        key=lambda p: (_net_key(p.network), p.mac or ""))),
                           n.spoofing_guard,
                           _quota(n.max_connections, max_connections)) for n in i.interfaces)
    return Instance(i.id, i.host, i.network, tuple(dict.fromkeys(i.security_groups)), nics)


def _quota(own: Optional[int], default: Optional[int]) -> Optional[int]:
    quota = own if own is not None else default
    return quota or None


def build_prefix_list(p: PrefixListDoc) -> tuple[str, tuple[IPNetwork, ...]]:
    return p.id, tuple(sorted({parse_network(e) for e in p.entries}, key=_net_key))


def assemble_state(host: str, groups: Iterable[Group], instances: Iterable[Instance],
                   prefix_lists: Iterable[tuple[str, tuple[IPNetwork, ...]]],
                   anti_spoofing: bool, revoke_connections: bool,
                   instance_interfaces: tuple[str, ...] = DEFAULT_INSTANCE_INTERFACES,
                   max_connections: Optional[int] = None, mode: str = "enforce",
                   log: Optional[LogSettings] = None) -> DesiredState:
    """The state from built objects, in the canonical order (each kind sorted by id)."""
    return DesiredState(host=host, groups=tuple(sorted(groups, key=lambda g: g.id)),
                        instances=tuple(sorted(instances, key=lambda i: i.id)),
                        prefix_lists=tuple(sorted(prefix_lists)), anti_spoofing=anti_spoofing,
                        revoke_connections=revoke_connections,
                        instance_interfaces=tuple(dict.fromkeys(instance_interfaces)),
                        max_connections=max_connections, mode=mode, log=log or LogSettings())


MEMBERSHIP_TABLES = ("members", "group_addresses", "group_networks", "instance_by_id")


def carry_membership(state: DesiredState, previous: DesiredState) -> DesiredState:
    """`state`, given the derived membership tables `previous` computed, when they are
    made of the very same objects (the same instances, the same group ids): a rule edit
    then costs no recomputation of every group's members (~10 ms at 1,000 instances)."""
    same = (len(state.instances) == len(previous.instances)
            and all(a is b for a, b in zip(state.instances, previous.instances))
            and [g.id for g in state.groups] == [g.id for g in previous.groups])
    if same:
        for name in MEMBERSHIP_TABLES:
            if name in previous.__dict__:            # computed there (functools.cached_property)
                state.__dict__[name] = previous.__dict__[name]
    return state


def build_state(doc: DocumentDoc, host: str) -> DesiredState:
    """Domain objects from a document that `agent.model.validate` found valid. `host` is the
    agent's name as resolved by `agent.model.validate.agent_host` (--host over the document's)."""
    return assemble_state(host, [build_group(g) for g in doc.security_groups],
                          [build_instance(i, doc.attachment, doc.max_connections) for i in doc.instances],
                          [build_prefix_list(p) for p in doc.prefix_lists],
                          doc.anti_spoofing, doc.revoke_connections, tuple(doc.instance_interfaces),
                          doc.max_connections, doc.mode, LogSettings(**doc.log.model_dump()))


def _net_key(net: IPNetwork) -> tuple:
    return (net.version, net.network_address, net.prefixlen)


def with_instance_interfaces(state: DesiredState, patterns: Optional[tuple[str, ...]]) -> DesiredState:
    """`state` with the `instance_interfaces` of an option (run/apply
    --instance-interfaces) instead of the document's; `state` itself when None. The
    derived membership tables are carried over (they do not depend on it)."""
    if patterns is None or tuple(patterns) == state.instance_interfaces:
        return state
    new = replace(state, instance_interfaces=tuple(dict.fromkeys(patterns)))
    for name in MEMBERSHIP_TABLES:
        if name in state.__dict__:
            new.__dict__[name] = state.__dict__[name]
    return new
