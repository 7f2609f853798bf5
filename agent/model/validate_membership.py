"""The derived membership tables of a re-validated state, patched instead of recomputed.

`DesiredState` derives from its instances who belongs to which group (`members`,
`group_addresses`, `group_networks`, `instance_by_id`, `local_instances`,
`local_interfaces`: functools.cached_property). Recomputing them walks every instance:
~190 ms at 10,000 remote members, which a member joining a group would pay on every
revision. When agent.model.validate_incremental knows exactly which instances changed,
`patch_membership` computes those tables from the previous state's: the groups the
changed instances left or joined are recomputed, every other entry is the previous
state's very object (so the compiler's memo sees them unchanged by identity), and the
local tables are carried over when only remote instances changed.

The result is equal (==) to what the state would compute itself; tests/unit check it on
random edits (tests/unit/test_validate_membership.py).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional

from agent.model.objects import DesiredState, Instance, host_network, member_addresses

_TABLES = ("members", "group_addresses", "instance_by_id")


def ordered_instances(previous: DesiredState, changed: Mapping[str, Instance]) -> Optional[tuple[Instance, ...]]:
    """The previous state's instances with the changed ones replaced in place (the
    canonical order is by id, and no id came or went); None when some id is new."""
    if not changed:
        return previous.instances
    by_id = previous.instance_by_id
    if any(iid not in by_id for iid in changed):
        return None
    return tuple([changed.get(inst.id, inst) for inst in previous.instances])


def patch_membership(state: DesiredState, previous: DesiredState, old: Mapping[str, Instance],
                     new: Mapping[str, Instance]) -> DesiredState:
    """`state` (built from `previous` with the instances `old` replaced by `new`, by id;
    an id in only one of them was removed or added), its membership tables set from
    `previous`'s where that is exact. Does nothing when `previous` did not compute them
    or the groups differ (the state then computes them itself, lazily)."""
    if not all(name in previous.__dict__ for name in _TABLES) or \
            [g.id for g in state.groups] != [g.id for g in previous.groups]:
        return state
    touched = {gid for inst in list(old.values()) + list(new.values()) for gid in inst.groups}
    members = dict(previous.members)
    for gid in touched:
        members[gid] = _members(previous.members.get(gid, ()), old, new, gid)
    addresses = dict(previous.group_addresses)
    for gid in touched:
        addresses[gid] = _sorted_addresses(members[gid])
    by_id = dict(previous.instance_by_id)
    for iid in old:
        by_id.pop(iid, None)
    by_id.update(new)
    tables = {"members": members, "group_addresses": addresses, "instance_by_id": by_id}
    if "group_networks" in previous.__dict__:
        networks = dict(previous.group_networks)
        for gid in touched:
            networks[gid] = tuple(host_network(a) for a in addresses[gid])
        tables["group_networks"] = networks
    if not any(_local(inst, state.host) for inst in list(old.values()) + list(new.values())):
        for name in ("local_instances", "local_interfaces"):
            if name in previous.__dict__:
                tables[name] = previous.__dict__[name]
    state.__dict__.update(tables)                   # functools.cached_property's storage
    return state


def _local(inst: Instance, host: str) -> bool:
    return inst.host in (None, host)


def _members(before: Iterable[Instance], old: Mapping[str, Instance], new: Mapping[str, Instance],
             gid: str) -> tuple[Instance, ...]:
    """The group's members in id order (the order the state computes them in)."""
    kept = [inst for inst in before if inst.id not in old and inst.id not in new]
    joined = [inst for inst in new.values() if gid in inst.groups]
    return tuple(sorted(kept + joined, key=lambda inst: inst.id)) if joined else tuple(kept)


def _sorted_addresses(insts: Iterable[Instance]) -> tuple:
    """As DesiredState.group_addresses: distinct addresses, IPv4 first, each sorted."""
    addrs = {a for inst in insts for a in member_addresses(inst)}
    return tuple(sorted([a for a in addrs if a.version == 4], key=int) +
                 sorted([a for a in addrs if a.version == 6], key=int))
