"""What the compiler remembers between two builds, so a change recompiles only what it
touches (the daemon compiles every revision; a full build at 1,000 interfaces x 100
rules takes seconds, nearly all of it painting first-match regions).

A policy chain's stages 3-6 are a function of its identity (direction, network, nic
kind, groups) and of a few inputs: each group's settings and rules of the chain's
direction (members are shared sets the chain names, agent.compiler.sets). Those inputs
are *canonicalised* against the previous build (`canonicalise`): a value equal to the
previous one is replaced by the previous object, so the signature of an unchanged chain
is made of the same objects and compares in a few identity checks. A chain whose
signature is unchanged gets its previous region rules and sets back, the very same
objects, which also lets agent.compiler.transaction skip them by identity.

One build's reuse is a `Reuse`: the previous build's `CompileMemo` (frozen) to read
from, and this build's entries, written while it runs and frozen into the next
`CompileMemo` by `freeze`. Every entry is typed. Pure: everything is an argument; the
memo belongs to the caller (agent.reconciler.keeper keeps the one of the applied ruleset).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from agent.compiler.attribution import VerdictId
from agent.compiler.boxes import Interval
from agent.compiler.ruleset import Chain, NftSet
from agent.compiler.verdicts import Numbering
from agent.model.objects import DIRECTIONS, DesiredState, Group, IPAddress, IPNetwork

Signature = tuple
SharedRef = tuple[tuple, str, bool]     # ((kind, id, version), set name, whether the union holds it)


@dataclass(frozen=True)
class RegionPart:
    """Stages 4-5 of a policy chain (or of one IP version of it): its rules, the sets and
    member-path chains it made (each with the identity its name was claimed for), and the
    shared sets it names."""
    rules: tuple[str, ...]
    sets: tuple[tuple[tuple, NftSet], ...] = ()
    chains: tuple[tuple[tuple, Chain], ...] = ()
    refs: tuple[SharedRef, ...] = ()
    verdicts: tuple[VerdictId, ...] = ()    # the identities its rules and maps jump to


@dataclass(frozen=True)
class RegionEntry:
    """A policy chain as built: what it depends on, its stages 4-5, an interface that
    uses it (to rebuild it from), and the shared sets its intra-group stage names."""
    signature: Signature
    part: RegionPart
    nic: str
    intra_refs: tuple[SharedRef, ...]
    verdicts: tuple[VerdictId, ...] = ()    # its intra-group and final identities

    def refs(self) -> tuple[SharedRef, ...]:
        return self.part.refs + self.intra_refs


@dataclass(frozen=True)
class VersionEntry:
    """One IP version of a region: a SHA-256 of its lines (not the lines: ~140 MB at
    1,000 interfaces x 100 rules) and what was painted from them."""
    digest: bytes
    part: RegionPart


@dataclass(frozen=True)
class InterfaceEntry:
    inputs: tuple                   # (interface, anti_spoofing)
    rules: tuple[str, ...]          # stages 1-2
    verdicts: tuple[VerdictId, ...] = ()    # the identities they jump to


@dataclass(frozen=True)
class SharedSetEntry:
    """A shared set as built: its inputs (canonical objects), the set, its merged
    intervals, and for a union the (kind, id) of the sets it covers."""
    inputs: tuple
    made: NftSet
    merged: list[Interval]
    covers: tuple = ()


@dataclass(frozen=True)
class SharedWanted:
    """The shared sets the chains name: (kind, id, version) -> name, and per version the
    (kind, id) the union covers."""
    names: Mapping[tuple, str]
    union: Mapping[int, list[tuple]]


@dataclass(frozen=True)
class BuildRecord:
    """What a build made besides its chains and regions, for a patched next build."""
    layout: tuple                                   # agent.compiler.compile.local_layout of its state
    dispatch: tuple                                 # (dispatch sets, base chains)
    bridge: Any                                     # the bridge Table or None
    owners: Mapping[str, tuple] = field(default_factory=dict)      # nft name -> what it names
    sets: Mapping[str, NftSet] = field(default_factory=dict)       # name -> NftSet (not dispatch)
    shared_names: Mapping[tuple, str] = field(default_factory=dict)   # (kind, id, version) -> name
    errors: tuple[str, ...] = ()
    verdicts: tuple[VerdictId, ...] = ()    # the identities of the base chains (unknown interfaces)


@dataclass(frozen=True)
class Inputs:
    """A build's inputs, canonicalised against the previous build's."""
    groups: Mapping[str, Group] = field(default_factory=dict)
    networks: Mapping[str, tuple[IPAddress, ...]] = field(default_factory=dict)   # group -> member addresses
    prefix_lists: Mapping[str, tuple[IPNetwork, ...]] = field(default_factory=dict)
    parts: Mapping[str, tuple[Group, Mapping[str, tuple]]] = field(default_factory=dict)
    mode: str = "enforce"           # the document's default mode (audit rules accept)
    log: Any = None                 # the document's log settings (verdict chains' log statements)


@dataclass(frozen=True)
class CompileMemo:
    inputs: Inputs = field(default_factory=Inputs)
    regions: Mapping[tuple, RegionEntry] = field(default_factory=dict)     # (chain, identity) ->
    region_parts: Mapping[tuple, VersionEntry] = field(default_factory=dict)   # (chain, version) ->
    interfaces: Mapping[tuple, InterfaceEntry] = field(default_factory=dict)   # (interface, direction) ->
    shared_sets: Mapping[tuple, SharedSetEntry] = field(default_factory=dict)  # (kind, id, version) ->
    chains: Mapping[str, Chain] = field(default_factory=dict)
    wanted: Optional[SharedWanted] = None
    record: Optional[BuildRecord] = None
    numbers: Mapping[VerdictId, int] = field(default_factory=dict)     # identity -> its number
    verdict_refs: Mapping[VerdictId, int] = field(default_factory=dict)    # identity -> entries jumping to it
    verdict_logs: Mapping[VerdictId, bool] = field(default_factory=dict)   # identity -> its chain logs
    verdict_asked: frozenset = frozenset()     # (group, rule) of the rules asking to log
    chain_order: tuple[tuple[str, ...], frozenset[str]] = ((), frozenset())   # the chains' names sorted, and as a set


@dataclass
class Reuse:
    """One build's reuse: the previous memo to read, this build's entries to write."""
    inputs: Inputs
    previous: Optional[CompileMemo]
    regions: dict[tuple, RegionEntry] = field(default_factory=dict)
    region_parts: dict[tuple, VersionEntry] = field(default_factory=dict)
    interfaces: dict[tuple, InterfaceEntry] = field(default_factory=dict)
    shared_sets: dict[tuple, SharedSetEntry] = field(default_factory=dict)
    chains: dict[str, Chain] = field(default_factory=dict)
    wanted: Optional[SharedWanted] = None
    group_inputs: dict[tuple, tuple] = field(default_factory=dict)     # (group, direction) -> inputs
    numbering: Numbering = field(default_factory=Numbering)
    verdict_refs: Mapping[VerdictId, int] = field(default_factory=dict)
    verdict_logs: Mapping[VerdictId, bool] = field(default_factory=dict)
    verdict_asked: frozenset = frozenset()
    carried: bool = False           # a patched build: it starts from the previous build's chains
    rebuilt: Optional[tuple[tuple, ...]] = None     # a patched build: the only region keys it rebuilt

    def interface_rules(self, key: tuple, inputs: tuple,
                        make: Callable[[], InterfaceEntry]) -> tuple[str, ...]:
        """Stages 1-2 of an interface: the previous build's when its inputs are equal
        (its identities keep their numbers: they are the previous build's)."""
        hit = self.previous.interfaces.get(key) if self.previous else None
        entry = hit if hit is not None and hit.inputs == inputs else make()
        for vid in entry.verdicts:
            self.numbering.number(vid)
        self.interfaces[key] = entry
        return entry.rules

    def chain(self, name: str, rules: tuple[str, ...]) -> Chain:
        """The chain; the previous build's object when its rules are the same."""
        old = self.previous.chains.get(name) if self.previous else None
        chain = old if old is not None and old.rules == rules else Chain(name, rules)
        self.chains[name] = chain
        return chain

    def signature(self, identity: tuple, intra: tuple[str, ...]) -> Signature:
        return policy_signature(self.inputs, identity, intra, self.group_inputs)

    def region(self, key: tuple, signature: Signature) -> Optional[RegionEntry]:
        """The previous build's entry of this chain if its signature is the same."""
        hit = self.previous.regions.get(key) if self.previous else None
        return hit if hit is not None and hit.signature == signature else None

    def version_part(self, key: tuple, digest: bytes) -> Optional[RegionPart]:
        hit = self.previous.region_parts.get(key) if self.previous else None
        return hit.part if hit is not None and hit.digest == digest else None

    def previous_shared(self, key: tuple) -> Optional[SharedSetEntry]:
        return self.previous.shared_sets.get(key) if self.previous else None

    def carry(self, previous: CompileMemo) -> None:
        """Start from every chain and interface of `previous` (a patched build)."""
        self.carried = True
        self.chains.update(previous.chains)
        self.interfaces.update(previous.interfaces)

    def freeze(self, record: BuildRecord,
               chain_order: tuple[tuple[str, ...], frozenset[str]] = ((), frozenset())) -> CompileMemo:
        return CompileMemo(self.inputs, self.regions, self.region_parts, self.interfaces, self.shared_sets,
                           self.chains, self.wanted, record, dict(self.numbering.numbers),
                           self.verdict_refs, self.verdict_logs, self.verdict_asked, chain_order)


def _same(old: Any, new: Any) -> Any:
    """The previous object when it equals the new one (identity first: cheap)."""
    return old if old is not None and (old is new or old == new) else new


def canonicalise(state: DesiredState, previous: Optional[CompileMemo]) -> Reuse:
    """This build's reuse: its inputs, with every value equal to the previous build's
    replaced by that object, and no entries yet (the build writes its own)."""
    prev = previous.inputs if previous is not None else Inputs()
    groups = {g.id: _same(prev.groups.get(g.id), g) for g in state.groups}
    networks = {gid: _same(prev.networks.get(gid), addrs) for gid, addrs in state.group_addresses.items()}
    prefix_lists = {pid: _same(prev.prefix_lists.get(pid), nets) for pid, nets in state.prefix_lists}
    parts = {gid: _group_parts(g, prev.parts.get(gid)) for gid, g in groups.items()}
    numbering = Numbering(previous.numbers if previous is not None else {})
    return Reuse(Inputs(groups, networks, prefix_lists, parts, state.mode, state.log), previous, numbering=numbering)


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


def policy_signature(inputs: Inputs, identity: tuple, intra: tuple[str, ...], cache: dict) -> Signature:
    """Everything stages 3-6 of the policy chain `identity` depend on besides the
    identity itself: its groups' settings and rules in its direction (memoised in
    `cache` for this build), and the groups it grants intra-group access to (by name:
    their members are shared sets)."""
    _, direction, _, _, group_ids = identity
    per_group = []
    for gid in group_ids:
        got = cache.get((gid, direction))
        if got is None:
            got = cache[(gid, direction)] = (inputs.parts[gid][1][direction],)
        per_group.append(got)
    return tuple(per_group), intra, inputs.mode
