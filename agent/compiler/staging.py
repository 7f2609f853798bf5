"""A cold load in stages (pure: scripts out; agent.reconciler.staged commits them).

A cold `apply` of a large state used to compile for seconds and only then hand the
kernel one script (at 1,000 interfaces x 100 rules: 2.2 s of compile, then 6.5 s of
libnftables and kernel work, one after the other on a 2-core host). Staged, the build
hands over what it has made every few hundred interfaces (`Stager.after`): a script
that adds those objects to the new inet table, which no hook reaches yet, so they
decide nothing. The reconciler commits each in a second thread (libnftables runs
without the interpreter lock) while the build goes on. The last script
(`render_final`) completes the table and hooks it in ONE transaction: the verdict
chains' rules, the shared sets' elements, the dispatch and base chains, the bridge
table and the stamp. Until that commit the host filters as it did before (nothing, or
the fail-closed boot table); after it, as the whole script would have.

What an earlier stage names but the build makes only at its end is declared empty
first: the verdict chains `v_<n>` (rules jump to them) and the shared address sets
(rules look them up); the last script fills them. A staged object the finished build
holds differently (never expected: a build does not change what it made) or no longer
holds is rewritten or deleted by the last script, so the loaded table is the build's
whatever happened in between (tests/kernel checks the listing against `nft -f` of the
whole script). Only for a table that does not exist yet: replacing a table must be one
transaction (agent.compiler.render).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Optional

from agent.compiler.attribution import chain_name
from agent.compiler.builder import Builder
from agent.compiler.render import render_chain, render_set, render_table
from agent.compiler.ruleset import TABLE, Chain, NftSet, Ruleset
from agent.compiler.runs import ADDR_TYPE

# Where the build hands over (fractions of the local interfaces, in build order): the
# first stage early, so the kernel starts while the build goes on.
STAGE_AT = (0.04, 0.25, 0.5, 0.75)
_HEAD = f"table inet {TABLE} {{"


@dataclass
class Stager:
    """One staged build: `emit` takes each stage's script; what was staged so far."""
    emit: Callable[[str], None]
    sets: dict[str, NftSet] = field(default_factory=dict)
    chains: dict[str, Chain] = field(default_factory=dict)
    empty_sets: dict[str, NftSet] = field(default_factory=dict)   # declared without elements
    empty_chains: set[str] = field(default_factory=set)           # verdict chains declared empty
    stages: int = 0

    def after(self, b: Builder, done: int, total: int) -> None:
        """Called by the build after its `done`-th of `total` interfaces."""
        if self.stages < len(STAGE_AT) and done >= STAGE_AT[self.stages] * total:
            self.stages += 1
            self.emit(self.render_stage(b))

    def render_stage(self, b: Builder) -> str:
        """The objects `b` made since the last stage, and empty declarations of the
        verdict chains and shared sets they name that the build makes at its end."""
        lines = [f"create table inet {TABLE}"] if self.stages == 1 else []
        lines.append(_HEAD)
        for (_, _, v), name in b.shared.items():
            if name not in self.empty_sets:
                self.empty_sets[name] = NftSet(name, ADDR_TYPE[v], ())
                lines += render_set(self.empty_sets[name])
        for number in b.reuse.numbering.numbers.values():
            name = chain_name(number)
            if name not in self.empty_chains:
                self.empty_chains.add(name)
                lines.append(f"\tchain {name} {{ }}")
        for name, s in b.sets.items():
            if name not in self.sets:
                self.sets[name] = s
                lines += render_set(s)
        for name, c in b.chains.items():
            if name not in self.chains and name not in self.empty_chains:
                self.chains[name] = c
                lines += render_chain(c)
        return "\n".join(lines + ["}"]) + "\n"


def render_final(rs: Ruleset, staged: Stager) -> Optional[str]:
    """The last stage: everything of `rs` the stages did not put in the inet table as it
    is in `rs`, and every other owned table replaced as `render_ruleset` does; ONE
    transaction. Its inet part starts with `table inet <TABLE> {` (a stamp goes there:
    agent.reconciler.stamp.render_stamped). None when a staged object cannot become
    its final form in place (declared otherwise): the caller replaces the table in full."""
    inet = next(t for t in rs.tables if (t.family, t.name) == ("inet", TABLE))
    flush: list[str] = []
    body: list[str] = []
    for s in inet.sets:
        done = staged.sets.get(s.name) or staged.empty_sets.get(s.name)
        if done is s or done == s:
            continue
        if done is not None and replace(done, elements=()) != replace(s, elements=()):
            return None
        if done is not None and done.elements:
            flush.append(f"flush set inet {TABLE} {s.name}")
        body += render_set(s)
    for c in inet.chains:
        done_chain = staged.chains.get(c.name)
        if done_chain is c or done_chain == c:
            continue
        if done_chain is not None or c.name in staged.empty_chains:
            if c.hook is not None:
                return None
            flush += [f"flush chain inet {TABLE} {c.name}"] * (done_chain is not None)
        body += render_chain(c)
    chains, sets = {c.name for c in inet.chains}, {s.name for s in inet.sets}
    lines = flush + [_HEAD] + body + ["}"]
    lines += [f"delete chain inet {TABLE} {n}" for n in list(staged.chains) + sorted(staged.empty_chains)
              if n not in chains]
    lines += [f"delete set inet {TABLE} {n}" for n in list(staged.sets) + list(staged.empty_sets) if n not in sets]
    for family, name in rs.owned:
        if (family, name) != ("inet", TABLE):
            lines += [f"table {family} {name}", f"delete table {family} {name}"]
            lines += [line for t in rs.tables if (t.family, t.name) == (family, name) for line in render_table(t)]
    return "\n".join(lines) + "\n"
