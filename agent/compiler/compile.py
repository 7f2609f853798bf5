"""Compile effective rule lists into nftables objects (pure: state in, frozen data out).

Layout of the `inet` table (see docs/datapath.md):

* base chains on the forward hook dispatch by interface through verdict maps: one for
  the sender's egress list (by iifname), one, at a later priority, for the receiver's
  ingress list (by oifname); an accept in the first does not end evaluation of the
  second. The input hook judges instance -> host traffic with the egress list.
* per-interface chains: connection state, first-hop guard, neighbour discovery,
  anti-spoofing (agent.compiler.guard), then `goto` a policy chain shared by every interface with the same groups and nic type.
* policy chains: intra-group accepts (named per-group address sets), then the user and
  default rules painted into their *first-match accept region*: the points whose first
  matching line accepts, as disjoint boxes in ONE concatenated interval set per IP
  version (agent.compiler.boxes.first_match_region). One lookup decides stages 4-5 whatever the
  number of rules or the order of their verdicts; anything outside is dropped.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from operator import itemgetter
from typing import TYPE_CHECKING, Callable, Optional

from agent.compiler.attribution import (FINAL as FINAL_STAGE, INTRA_GROUP as INTRA_STAGE, VerdictId)
from agent.compiler.builder import Builder, safe_name
from agent.compiler.dispatch import bridge_table, dispatch_objects
from agent.compiler.guard import build_interface_rules
from agent.compiler.match_space import match_boxes, match_tail
from agent.compiler.memo import (BuildRecord, CompileMemo, InterfaceEntry, RegionEntry, RegionPart, VersionEntry,
                                 canonicalise)
from agent.compiler.verdict_chains import add_verdict_chains
from agent.compiler.verdicts import quota_verdict, unknown_verdict, verdict_of
from agent.compiler.runs import (FAMILY_KW, Line)
from agent.compiler.paint import paint_version
from agent.compiler.sets import build_shared_sets
from agent.model.validate import collector_paused
from agent.model.objects import ACCEPT, CLASSIC, DIRECTIONS, EGRESS, INGRESS, DesiredState, Interface
from agent.policy.effective import DEFAULTS, FINAL, USER, Entry, build_effective_list, essential_entries, intra_group_ids
from agent.compiler.ruleset import TABLE, Chain, NftSet, Ruleset, Table

if TYPE_CHECKING:
    from agent.compiler.staging import Stager

__all__ = ["TABLE", "Chain", "NftSet", "Ruleset", "Table", "build_ruleset", "compile_ruleset", "safe_name"]


def build_ruleset(state: DesiredState) -> Ruleset:
    """The complete desired kernel state for this host."""
    return compile_ruleset(state, None)[0]


def compile_ruleset(state: DesiredState, previous: Optional[CompileMemo],
                    stager: Optional[Stager] = None) -> tuple[Ruleset, CompileMemo]:
    """`build_ruleset`, reusing the policy chains of the build `previous` remembers
    whose inputs did not change (agent.compiler.memo); the same Ruleset either way.
    `stager`: handed what the build has made every few hundred interfaces (a cold load
    in stages, agent.compiler.staging). The cyclic collector is paused meanwhile
    (agent.model.validate.collector_paused)."""
    with collector_paused():
        return _compile_ruleset(state, previous, stager)


def _compile_ruleset(state: DesiredState, previous: Optional[CompileMemo],
                     stager: Optional[Stager]) -> tuple[Ruleset, CompileMemo]:
    b = Builder(state, canonicalise(state, previous))
    dispatch: dict[str, list[tuple[str, str]]] = {INGRESS: [], EGRESS: []}
    names = sorted(state.local_interfaces)
    for done, name in enumerate(names, 1):
        nic = state.local_interfaces[name]
        for direction in DIRECTIONS:
            chain = build_interface_chain(b, nic, direction)
            dispatch[direction].append((nic.name, chain))
        if stager is not None:
            stager.after(b, done, len(names))
    unknown = {d: unknown_verdict(d) for d in DIRECTIONS} if state.instance_interfaces else {}
    sets, chains = dispatch_objects(b.state, dispatch, {d: b.goto(vid) for d, vid in unknown.items()})
    return finish_build(b, BuildRecord(local_layout(state), (tuple(sets), tuple(chains)), bridge_table(state),
                                       verdicts=tuple(unknown.values())))


def patched_builder(state: DesiredState, previous: CompileMemo) -> Builder:
    """A build that starts from everything `previous` made (its record: names, sets,
    chains, interfaces); agent.compiler.patch then rebuilds the chains that changed."""
    record = previous.record
    assert record is not None
    b = Builder(state, canonicalise(state, previous), sets=dict(record.sets), owners=dict(record.owners),
                shared=dict(record.shared_names))
    b.reuse.carry(previous)
    b.chains.update(previous.chains)
    return b


def rebuild_policy_chain(b: Builder, key: tuple, entry: RegionEntry) -> None:
    """Drop the objects of the policy chain `key` (as the previous build made them) and
    build it again from this build's state."""
    name, identity = key
    for _, old_set in entry.part.sets:
        del b.sets[old_set.name]
    for old_chain in [c.name for _, c in entry.part.chains] + [name]:
        b.drop_chain(old_chain)
    policy_chain_body(b, name, identity, b.state.local_interfaces[entry.nic], identity[1])


def local_layout(state: DesiredState) -> tuple:
    """What the interface chains and the dispatch objects are made of: the host's
    interfaces, the network and groups of their instances, anti-spoofing."""
    return (state.host, state.anti_spoofing, state.instance_interfaces, state.mode, tuple(
        (name, nic, state.instance_by_id[nic.instance_id].network, state.instance_by_id[nic.instance_id].groups)
        for name, nic in sorted(state.local_interfaces.items())))


def finish_build(b: Builder, record: BuildRecord) -> tuple[Ruleset, CompileMemo]:
    """The Ruleset of a build, and its memo (with what a patched build needs)."""
    build_shared_sets(b)
    add_verdict_chains(b, record.verdicts)
    dispatch_sets, dispatch_chains = record.dispatch
    all_sets = tuple(sorted(list(b.sets.values()) + list(dispatch_sets), key=set_order(b)))
    order = _chain_order(b)
    all_chains = dispatch_chains + (tuple(itemgetter(*order)(b.chains)) if len(order) > 1 else
                                    tuple(b.chains[name] for name in order))
    tables = (Table("inet", TABLE, all_sets, all_chains),) + ((record.bridge,) if record.bridge else ())
    record = replace(record, owners=b.owners, sets=b.sets, shared_names=b.shared, errors=tuple(b.errors))
    return Ruleset(tables=tables, errors=tuple(b.errors)), b.reuse.freeze(record, (order, frozenset(order)))


def _chain_order(b: Builder) -> tuple[str, ...]:
    """The chains' names sorted; the previous build's order when the names are the same
    (a patched build: sorting 17,600 names costs more than checking them)."""
    previous = b.reuse.previous
    if previous is not None and b.reuse.carried and b.chains.keys() == previous.chain_order[1]:
        return previous.chain_order[0]
    return tuple(sorted(b.chains))


def set_order(b: Builder) -> Callable[[NftSet], tuple]:
    """The declaration order of the table's sets: the shared sets first (`peers4/6`, then
    the group and prefix-list sets), then the rest by name. The kernel finds the set a
    rule names by walking the table's sets in declaration order comparing names, and
    the shared sets are the ones many rules name (every policy chain `@peers4`, each
    member-path line its group's set): declared first, ~2 s less kernel time at
    1,000 x 100 (docs/kernel-facts.md section 9)."""
    shared = set(b.shared.values())
    return lambda s: (s.name not in shared, not s.name.startswith("peers"), s.name)


def interface_chain_name(nic: Interface, direction: str) -> str:
    return f"{'in' if direction == INGRESS else 'eg'}_{safe_name(nic.name)}"


def build_interface_chain(b: Builder, nic: Interface, direction: str) -> str:
    name = b.claim(interface_chain_name(nic, direction), ("interface", nic.name, direction))
    try:
        rules = list(_interface_rules(b, nic, direction))
        rules.append(f"goto {build_policy_chain(b, nic, direction)}")
    except Exception as exc:  # fail closed: this interface drops, the rest is enforced
        b.errors.append(f"{nic.name} {direction}: cannot compile ({exc}); traffic is dropped")
        rules = ["counter drop"]
    b.add_chain(name, tuple(rules))
    return name


def _interface_rules(b: Builder, nic: Interface, direction: str) -> tuple[str, ...]:
    """`interface_rules`, or the previous build's when the interface is the same."""
    return b.reuse.interface_rules((nic.name, direction), (nic, b.state.anti_spoofing),
                                   lambda: interface_rules(b, nic, direction))


def interface_rules(b: Builder, nic: Interface, direction: str) -> InterfaceEntry:
    """Stages 1-2: connection state, first-hop guard, neighbour discovery, anti-spoofing
    (agent.compiler.guard); each drop jumps to its verdict chain."""
    essentials = essential_entries(b.state, nic, direction)
    vids = {id(e): verdict_of(e, direction) for e in essentials}

    def then(e: Entry) -> str:
        vid = vids[id(e)]
        return b.goto(vid) if vid is not None else e.verdict
    quota = quota_verdict(direction)
    rules = build_interface_rules(nic, essentials, then, b.goto(quota) if nic.max_connections else "")
    used = tuple(v for v in vids.values() if v is not None) + ((quota,) if nic.max_connections else ())
    return InterfaceEntry((nic, b.state.anti_spoofing), tuple(rules), used)


def policy_key(state: DesiredState, nic: Interface, direction: str) -> str:
    inst = state.instance_by_id[nic.instance_id]
    kind = nic.nic_type if inst.network == CLASSIC else "all"
    groups = "+".join(sorted(inst.groups))
    return f"{'pin' if direction == INGRESS else 'peg'}_{inst.network}_{kind}_{groups}"


def policy_identity(state: DesiredState, nic: Interface, direction: str) -> tuple:
    """What a policy chain depends on (the structured form of `policy_key`)."""
    inst = state.instance_by_id[nic.instance_id]
    kind = nic.nic_type if inst.network == CLASSIC else "all"
    return ("policy", direction, inst.network, kind, tuple(sorted(inst.groups)))


def build_policy_chain(b: Builder, nic: Interface, direction: str) -> str:
    """Stages 3-6, shared by interfaces with the same groups, network and nic type."""
    identity = policy_identity(b.state, nic, direction)
    name = b.claim(safe_name(policy_key(b.state, nic, direction)), identity)
    if name not in b.chains:
        policy_chain_body(b, name, identity, nic, direction)
    return name


def policy_chain_body(b: Builder, name: str, identity: tuple, nic: Interface, direction: str) -> None:
    peer_kw = "saddr" if direction == INGRESS else "daddr"
    intra = intra_group_ids(b.state, nic)
    rules = [r for gid in intra for r in intra_group_rules(b, gid, peer_kw, direction)]
    signature = b.reuse.signature(identity, intra)
    region = _remembered_region(b, name, identity, signature)
    if region is None:
        entries = build_effective_list(b.state, nic.name, direction, resolve_peers=False).entries
        assert entries[-1].stage == FINAL
        region = region_rules(b, name, [e for e in entries if e.stage in (USER, DEFAULTS)], peer_kw, direction)
    refs = tuple((("group", g, v), b.shared_name("group", g, v), False) for g in intra for v in (4, 6))
    final = VerdictId(FINAL_STAGE, direction)
    used = tuple(VerdictId(INTRA_STAGE, direction, "accept", g) for g in intra) + (final,)
    b.reuse.regions[(name, identity)] = RegionEntry(signature, region, nic.name, refs, used)
    b.add_chain(name, tuple(rules) + region.rules + (b.goto(final),))


def _remembered_region(b: Builder, name: str, identity: tuple, signature: tuple) -> Optional[RegionPart]:
    """The previous build's region of this chain if its inputs are the same and its
    objects get the same names here; its objects are added to this build."""
    hit = b.reuse.region((name, identity), signature)
    if hit is None or not _names_hold(b, hit.part):
        return None
    _adopt(b, hit.part)
    return hit.part


def _names_hold(b: Builder, part: RegionPart) -> bool:
    return all(b.claim(s.name, ident) == s.name for ident, s in part.sets) and \
        all(b.claim(c.name, ident) == c.name for ident, c in part.chains) and \
        all(b.shared_name(*key) == sname for key, sname, _ in part.refs)


def _adopt(b: Builder, part: RegionPart) -> None:
    for vid in part.verdicts:           # the previous build's: they keep their numbers
        b.reuse.numbering.number(vid)
    for _, s in part.sets:
        b.sets.setdefault(s.name, s)
    for _, c in part.chains:
        b.add_chain(c.name, c.rules)


def intra_group_rules(b: Builder, group_id: str, peer_kw: str, direction: str) -> list[str]:
    then = b.goto(VerdictId(INTRA_STAGE, direction, "accept", group_id))
    return [f"{FAMILY_KW[v]} {peer_kw} @{b.shared_name('group', group_id, v)} {then}" for v in (4, 6)]


def region_rules(b: Builder, prefix: str, entries: list[Entry], peer_kw: str, direction: str) -> RegionPart:
    """Stages 4-5: per IP version, the static path (ONE region lookup, after a hashed
    map of point lines where there are many) and, when some line names a group or a
    prefix list, the member path for addresses in the shared sets (agent.compiler.runs)."""
    with_sport = any(e.match.sports for e in entries)
    with_dport = any(e.match.ports for e in entries)
    vids = [verdict_of(e, direction) for e in entries]
    labels = [b.reuse.numbering.number(vid) for vid in vids if vid is not None]
    assert len(labels) == len(entries)
    final = b.goto(VerdictId(FINAL_STAGE, direction))
    parts = [_version_part(b, prefix, v, build_lines(b, entries, labels, v, with_sport, with_dport),
                           (with_sport, with_dport, peer_kw, final)) for v in (4, 6)]
    rules = tuple(r for p in parts for r in p.rules)
    if len(rules) == 2 and rules[0].startswith("meta nfproto ipv4 ") and \
            rules[1] == "meta nfproto ipv6 " + rules[0][len("meta nfproto ipv4 "):]:
        rules = (rules[0][len("meta nfproto ipv4 "):],)
    return RegionPart(rules, tuple(s for p in parts for s in p.sets), tuple(c for p in parts for c in p.chains),
                      tuple(r for p in parts for r in p.refs), tuple(v for v in vids if v is not None))


def build_lines(b: Builder, entries: list[Entry], labels: list[int], v: int, with_sport: bool,
                with_dport: bool) -> list[Line]:
    """The lines of one IP version; `labels[i]` is the verdict number of `entries[i]`."""
    lines = []
    for order, (e, label) in enumerate(zip(entries, labels)):
        accept = e.verdict == ACCEPT
        if e.peer is not None and e.peer.kind != "cidr":
            tail = match_tail(e.match, v, with_sport, with_dport)  # type: ignore[arg-type]  # entries here are match lines
            if tail is not None:
                lines.append(Line(order, accept, b.shared_name(e.peer.kind, e.peer.value, v), (tail,), label))
        else:
            boxes = match_boxes(e.match, v, with_sport, with_dport)  # type: ignore[arg-type]
            if boxes:
                lines.append(Line(order, accept, None, tuple(boxes), label))
    return lines


def _version_part(b: Builder, prefix: str, v: int, lines: list[Line], shape: tuple) -> RegionPart:
    """One IP version's part; the previous build's when its lines in this version are
    the same (an IPv4 rule edited leaves the IPv6 objects alone). The memo keeps a
    SHA-256 of the lines, not the lines (~140 MB at 1,000 interfaces x 100 rules)."""
    digest = hashlib.sha256(repr(([(ln.order, ln.accept, ln.ref, ln.boxes, ln.label) for ln in lines], shape))
                            .encode()).digest()
    part = b.reuse.version_part((prefix, v), digest)
    if part is not None and _names_hold(b, part):
        _adopt(b, part)
    else:
        part = paint_version(b, prefix, v, lines, *shape)
    b.reuse.region_parts[(prefix, v)] = VersionEntry(digest, part)
    return part
