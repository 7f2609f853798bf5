"""What the compiler remembers between two builds, so a change recompiles only what it
touches (the daemon compiles every revision; a full build at 1,000 interfaces x 100
rules takes seconds, nearly all of it painting first-match regions).

A policy chain's stages 3-6 are a function of its identity (direction, network, nic
kind, groups) and of a few inputs: each group's settings and rules of the chain's
direction, the member networks of the groups it names (as peers or for intra-group
access) and the prefix lists it names. Those
inputs are *canonicalised* against the previous build: a value equal to the previous
one is replaced by the previous object, so the signature of an unchanged chain is made
of the same objects and compares in a few identity checks. A chain whose signature is
unchanged gets its previous region rules and sets back, the very same objects, which
also lets agent.compiler.transaction skip them by identity.

Pure: `canonicalise` and `policy_signature` take everything as arguments; the memo is
frozen and belongs to the caller (agent.reconciler.keeper keeps the one of the applied ruleset).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from agent.model.objects import DIRECTIONS, DesiredState, Group, IPAddress, IPNetwork

Signature = tuple


@dataclass(frozen=True)
class RegionPart:
    """Stages 4-5 of a policy chain (or of one IP version of it): its rules, the sets and
    member-path chains it made (each with the identity its name was claimed for), and the
    shared sets it names: ((kind, id, version), set name, whether the union holds it)."""
    rules: tuple[str, ...]
    sets: tuple[tuple[tuple, Any], ...] = ()
    chains: tuple[tuple[tuple, Any], ...] = ()
    refs: tuple[tuple[tuple, str, bool], ...] = ()


@dataclass(frozen=True)
class BuildRecord:
    """What a build made besides its chains and regions, for a patched next build."""
    layout: tuple                                   # agent.compiler.compile.local_layout of its state
    dispatch: tuple                                 # (dispatch sets, base chains)
    bridge: Any                                     # the bridge Table or None
    owners: Mapping[str, tuple] = field(default_factory=dict)      # nft name -> what it names
    sets: Mapping[str, Any] = field(default_factory=dict)          # name -> NftSet (not dispatch)
    shared_names: Mapping[tuple, str] = field(default_factory=dict)   # (kind, id, version) -> name
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class CompileMemo:
    groups: Mapping[str, Group] = field(default_factory=dict)
    networks: Mapping[str, tuple[IPAddress, ...]] = field(default_factory=dict)   # group -> member addresses
    prefix_lists: Mapping[str, tuple[IPNetwork, ...]] = field(default_factory=dict)
    parts: Mapping[str, tuple[Group, Mapping[str, tuple]]] = field(default_factory=dict)
    regions: Mapping[tuple, tuple] = field(default_factory=dict)  # (chain, identity) -> (sig, RegionPart, nic, refs)
    interfaces: Mapping[tuple, tuple[Any, tuple[str, ...]]] = field(default_factory=dict)
    shared_sets: Mapping[tuple, tuple[Any, Any]] = field(default_factory=dict)  # (kind, id, v) -> (inputs, NftSet)
    chains: Mapping[str, Any] = field(default_factory=dict)          # name -> Chain
    region_parts: Mapping[tuple, tuple] = field(default_factory=dict)  # (chain, version) -> (digest, RegionPart)
    record: Optional[BuildRecord] = None


def _same(old: Any, new: Any) -> Any:
    """The previous object when it equals the new one (identity first: cheap)."""
    return old if old is not None and (old is new or old == new) else new


def canonicalise(state: DesiredState, previous: Optional[CompileMemo]) -> CompileMemo:
    """This build's inputs, with every value equal to the previous build's replaced by
    that object. `regions`, `interfaces`, `group_sets`, `chains` and `region_parts` are
    left empty: the build fills its own (what it reused and what it made)."""
    prev = previous or CompileMemo()
    groups = {g.id: _same(prev.groups.get(g.id), g) for g in state.groups}
    networks = {gid: _same(prev.networks.get(gid), addrs) for gid, addrs in state.group_addresses.items()}
    prefix_lists = {pid: _same(prev.prefix_lists.get(pid), nets) for pid, nets in state.prefix_lists}
    parts = {gid: _group_parts(g, prev.parts.get(gid)) for gid, g in groups.items()}
    return CompileMemo(groups, networks, prefix_lists, parts, {}, {}, {}, {}, {})  # filled by the build


def _group_parts(group: Group, previous: Optional[tuple]) -> tuple[Group, Mapping[str, tuple]]:
    """Per direction, what a group brings to policy chains: its settings and its rules
    of that direction, and the sorted groups and prefix lists those rules name.
    Recomputed only when the group changed; a direction whose part is the same as
    before keeps the previous object (an ingress edit leaves egress chains alone)."""
    if previous is not None and previous[0] is group:
        return previous
    head = (group.type, group.inner_access, group.allow_http, group.allow_https)
    out = {}
    for direction in DIRECTIONS:
        rules = tuple(r for r in group.rules if r.direction == direction)
        named = tuple(sorted({(r.peer.kind, r.peer.value) for r in rules if r.peer.kind != "cidr"}))
        part = (head, rules, named)
        old = previous[1].get(direction) if previous is not None else None
        out[direction] = _same(old, part)
    return group, out


def group_inputs(memo: CompileMemo, group_id: str, direction: str) -> tuple:
    """What one group brings to a policy chain of `direction`: its settings and rules of
    that direction. Not the members of the groups and prefix lists they name: those are
    shared sets the chain looks up by name (agent.compiler.sets)."""
    return (memo.parts[group_id][1][direction],)


def policy_signature(memo: CompileMemo, identity: tuple, intra: tuple[str, ...],
                     inputs: dict) -> Signature:
    """Everything stages 3-6 of the policy chain `identity` depend on besides the
    identity itself: its groups' rules in its direction (`group_inputs`, memoised in
    `inputs` for this build), and the groups it grants intra-group access to (by name:
    their members are shared sets)."""
    _, direction, _, _, group_ids = identity
    per_group = []
    for gid in group_ids:
        got = inputs.get((gid, direction))
        if got is None:
            got = inputs[(gid, direction)] = group_inputs(memo, gid, direction)
        per_group.append(got)
    return tuple(per_group), intra
