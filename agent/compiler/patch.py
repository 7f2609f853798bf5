"""A build that patches the previous one, for the daemon's common changes.

When no local interface changed (the same interfaces, their instances in the same
groups and network, the same anti-spoofing: agent.compiler.compile.local_layout), the interface
chains and the dispatch objects are the previous build's, and a policy chain changes
only when one of its inputs did: the rules of its groups in its direction (or their
settings). Members of the groups and prefix lists the rules name are shared sets
(agent.compiler.sets): a member joining rebuilds no chain, only the sets it is in.
`compile_changes` finds the chains to rebuild from what changed (agent.compiler.memo
canonicalises every input against the previous build, so "changed" is "not the same
object") and asks agent.compiler.compile to rebuild them alone; everything else is
carried over, and when no rebuilt chain names other shared sets than before, so is the
list of shared sets the chains name. Anything else (an interface added, an instance's
groups changed, a group added or removed, a build with errors) takes
agent.compiler.compile.compile_ruleset, which reuses what it can per chain. Either way the
result equals `build_ruleset(state)` (tests/unit/test_compiler_memo.py and
tests/unit/test_validate_membership.py check it on random edit sequences).
"""
from __future__ import annotations

import logging
from typing import Optional

from agent.compiler.compile import compile_ruleset, finish_build, local_layout, patched_builder, rebuild_policy_chain
from agent.compiler.memo import CompileMemo
from agent.compiler.ruleset import Ruleset
from agent.model.objects import DIRECTIONS, DesiredState

log = logging.getLogger(__name__)


def compile_changes(state: DesiredState, previous: Optional[CompileMemo]) -> tuple[Ruleset, CompileMemo]:
    """`compile_ruleset(state, previous)`, patching the previous build when it can."""
    record = previous.record if previous is not None else None
    if previous is None or record is None or record.errors or local_layout(state) != record.layout:
        return compile_ruleset(state, previous)
    try:
        return _patched(state, previous)
    except _Unpatchable as why:
        log.debug("host %s: %s; building in full", state.host, why)
    except Exception as exc:  # noqa: BLE001 - the full build decides (and fails closed)
        log.debug("host %s: patched build failed (%s); building in full", state.host, exc)
    return compile_ruleset(state, previous)


class _Unpatchable(Exception):
    """The change is not one a patched build handles."""


def _patched(state: DesiredState, previous: CompileMemo) -> tuple[Ruleset, CompileMemo]:
    assert previous.record is not None
    b = patched_builder(state, previous)
    now, before = b.reuse.inputs, previous.inputs
    if now.groups.keys() != before.groups.keys() or now.prefix_lists.keys() != before.prefix_lists.keys():
        raise _Unpatchable("a group or prefix list came or went")
    dirty: dict[str, set[str]] = {d: set() for d in DIRECTIONS}     # direction -> groups whose rules changed
    for g, (_, parts) in now.parts.items():
        for d in DIRECTIONS:
            if parts[d] is not before.parts[g][1][d]:
                dirty[d].add(g)
    b.reuse.regions.update(previous.regions)            # a copy keeps the keys' hashes: no rehashing
    b.reuse.region_parts.update(previous.region_parts)
    rebuilt = [key for key in previous.regions if not dirty[key[1][1]].isdisjoint(key[1][4])]
    same_refs = True
    for key in rebuilt:
        entry = previous.regions[key]
        rebuild_policy_chain(b, key, entry)
        same_refs = same_refs and b.reuse.regions[key].refs() == entry.refs()
    b.reuse.rebuilt = tuple(rebuilt)
    b.reuse.wanted = previous.wanted if same_refs else None
    return finish_build(b, previous.record)          # the shared sets: rebuilt where members changed
