"""Re-validation of a changed desired-state document, reusing what did not change.

    validated = validate_update(data, host, previous)    # previous: Validated | None

`validated.state` is always equal (==) to `agent.model.validate.validate_document(data, host)`,
and an invalid document raises the same InvalidInput (same errors, same order). Objects
are matched by id with the previous document; one whose raw item is == the previous one
keeps its built domain object (the same object, `is`). Changed and new objects are
checked alone: pydantic on the item, then the cross-reference checks of
agent.model.validate_refs that concern it (peers, group mixes, interface names on this host).

Anything the fast path does not handle, or any error at all, falls back to the full
`validate_document`, so the error list is exactly the full one. It falls back when:
there is no previous result; the document is strict (`strict: true`: warnings are errors); a top-level field other than the three lists, or the
resolved host, changed; a list is not a list; an item is not a mapping with a string id;
an id is duplicated; a group or prefix list was removed (or renamed); a group's type or
network changed; a changed object has any error.

The caller must not mutate a document after handing it over: the result keeps the raw
items (`data`) to compare the next document with. Give a fresh parse each time; an item
that is the very object seen last time is re-checked rather than trusted - unless the
caller passes `shared=True`: its documents share the objects of unchanged items and
nothing mutates them (the etcd source's DocumentCache), so an item that is the previous
document's object is unchanged, and only the others are compared.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Iterable, Literal, Optional

from pydantic import BaseModel, ValidationError

from agent.model.objects import (DesiredState, Group, Instance, IPNetwork, assemble_state, build_group,
                         build_instance, build_prefix_list, carry_membership)
from agent.model.validate_membership import ordered_instances, patch_membership
from agent.model.schema import DocumentDoc, InstanceDoc, PrefixListDoc, SecurityGroupDoc
from agent.model.validate import agent_host, validate_document
from agent.model.validate_allowed import allowed_address_errors
from agent.model.validate_warnings import is_strict
from agent.model.validate_refs import (addresses_clash, group_errors, group_network, group_type,
                                 instance_errors)

log = logging.getLogger(__name__)

LISTS = ("prefix_lists", "security_groups", "instances")
NicKey = tuple[Optional[str], str]          # (host bucket: None for this host, interface name)


class _Fallback(Exception):
    """The fast path cannot vouch for the result; the message says why."""


@dataclass(frozen=True, eq=False)
class Validated:
    """A validated document, and what the next `validate_update` needs to reuse it."""
    data: dict                              # the raw document (not to be mutated)
    host: Optional[str]                     # the host argument
    state: DesiredState
    mode: Literal["full", "incremental"]    # how this result was reached
    scalars: dict                           # the document's top-level fields but the lists
    attachment: str                         # the document's default interface attachment
    raw: dict[str, dict[str, dict]]         # list key -> id -> raw item
    built: dict[str, dict[str, Any]]        # list key -> id -> Group / Instance / prefix list
    group_types: dict[str, str]             # group id -> type
    group_nets: dict[str, str]              # group id -> network
    prefix_ids: frozenset[str]
    nic_owner: dict[NicKey, str]            # interface (by host bucket) -> instance id
    addr_owner: dict[Any, dict]             # address -> host bucket -> instance id
    reusable: bool = True                   # False: ids or hosts the caches cannot key
    lists: Optional[dict[str, list]] = None     # list key -> the document's list (items in order)
    with_allowed: Optional[frozenset[str]] = None   # ids of instances with allowed addresses


@dataclass(frozen=True)
class _Diff:
    """One list of the new document against the previous one."""
    raw: dict[str, dict]                    # id -> raw item, in document order
    reused: dict[str, Any]                  # id -> built object of an unchanged item
    changed: list[tuple[int, str, dict]]    # (index, id, raw item): new or edited
    removed: set[str]


def validate_update(data: Any, host: Optional[str], previous: Optional[Validated],
                    shared: bool = False) -> Validated:
    """`data` validated, reusing `previous` (the last valid result) where nothing changed.
    Raises InvalidInput exactly as `validate_document(data, host)` does. `shared`: items
    that are the previous document's very objects are unchanged (module docstring)."""
    if previous is not None and previous.reusable and not is_strict(data, False):
        try:
            return _incremental(data, host, previous, shared)
        except _Fallback as why:
            log.debug("full validation: %s", why)
    return _full(data, host)


def _scalars(data: dict) -> dict:
    return {k: v for k, v in data.items() if k not in LISTS}


def _full(data: Any, host: Optional[str]) -> Validated:
    state = validate_document(data, host)
    raw = {key: {item["id"].strip(): item for item in data.get(key) or ()} for key in LISTS}
    built = {"security_groups": {g.id: g for g in state.groups},
             "instances": {i.id: i for i in state.instances},
             "prefix_lists": dict(state.prefix_lists)}
    owner = {k: inst.id for inst in state.instances for k in _nic_keys(inst, state.host)}
    addr_owner: dict[Any, dict] = {}
    for inst in state.instances:
        for bucket, addr in _addr_keys(inst, state.host):
            addr_owner.setdefault(addr, {})[bucket] = inst.id
    scalars = _scalars(data)
    reusable = (all(raw[key].keys() == built[key].keys() for key in LISTS)
                and all(_plain_host(inst.host) for inst in state.instances))
    return Validated(data=data, host=host, state=state, mode="full", scalars=scalars,
                     attachment=DocumentDoc.model_validate(scalars).attachment, raw=raw,
                     built=built, group_types={g.id: g.type for g in state.groups},
                     group_nets={g.id: g.network for g in state.groups},
                     prefix_ids=frozenset(pid for pid, _ in state.prefix_lists), nic_owner=owner,
                     addr_owner=addr_owner,
                     reusable=reusable, lists={key: _list_of(data, key) for key in LISTS},
                     with_allowed=frozenset(inst.id for inst in state.instances if _has_allowed(inst)))


def _list_of(data: dict, key: str) -> list:
    items = data.get(key)
    return items if isinstance(items, list) else []


def _plain_host(host: Optional[str]) -> bool:
    """The document model and the checks strip blanks alike (not so for \\x1c..\\x1f)."""
    return host is None or host == host.strip()


def _same_id(built_id: str, ident: str, path: str) -> None:
    if built_id != ident:
        raise _Fallback(f"{path}: id {built_id!r} reads differently in the checks")


def _incremental(data: Any, host: Optional[str], prev: Validated, shared: bool = False) -> Validated:
    if not isinstance(data, dict) or data is prev.data:
        raise _Fallback("not a mapping, or the very document seen last time")
    if _scalars(data) != prev.scalars:
        raise _Fallback("a top-level field changed")
    local = agent_host(data, host)
    if local != prev.state.host:
        raise _Fallback("the agent's host changed")
    diffs = {key: _diff(data, key, prev, shared) for key in LISTS}
    groups, plists, insts = diffs["security_groups"], diffs["prefix_lists"], diffs["instances"]
    if groups.removed or plists.removed:
        raise _Fallback("a group or prefix list was removed or renamed")
    types, nets = _group_index(groups, prev)
    prefix_ids = prev.prefix_ids | {pid for _, pid, _ in plists.changed}
    built_plists = _build_prefix_lists(plists)
    built_groups = _build_groups(groups, types, prefix_ids)
    built_insts, owner, addr_owner = _build_instances(insts, prev, types, nets, local)
    with_allowed = _with_allowed(insts, built_insts, prev)
    if (insts.changed or insts.removed) and with_allowed:
        _no_errors(allowed_address_errors(data))        # an overlap spans instances
    state = _assemble(local, built_groups, built_insts, built_plists, insts, prev)
    log.debug("incremental validation: %d groups, %d instances, %d prefix lists re-checked",
              len(groups.changed), len(insts.changed), len(plists.changed))
    return Validated(data=data, host=host, state=state, mode="incremental", scalars=prev.scalars,
                     attachment=prev.attachment,
                     raw={key: diff.raw for key, diff in diffs.items()},
                     built={"security_groups": built_groups, "instances": built_insts,
                            "prefix_lists": built_plists},
                     group_types=types, group_nets=nets, prefix_ids=prefix_ids, nic_owner=owner,
                     addr_owner=addr_owner, lists={key: _list_of(data, key) for key in LISTS},
                     with_allowed=with_allowed)


def _has_allowed(inst: Instance) -> bool:
    return any(nic.allowed for nic in inst.interfaces)


def _with_allowed(diff: "_Diff", built: dict[str, Instance], prev: Validated) -> frozenset[str]:
    """The instances with allowed addresses, from the previous result's and the changes."""
    if prev.with_allowed is None:
        return frozenset(iid for iid, inst in built.items() if _has_allowed(inst))
    ids = {iid for _, iid, _ in diff.changed}
    return (prev.with_allowed - diff.removed - ids) | {iid for iid in ids if _has_allowed(built[iid])}


def _assemble(local: str, groups: dict[str, Group], insts: dict[str, Instance],
              plists: dict[str, tuple[IPNetwork, ...]], diff: "_Diff", prev: Validated) -> DesiredState:
    """The state, its membership tables derived from the previous state's where only
    some instances changed (agent.model.validate_membership): a member joining a group
    then costs the groups it touches, not every group's members again."""
    before = prev.state
    changed = {iid: insts[iid] for _, iid, _ in diff.changed}
    ordered = None if diff.removed else ordered_instances(before, changed)
    state = assemble_state(local, groups.values(), insts.values() if ordered is None else (),
                           plists.items(), before.anti_spoofing, before.revoke_connections,
                           before.instance_interfaces, before.max_connections, before.mode, before.log)
    if ordered is not None:
        state = replace(state, instances=ordered)           # already in the canonical order
    if state.instances is before.instances:
        return carry_membership(state, before)
    old_built = prev.built["instances"]
    old = {iid: old_built[iid] for iid in diff.removed | changed.keys() if iid in old_built}
    return patch_membership(state, before, old, changed)


def _diff(data: dict, key: str, prev: Validated, shared: bool = False) -> _Diff:
    items = data.get(key)
    if items is None:
        items = []                          # `instances:` with nothing after it
    if not isinstance(items, list):
        raise _Fallback(f"{key} is not a list")
    quick = _diff_in_place(items, key, prev, shared)
    if quick is not None:
        return quick
    old_raw, old_built = prev.raw[key], prev.built[key]
    raw: dict[str, dict] = {}
    reused: dict[str, Any] = {}
    changed: list[tuple[int, str, dict]] = []
    for index, item in enumerate(items):
        ident = item.get("id") if isinstance(item, dict) else None
        if not isinstance(ident, str):
            raise _Fallback(f"{key}[{index}] has no string id")
        ident = ident.strip()
        if ident in raw:
            raise _Fallback(f"{key}[{index}]: duplicate id")
        raw[ident] = item
        old = old_raw.get(ident)
        if old is not None and ((shared and old is item) or (old is not item and old == item)):
            reused[ident] = old_built[ident]
        else:
            changed.append((index, ident, item))
    return _Diff(raw, reused, changed, set(old_raw.keys() - raw.keys()))


def _diff_in_place(items: list, key: str, prev: Validated, shared: bool = False) -> Optional[_Diff]:
    """`_diff` when the list has the previous one's length and every changed item keeps
    the id at its position (a member joining a group, a rule edited): the items are
    compared position by position (C-speed ==, ~1 ms per 10,000 items) instead of being
    indexed by id one by one. None: not that case."""
    before = prev.lists.get(key) if prev.lists is not None else None
    if before is None or len(before) != len(items):
        return None
    if shared:
        at = [i for i, (a, b) in enumerate(zip(items, before)) if a is not b and a != b]
    else:
        at = [i for i, (a, b) in enumerate(zip(items, before)) if a is b or a != b]
    if len(at) * 8 > len(items) + 8:
        return None                         # most of the list changed: index it by id
    ids = [_item_id(items[i]) for i in at]
    if any(ident is None or ident != _item_id(before[i]) for i, ident in zip(at, ids)):
        return None
    raw, reused = dict(prev.raw[key]), dict(prev.built[key])
    changed = []
    for i, ident in zip(at, [x for x in ids if x is not None]):   # none is None (checked above)
        raw[ident] = items[i]
        reused.pop(ident, None)
        changed.append((i, ident, items[i]))
    return _Diff(raw, reused, changed, set())


def _item_id(item: Any) -> Optional[str]:
    ident = item.get("id") if isinstance(item, dict) else None
    return ident.strip() if isinstance(ident, str) else None


def _group_index(groups: _Diff, prev: Validated) -> tuple[dict[str, str], dict[str, str]]:
    """Group id -> type and -> network with the changed groups. Unchanged groups and
    instances stay valid when groups are only added: nothing they name changes kind."""
    if not groups.changed:
        return prev.group_types, prev.group_nets
    types, nets = dict(prev.group_types), dict(prev.group_nets)
    for _, gid, raw in groups.changed:
        kind = (group_type(raw), group_network(raw))
        if gid in types and kind != (types[gid], nets[gid]):
            raise _Fallback(f"group {gid}: type or network changed")
        types[gid], nets[gid] = kind
    return types, nets


def _parse(model: type[BaseModel], raw: dict, path: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _Fallback(f"{path}: {exc.error_count()} shape errors") from None


def _no_errors(errors: Iterable[Any]) -> None:
    for error in errors:
        raise _Fallback(str(error))


def _build_prefix_lists(diff: _Diff) -> dict[str, tuple[IPNetwork, ...]]:
    built = dict(diff.reused)
    for index, pid, raw in diff.changed:
        path = f"prefix_lists[{index}]"
        built_id, built[pid] = build_prefix_list(_parse(PrefixListDoc, raw, path))
        _same_id(built_id, pid, path)
    return built


def _build_groups(diff: _Diff, types: dict[str, str], prefix_ids: frozenset[str]) -> dict[str, Group]:
    built = dict(diff.reused)
    for index, gid, raw in diff.changed:
        path = f"security_groups[{index}]"
        doc = _parse(SecurityGroupDoc, raw, path)
        _no_errors(group_errors(path, raw, types, prefix_ids))
        built[gid] = build_group(doc)
        _same_id(doc.id, gid, path)
    return built


def _nic_keys(inst: Instance, local: str) -> list[NicKey]:
    """Interface names by host bucket, as the duplicate check groups them."""
    bucket = None if inst.host is None or inst.host == local else inst.host
    return [(bucket, nic.name) for nic in inst.interfaces]


def _addr_keys(inst: Instance, local: str) -> list[tuple[Optional[str], Any]]:
    """(host bucket, address) of every interface address, as the clash check groups them."""
    bucket = None if inst.host is None or inst.host == local else inst.host
    return [(bucket, a) for nic in inst.interfaces for a in nic.addresses]


def _claim_addresses(inst: Instance, local: str, addr_owner: dict[Any, dict], path: str) -> None:
    for bucket, addr in _addr_keys(inst, local):
        holders = addr_owner.get(addr, {})
        if any(addresses_clash(other, bucket) for other in holders):
            raise _Fallback(f"{path}: address {addr} already in use")
        addr_owner[addr] = {**holders, bucket: inst.id}     # copied: the previous result keeps its own


def _build_instances(diff: _Diff, prev: Validated, types: dict[str, str], nets: dict[str, str],
                     local: str) -> tuple[dict[str, Instance], dict[NicKey, str], dict[Any, dict]]:
    built, owner, addr_owner = dict(diff.reused), prev.nic_owner, prev.addr_owner
    if not (diff.changed or diff.removed):
        return built, owner, addr_owner
    owner = dict(owner)
    addr_owner = dict(addr_owner)
    old_built = prev.built["instances"]
    for iid in diff.removed | {iid for _, iid, _ in diff.changed}:
        if iid in old_built:
            for key in _nic_keys(old_built[iid], local):
                del owner[key]
            for bucket, addr in _addr_keys(old_built[iid], local):
                addr_owner[addr] = {b: i for b, i in addr_owner[addr].items() if b != bucket}
    for index, iid, raw in diff.changed:
        path = f"instances[{index}]"
        doc = _parse(InstanceDoc, raw, path)
        _no_errors(instance_errors(path, raw, types, nets))
        built[iid] = inst = build_instance(doc, prev.attachment, prev.state.max_connections)
        _same_id(doc.id, iid, path)
        if not _plain_host(doc.host):
            raise _Fallback(f"{path}: host {doc.host!r} reads differently in the checks")
        for key in _nic_keys(inst, local):
            if key in owner:
                raise _Fallback(f"{path}: interface {key[1]} already in use on its host")
            owner[key] = iid
        _claim_addresses(inst, local, addr_owner, path)
    return built, owner, addr_owner
