"""The verdict chains of a build, kept in step with the previous build's (pure).

`add_verdict_chains` gives the build one chain `v_<n>` per identity that something of
the build jumps to (agent.compiler.verdicts makes one chain; agent.compiler.attribution
is the contract). At 1,000 interfaces x 100 rules a build has ~10,600 identities, and a
daemon's revision usually changes a handful of policy chains, so the work follows the
change, not the table:

* which identities are live is a reference count over the build's entries (policy
  chains, interface chains, base chains), updated from the previous build's for the
  entries that are not the previous objects (a full recount costs ~0.3 s there);
* numbers are kept (agent.compiler.verdicts.Numbering); only identities new to this
  build are numbered, in sorted order (so a build numbers the same way in every process);
* a chain whose identity, number and log statement are the previous build's is the
  previous object, not made again (making 10,600 chains costs ~0.3 s);
* a patched build with the same log settings and logging rules touches only the
  identities whose count went to or from zero: none for a member joining, whose
  policy and interface chains are all the previous objects.

A full build (no previous memo) counts and makes everything, as before.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping, Optional

from agent.compiler.attribution import USER, VerdictId, chain_name, number_of_chain
from agent.compiler.builder import Builder
from agent.compiler.logs import log_sets, logs
from agent.compiler.memo import CompileMemo
from agent.compiler.verdicts import verdict_chain
from agent.model.objects import LogSettings


def add_verdict_chains(b: Builder, base: tuple[VerdictId, ...]) -> None:
    """One chain `v_<n>` per live identity; the chains of identities no longer used (a
    patched build starts from the previous chains) go."""
    previous = b.reuse.previous
    asked = frozenset((r.group_id, r.id) for g in b.state.groups for r in g.rules if r.log)
    if previous is not None and b.reuse.carried and previous.verdict_refs and previous.verdict_asked == asked \
            and previous.inputs.log == b.reuse.inputs.log:
        _update(b, base, previous)
    else:
        _build_all(b, base, previous, asked)
    b.reuse.verdict_asked = asked
    _log_sets(b, any(b.reuse.verdict_logs.values()))


def _build_all(b: Builder, base: tuple[VerdictId, ...], previous: Optional[CompileMemo],
               asked: frozenset[tuple[str, str]]) -> None:
    """Every live identity numbered and its chain made (or the previous object kept)."""
    numbering = b.reuse.numbering
    refs = _references(b, base, previous)
    for vid in sorted(v for v in refs if v not in numbering.numbers and v not in numbering.previous):
        numbering.number(vid)
    numbering.numbers = {vid: numbering.number(vid) for vid in refs}
    _drop_unused(b, previous, numbering.numbers)
    settings = b.state.log
    same_settings = previous is not None and previous.inputs.log == b.reuse.inputs.log
    old_numbers = previous.numbers if previous is not None else {}
    old_logs = previous.verdict_logs if previous is not None else {}
    old_chains = previous.chains if previous is not None else {}
    flags: dict[VerdictId, bool] = {}
    for vid, number in numbering.numbers.items():
        log = flags[vid] = _logs(vid, asked, settings)
        name = chain_name(number)
        old = old_chains.get(name)
        if same_settings and old is not None and old_numbers.get(vid) == number and old_logs.get(vid) == log:
            b.chains[name] = b.reuse.chains[name] = old
        else:
            b.add_chain(name, verdict_chain(vid, number, settings if log else None).rules)
    b.reuse.verdict_refs, b.reuse.verdict_logs = refs, flags


def _update(b: Builder, base: tuple[VerdictId, ...], previous: CompileMemo) -> None:
    """A patched build with the same log settings and rules asking to log: the previous
    numbers and chains (already in the build), changed only for the identities whose
    reference count went to or from zero."""
    assert previous.record is not None
    touched: set[VerdictId] = set()
    refs = _recounted(b, base, previous, touched)
    numbering = b.reuse.numbering
    numbers, flags = dict(previous.numbers), dict(previous.verdict_logs)
    for vid in touched - refs.keys():
        name = chain_name(numbers.pop(vid))
        flags.pop(vid, None)
        if name in b.chains:
            b.drop_chain(name)
    for vid in sorted(v for v in touched if v in refs and v not in numbers):
        number = numbers[vid] = numbering.number(vid)
        log = flags[vid] = _logs(vid, previous.verdict_asked, b.state.log)
        b.add_chain(chain_name(number), verdict_chain(vid, number, b.state.log if log else None).rules)
    numbering.numbers = numbers
    b.reuse.verdict_refs, b.reuse.verdict_logs = refs, flags


def _logs(vid: VerdictId, asked: frozenset[tuple[str, str]], settings: Optional[LogSettings]) -> bool:
    return logs(vid.stage, vid.verdict, vid.audit, vid.stage == USER and (vid.group, vid.rule) in asked, settings)


def _entry_verdicts(entry: object) -> Iterable[VerdictId]:
    """The identities one memo entry (policy chain or interface chain) jumps to."""
    part = getattr(entry, "part", None)
    if part is not None:
        yield from part.verdicts
    yield from getattr(entry, "verdicts", ())


def _references(b: Builder, base: tuple[VerdictId, ...], previous: Optional[CompileMemo]) -> dict[VerdictId, int]:
    """Identity -> how many entries jump to it (the live identities are its keys): the
    previous build's counts corrected for the entries that changed; counted in full
    without a previous build."""
    if previous is None or previous.record is None or not previous.verdict_refs:
        counts: Counter[VerdictId] = Counter(base)
        for entry in list(b.reuse.regions.values()) + list(b.reuse.interfaces.values()):
            counts.update(_entry_verdicts(entry))
        return dict(counts)
    return _recounted(b, base, previous, set())


def _recounted(b: Builder, base: tuple[VerdictId, ...], previous: CompileMemo,
               touched: set[VerdictId]) -> dict[VerdictId, int]:
    """The previous counts, corrected for the entries (and base identities) that are not
    the previous objects; `touched` collects the identities whose count moved."""
    assert previous.record is not None
    refs = dict(previous.verdict_refs)
    _recount(refs, previous.record.verdicts, -1, touched)
    _recount(refs, base, +1, touched)
    pairs: list[tuple[Mapping[tuple, object], Mapping[tuple, object], Iterable[tuple]]]
    if b.reuse.rebuilt is not None:         # a patched build: only these entries may differ
        pairs = [(b.reuse.regions, previous.regions, b.reuse.rebuilt)]
    else:
        pairs = [(now, before, now.keys() | before.keys()) for now, before in
                 ((b.reuse.regions, previous.regions), (b.reuse.interfaces, previous.interfaces))]
    for now, before, keys in pairs:
        for key in keys:
            new, old = now.get(key), before.get(key)
            if new is not old:
                _recount(refs, _entry_verdicts(old) if old is not None else (), -1, touched)
                _recount(refs, _entry_verdicts(new) if new is not None else (), +1, touched)
    return refs


def _recount(refs: dict[VerdictId, int], vids: Iterable[VerdictId], step: int, touched: set[VerdictId]) -> None:
    for vid in vids:
        touched.add(vid)
        n = refs.get(vid, 0) + step
        if n > 0:
            refs[vid] = n
        else:
            refs.pop(vid, None)


def _drop_unused(b: Builder, previous: Optional[CompileMemo], numbers: Mapping[VerdictId, int]) -> None:
    """Drop the verdict chains of identities this build no longer uses."""
    wanted = {chain_name(n) for n in numbers.values()}
    if previous is not None and previous.verdict_refs:
        candidates: Iterable[str] = {chain_name(n) for n in previous.numbers.values()} - wanted
    else:
        candidates = [n for n in b.chains if number_of_chain(n) is not None and n not in wanted]
    for name in list(candidates):
        if name in b.chains:
            b.drop_chain(name)


def _log_sets(b: Builder, logging: bool) -> None:
    """The dynamic sets the log statements use, present only while some chain logs."""
    for s in log_sets():
        if logging:
            b.sets[s.name] = b.sets.get(s.name) if b.sets.get(s.name) == s else s  # type: ignore[assignment]
        else:
            b.sets.pop(s.name, None)
