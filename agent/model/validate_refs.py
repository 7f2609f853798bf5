"""Cross-reference and consistency checks of a desired-state document (SPEC §4).

They read the raw data (dicts and lists), so they run even where some fields have the
wrong shape and every error is reported in one pass. Shape errors are pydantic's
(agent.model.schema); these are the rules that span several fields or objects.
"""
from __future__ import annotations

import ipaddress
from collections import Counter, defaultdict
from typing import Any, Iterable, Iterator, Optional

from pydantic import TypeAdapter, ValidationError

from agent.errors import InputError, show_value
from agent.model.objects import rule_content
from agent.model.validate_allowed import allowed_address_errors
from agent.model.schema import PROTOCOLS, RuleDoc, parse_address

PEER_KINDS = ("cidr", "group", "prefix_list")
PORTED = ("tcp", "udp")
BASIC = ("default", "custom")
BOOL = TypeAdapter(bool)


def _items(data: Any, key: str) -> list[tuple[int, dict]]:
    seq = data.get(key) if isinstance(data, dict) else None
    return [(i, x) for i, x in enumerate(seq) if isinstance(x, dict)] if isinstance(seq, list) else []


def _word(value: Any, default: str) -> Optional[str]:
    """A keyword, lowercased; `default` when absent; None when not a string at all
    (pydantic reports that shape error; the checks here skip the field)."""
    if value is None:
        return default
    return value.strip().lower() if isinstance(value, str) else None


def _key(value: Any) -> Optional[str]:
    """An id, reference or name as the document model reads it (surrounding blanks
    stripped); None when it is not a string (pydantic reports that)."""
    return value.strip() if isinstance(value, str) else None


def _flag(value: Any) -> bool:
    """True where the document model reads true ('yes', 1, ...); shape errors are its own."""
    try:
        return BOOL.validate_python(value)
    except ValidationError:
        return False


def _ids(items: list[tuple[int, dict]]) -> set:
    return {_key(x.get("id")) for _, x in items} - {None}


def _duplicates(pairs: Iterable[tuple[Any, Any]], what: str) -> Iterator[InputError]:
    seen: set = set()
    for path, value in pairs:
        value = _key(value)
        if value is None:
            continue                # a shape error; pydantic reports it
        if value in seen:
            yield InputError(str(path), value, f"duplicate {what}")
        seen.add(value)


def group_type(group: dict) -> Optional[str]:
    """A group's type as the checks read it (None: not a string; pydantic reports it)."""
    return _word(group.get("type"), "custom")


def group_network(group: dict) -> Optional[str]:
    return _word(group.get("network"), "vpc")


def cross_reference_errors(data: dict, host: Optional[str] = None) -> list[InputError]:
    """Every cross-reference error of `data`; `host` is the agent's name (instances on it,
    or with no host, are local and share one namespace of interface names)."""
    groups = _items(data, "security_groups")
    group_types = {_key(g["id"]): group_type(g) for _, g in groups if isinstance(g.get("id"), str)}
    group_nets = {_key(g["id"]): group_network(g) for _, g in groups
                  if isinstance(g.get("id"), str)}
    prefix_lists = _ids(_items(data, "prefix_lists"))
    errors: list[InputError] = []
    for key in ("prefix_lists", "security_groups", "instances"):
        errors += _duplicates([(f"{key}[{i}].id", x.get("id")) for i, x in _items(data, key)], "id")
    for gi, group in groups:
        errors += group_errors(f"security_groups[{gi}]", group, group_types, prefix_lists)
    errors += _instance_errors(data, group_types, group_nets, host)
    errors += allowed_address_errors(data)
    return errors


def group_errors(path: str, group: dict, group_types: dict, prefix_lists: set) -> Iterator[InputError]:
    """The errors of one group (its rules included) given the types of every group by id
    and the ids of the prefix lists."""
    gtype = group_type(group)
    if gtype == "enterprise" and _word(group.get("inner_access"), "drop") == "accept":
        yield InputError(f"{path}.inner_access", "accept",
                         "an enterprise group cannot let its members reach each other by default")
    for flag in ("allow_http", "allow_https"):
        if _flag(group.get(flag)) and gtype not in ("default", None):
            yield InputError(f"{path}.{flag}", show_value(group[flag]),
                             "only a group of type default has default rules to extend")
    rules = _items(group, "rules")
    by_id: dict[str, dict] = {}
    for ri, rule in rules:
        rpath = f"{path}.rules[{ri}]"
        yield from _rule_errors(rpath, rule, group_network(group), group_types,
                                prefix_lists)
        rid = _key(rule.get("id"))
        if isinstance(rid, str):
            if rid in by_id and _rule_content(by_id[rid]) != _rule_content(rule):
                yield InputError(f"{rpath}.id", rid, "duplicate rule id in this group (with a different rule)")
            by_id.setdefault(rid, rule)


def _rule_content(rule: dict) -> Any:
    """Canonical content when the rule is well-formed ('TCP' == 'tcp', 80 == '80/80')."""
    try:
        return rule_content(RuleDoc.model_validate(rule))
    except (ValidationError, ValueError):
        return {k: v for k, v in rule.items() if k not in ("id", "description")}


def _rule_errors(path: str, rule: dict, network: str, group_types: dict,
                 prefix_lists: set) -> Iterator[InputError]:
    direction = _word(rule.get("direction"), "")
    protocol = _word(rule.get("protocol"), "")
    own, other = ("source", "dest") if direction == "ingress" else ("dest", "source")
    if direction in ("ingress", "egress"):
        peers = [k for k in PEER_KINDS if rule.get(f"{own}_{k}") is not None]
        if not peers:
            yield InputError(path, f"{direction} rule",
                             f"needs a peer: one of {own}_cidr, {own}_group, {own}_prefix_list")
        elif len(peers) > 1:
            yield InputError(path, ", ".join(f"{own}_{k}" for k in peers), "several peers; give exactly one")
        for k in PEER_KINDS:
            if rule.get(f"{other}_{k}") is not None:
                yield InputError(f"{path}.{other}_{k}", show_value(rule[f"{other}_{k}"]),
                                 f"an {direction} rule names its peer with {own}_*, not {other}_*")
        yield from _peer_ref_errors(path, rule, own, group_types, prefix_lists, protocol)
    if protocol in PORTED and rule.get("port_range") is None:
        yield InputError(f"{path}.port_range", "(missing)", f"is required for {protocol}")
    if protocol in PROTOCOLS and protocol not in PORTED:
        for key in ("port_range", "source_port_range"):
            value = rule.get(key)
            if value is not None and str(value).strip() not in ("-1/-1",):
                yield InputError(f"{path}.{key}", show_value(value), f"{protocol} has no ports; use -1/-1 or leave it out")
    if network == "vpc" and _word(rule.get("nic_type"), "intranet") == "internet":
        yield InputError(f"{path}.nic_type", "internet", "a VPC group has only intranet rules")


def _peer_ref_errors(path: str, rule: dict, side: str, group_types: dict, prefix_lists: set,
                     protocol: str) -> Iterator[InputError]:
    group = _key(rule.get(f"{side}_group"))
    if isinstance(group, str):
        if group not in group_types:
            yield InputError(f"{path}.{side}_group", group, "unknown security group")
        elif group_types[group] == "enterprise":
            yield InputError(f"{path}.{side}_group", group, "an enterprise group cannot be named as a peer")
    plist = _key(rule.get(f"{side}_prefix_list"))
    if isinstance(plist, str) and plist not in prefix_lists:
        yield InputError(f"{path}.{side}_prefix_list", plist, "unknown prefix list")
    cidr = rule.get(f"{side}_cidr")
    try:
        version = ipaddress.ip_network(cidr, strict=False).version if isinstance(cidr, str) else None
    except ValueError:
        version = None
    if (protocol, version) in (("icmp", 6), ("icmpv6", 4)):
        yield InputError(f"{path}.{side}_cidr", cidr,
                         f"{protocol} is {'IPv4' if protocol == 'icmp' else 'IPv6'}-only; this CIDR never matches it")


def _instance_errors(data: dict, group_types: dict, group_nets: dict,
                     host: Optional[str]) -> Iterator[InputError]:
    """Every instance's errors, then interface names and addresses clashing between
    instances. Paths of names and addresses are written only for an error (a fleet
    document has 100,000 instances: their paths cost more than the checks)."""
    local = host or (data["host"].strip() if isinstance(data.get("host"), str) else None)
    names_by_host: dict[Any, list[tuple[int, int, Any]]] = defaultdict(list)
    addresses: list[tuple[Optional[str], int, int, int, Any]] = []
    for ii, inst in _items(data, "instances"):
        yield from instance_errors(f"instances[{ii}]", inst, group_types, group_nets)
        where = inst.get("host")
        if where is not None and not isinstance(where, str):
            continue                # a shape error; pydantic reports it
        where = None if where is None or where.strip() == local else where.strip()
        nics = _items(inst, "interfaces")
        names_by_host[where] += [(ii, ni, nic.get("name")) for ni, nic in nics]
        addresses += [(where, ii, ni, ai, addr) for ni, ai, addr in _address_items(nics)]
    for names in names_by_host.values():
        yield from _duplicates(_LazyPaths(names, "instances[{}].interfaces[{}].name"), "interface name on this host")
    yield from _address_clashes(addresses)


class _LazyPaths:
    """(path, value) pairs whose path is written when read: `template` filled with the
    leading indices of each item, its value the last."""

    def __init__(self, items: list[tuple], template: str) -> None:
        self.items, self.template = items, template

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for item in self.items:
            yield _Path(self.template, item[:-1]), item[-1]


class _Path:
    __slots__ = ("template", "indices")

    def __init__(self, template: str, indices: tuple) -> None:
        self.template, self.indices = template, indices

    def __str__(self) -> str:
        return self.template.format(*self.indices)


def _address_items(nics: list[tuple[int, dict]]) -> list[tuple[int, int, Any]]:
    """(interface index, address index, address) of every well-formed interface
    address (the malformed ones are pydantic's to report)."""
    out = []
    for ni, nic in nics:
        addrs = nic.get("addresses")
        for ai, text in enumerate(addrs if isinstance(addrs, list) else []):
            if isinstance(text, str) and "/" not in text and "%" not in text:
                try:
                    out.append((ni, ai, parse_address(text.strip())))
                except ValueError:
                    pass
    return out


def nic_addresses(inst: dict) -> list[tuple[str, Any]]:
    """(path under the instance, address) of every well-formed interface address (the
    malformed ones are pydantic's to report)."""
    return [(f"interfaces[{ni}].addresses[{ai}]", addr) for ni, ai, addr in _address_items(_items(inst, "interfaces"))]


def addresses_clash(host_a: Optional[str], host_b: Optional[str]) -> bool:
    """Can two interfaces not hold one address? On one host, or one of them local (None):
    anti-spoofing and group membership would mistake one for the other."""
    return host_a == host_b or host_a is None or host_b is None


def clash_message(host_a: Optional[str], host_b: Optional[str], other: str) -> str:
    if host_a != host_b:
        where = "by a local and a remote instance"
    else:
        where = "on this host" if host_a is None else f"on host {host_a}"
    return f"address already used {where} (at {other})"


_ADDRESS_PATH = "instances[{}].interfaces[{}].addresses[{}]"


def _address_clashes(addresses: list[tuple[Optional[str], int, int, int, Any]]) -> Iterator[InputError]:
    """Addresses held twice where they may not be (`addresses_clash`), in document
    order. Keyed by (class, integer): hashing an ipaddress object runs Python code."""
    first: dict[tuple, tuple] = {}
    more: dict[tuple, list[tuple]] = {}
    for host, ii, ni, ai, addr in addresses:
        key, entry = (addr.__class__, addr._ip), (host, ii, ni, ai)
        held = first.setdefault(key, entry)
        if held is entry:
            continue
        holders = [held] + more.get(key, [])
        clash = next((h for h in holders if addresses_clash(h[0], host)), None)
        if clash is not None:
            yield InputError(_ADDRESS_PATH.format(ii, ni, ai), str(addr),
                             clash_message(host, clash[0], _ADDRESS_PATH.format(*clash[1:])))
        more.setdefault(key, []).append(entry)


def instance_errors(path: str, inst: dict, group_types: dict,
                    group_nets: dict) -> Iterator[InputError]:
    """The errors of one instance but interface names clashing with other instances'."""
    network = _word(inst.get("network"), "vpc")
    refs = inst.get("security_groups")
    kinds = set()
    for gi, gid in enumerate(refs if isinstance(refs, list) else []):
        gid = _key(gid)
        if gid is None:
            continue
        if gid not in group_types:
            yield InputError(f"{path}.security_groups[{gi}]", gid, "unknown security group")
            continue
        if group_types[gid] is not None:
            kinds.add("enterprise" if group_types[gid] == "enterprise" else "basic")
        if None not in (group_nets[gid], network) and group_nets[gid] != network:
            yield InputError(f"{path}.security_groups[{gi}]", gid,
                             f"a {group_nets[gid]} group cannot hold a {network} instance")
    if len(kinds) > 1:
        yield InputError(f"{path}.security_groups", show_value(refs),
                         "an instance cannot mix enterprise and basic (default/custom) groups")
    yield from _nic_type_errors(path, network, _items(inst, "interfaces"))


def _nic_type_errors(path: str, network: str, nics: list[tuple[int, dict]]) -> Iterator[InputError]:
    counts: Counter = Counter()
    for ni, nic in nics:
        nic_type = _word(nic.get("nic_type"), "intranet")
        counts[nic_type] += 1
        if network == "vpc" and nic_type == "internet":
            yield InputError(f"{path}.interfaces[{ni}].nic_type", "internet",
                             "a VPC instance has only intranet interfaces")
        elif network == "classic" and nic_type in ("intranet", "internet") and counts[nic_type] > 1:
            yield InputError(f"{path}.interfaces[{ni}].nic_type", nic_type,
                             f"a classic instance has at most one {nic_type} interface")
