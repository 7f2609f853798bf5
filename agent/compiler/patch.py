"""A build that patches the previous one, for the daemon's common changes.

When no local interface changed (the same interfaces, their instances in the same
groups and network, the same anti-spoofing: agent.compiler.compile.local_layout), the interface
chains and the dispatch objects are the previous build's, and a policy chain changes
only when one of its inputs did: the rules of its groups in its direction (or their
settings), the member networks of the groups those rules or its intra-group access
name, the prefix lists they name. `compile_changes` finds those chains from what
changed (agent.compiler.memo canonicalises every input against the previous build, so
"changed" is "not the same object") and rebuilds them alone; everything else is carried
over. Anything else (an interface added, an instance's groups changed, a group added
or removed, a build with errors) takes agent.compiler.compile.compile_ruleset, which reuses what
it can per chain. Either way the result equals `build_ruleset(state)` (the property test
in tests/unit/test_compiler_memo.py checks it on random edit sequences).
"""
from __future__ import annotations

import logging
from typing import Optional

from agent.compiler.compile import (Builder, CompileMemo, Ruleset, compile_ruleset, finish_build, local_layout,
                           policy_chain_body)
from agent.compiler.memo import canonicalise
from agent.model.objects import DIRECTIONS, DesiredState

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
                shared=dict(record.shared_names))
    b.chains.update(previous.chains)
    memo.chains.update(previous.chains)                    # type: ignore[attr-defined]
    memo.interfaces.update(previous.interfaces)            # type: ignore[attr-defined]
    dirty_parts = {(g, d) for g, (_, parts) in memo.parts.items() for d in DIRECTIONS
                   if parts[d] is not previous.parts[g][1][d]}
    for key, entry in previous.regions.items():
        if _unchanged(key[1], dirty_parts):
            _carry(memo, previous, key, entry)
        else:
            _rebuild(b, key, entry)
    return finish_build(b, record)          # the shared sets: rebuilt where members changed


def _unchanged(identity: tuple, dirty_parts: set) -> bool:
    """A chain's region depends on its groups' rules of its direction only (members are
    in shared sets, agent.compiler.sets)."""
    _, direction, _, _, group_ids = identity
    return not any((gid, direction) in dirty_parts for gid in group_ids)


def _carry(memo: CompileMemo, previous: CompileMemo, key: tuple, entry: tuple) -> None:
    memo.regions[key] = entry                                          # type: ignore[index]
    for v in (4, 6):
        part = previous.region_parts.get((key[0], v))
        if part is not None:
            memo.region_parts[(key[0], v)] = part                      # type: ignore[index]


def _rebuild(b: Builder, key: tuple, entry: tuple) -> None:
    name, identity = key
    for _, old_set in entry[1].sets:
        del b.sets[old_set.name]
    for chain_name in [c.name for _, c in entry[1].chains] + [name]:
        del b.chains[chain_name]
        b.memo.chains.pop(chain_name, None)                            # type: ignore[attr-defined]
    policy_chain_body(b, name, identity, b.state.local_interfaces[entry[2]], identity[1])
