"""A build that patches the previous one, for the daemon's common changes.

When no local interface changed (the same interfaces, their instances in the same
groups and network, the same anti-spoofing: agent.compile.local_layout), the interface
chains and the dispatch objects are the previous build's, and a policy chain changes
only when one of its inputs did: the rules of its groups in its direction (or their
settings), the member networks of the groups those rules or its intra-group access
name, the prefix lists they name. `compile_changes` finds those chains from what
changed (agent.compile_memo canonicalises every input against the previous build, so
"changed" is "not the same object") and rebuilds them alone; everything else is carried
over. Anything else (an interface added, an instance's groups changed, a group added
or removed, a build with errors) takes agent.compile.compile_ruleset, which reuses what
it can per chain. Either way the result equals `build_ruleset(state)` (the property test
in tests/test_compile_memo.py checks it on random edit sequences).
"""
from __future__ import annotations

import logging
from typing import Optional

from agent.compile import (Builder, CompileMemo, Ruleset, build_group_set, compile_ruleset, finish_build,
                           local_layout, policy_chain_body)
from agent.compile_memo import canonicalise
from agent.model import DIRECTIONS, DesiredState

log = logging.getLogger(__name__)


def compile_changes(state: DesiredState, previous: Optional[CompileMemo]) -> tuple[Ruleset, CompileMemo]:
    """`compile_ruleset(state, previous)`, patching the previous build when it can."""
    record = previous.record if previous is not None else None
    if previous is None or record is None or record.errors or local_layout(state) != record.layout:
        return compile_ruleset(state, previous)
    memo = canonicalise(state, previous)
    if memo.groups.keys() != previous.groups.keys() or memo.prefix_lists.keys() != previous.prefix_lists.keys():
        return compile_ruleset(state, previous)
    try:
        return _patched(state, previous, memo)
    except Exception as exc:  # noqa: BLE001 - the full build decides (and fails closed)
        log.debug("host %s: patched build failed (%s); building in full", state.host, exc)
        return compile_ruleset(state, previous)


def _patched(state: DesiredState, previous: CompileMemo, memo: CompileMemo) -> tuple[Ruleset, CompileMemo]:
    record = previous.record
    assert record is not None
    b = Builder(state, memo, previous, sets=dict(record.sets), owners=dict(record.owners),
                 group_sets=dict(record.group_set_names))
    b.chains.update(previous.chains)
    memo.chains.update(previous.chains)                    # type: ignore[attr-defined]
    memo.interfaces.update(previous.interfaces)            # type: ignore[attr-defined]
    dirty_nets = {g for g, nets in memo.networks.items() if nets is not previous.networks.get(g)}
    dirty_nets |= {("prefix_list", p) for p, nets in memo.prefix_lists.items()
                   if nets is not previous.prefix_lists.get(p)}
    dirty_parts = {(g, d) for g, (_, parts) in memo.parts.items() for d in DIRECTIONS
                   if parts[d] is not previous.parts[g][1][d]}
    for (gid, v), name in record.group_set_names.items():
        if gid in dirty_nets:
            b.sets[name] = build_group_set(b, gid, v)
        else:
            memo.group_sets[(gid, v)] = previous.group_sets[(gid, v)]     # type: ignore[index]
    for key, entry in previous.regions.items():
        if _unchanged(memo, key[1], entry[0][1], dirty_parts, dirty_nets):
            _carry(memo, previous, key, entry)
        else:
            _rebuild(b, key, entry)
    _drop_unreferenced_group_sets(b)
    return finish_build(b, record)


def _drop_unreferenced_group_sets(b: Builder) -> None:
    """A group whose members no chain lets in any more (inner_access now drop) has no
    set, as in a full build."""
    wanted = {g for entry in b.memo.regions.values() for g in entry[0][1]}
    for (gid, v), name in list(b.group_sets.items()):
        if gid not in wanted:
            del b.group_sets[(gid, v)], b.sets[name]
            b.memo.group_sets.pop((gid, v), None)                      # type: ignore[attr-defined]


def _unchanged(memo: CompileMemo, identity: tuple, intra: tuple, dirty_parts: set, dirty_nets: set) -> bool:
    _, direction, _, _, group_ids = identity
    for gid in group_ids:
        if (gid, direction) in dirty_parts:
            return False
        for kind, ref in memo.parts[gid][1][direction][2]:
            if (ref if kind == "group" else (kind, ref)) in dirty_nets:
                return False
    return not any(g in dirty_nets for g in intra)


def _carry(memo: CompileMemo, previous: CompileMemo, key: tuple, entry: tuple) -> None:
    memo.regions[key] = entry                                          # type: ignore[index]
    for v in (4, 6):
        part = previous.region_parts.get((key[0], v))
        if part is not None:
            memo.region_parts[(key[0], v)] = part                      # type: ignore[index]


def _rebuild(b: Builder, key: tuple, entry: tuple) -> None:
    name, identity = key
    for _, old_set in entry[1][1]:
        del b.sets[old_set.name]
    del b.chains[name]
    policy_chain_body(b, name, identity, b.state.local_interfaces[entry[2]], identity[1])
