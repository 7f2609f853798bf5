"""The keeper's drift checks and repair (agent.reconciler.keeper's `Keeper` inherits
them): is the kernel still holding what was applied (`verify`: the ruleset generation,
then a listing compared with the one taken after our apply), and give it back (`repair`:
the chains and sets that differ, else the full replace). Split from the keeper module
for size; they read and write the keeper's fields declared below.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import Optional, Union

from agent.compiler.ruleset import TABLE, Ruleset
from agent.errors import KernelError
from agent.reconciler.drift import Object, build_differing, build_repair, without_dynamic_elements
from agent.reconciler.port import Kernel
from agent.reconciler.stamp import render_stamped, stamp_set

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Drift:
    """Why the kernel differs from what was applied, and which objects differ (None:
    unknown, the full replace)."""
    reason: str
    objects: Optional[frozenset[Object]] = None


def normalize_listing(text: Optional[str]) -> Optional[str]:
    """A listing without what changes by itself (counters, the log limits' dynamic elements)."""
    return None if text is None else re.sub(r"counter packets \d+ bytes \d+", "counter",
                                            without_dynamic_elements(text))


class DriftChecks:
    kernel: Kernel
    applied: Optional[Ruleset]
    state: object
    token: Optional[str]
    our_generation: Optional[int]
    reference: Optional[str]
    verified_generation: Optional[int]
    unaccounted: bool
    repairs: int
    tables: tuple[tuple[str, str], ...]

    def generation(self) -> Optional[int]:
        raise NotImplementedError

    def _render(self, ruleset: Ruleset) -> str:
        raise NotImplementedError

    def repair(self, drift: Union[Drift, str]) -> float:
        """Give the tables back what was applied, in one transaction: only the chains
        and sets that differ when they are known, else the full replace."""
        if self.applied is None or self.state is None or self.token is None:
            return 0.0
        drift = drift if isinstance(drift, Drift) else Drift(drift)
        stamped = _with_stamp(self.applied, self.token)
        script = build_repair(stamped, drift.objects) if drift.objects else None
        if script is not None and self.kernel.tables_present(tuple((t.family, t.name) for t in stamped.tables)):
            names = ", ".join(f"{k} {f} {t} {n}" for f, t, k, n in sorted(drift.objects or ()))
            log.warning("table %s: drift (%s): rewriting %s", TABLE, drift.reason, names or "nothing")
            try:
                took = self.kernel.commit(script, "repair") if script.strip() else 0.0
                return self._repaired(took)
            except KernelError as exc:
                log.warning("table %s: partial repair refused, replacing the tables: %s", TABLE, exc)
        log.warning("table %s: drift (%s): replacing the tables", TABLE, drift.reason)
        took = self.kernel.commit(render_stamped(self._render(self.applied), self.token), "repair")
        return self._repaired(took)

    def _repaired(self, took: float) -> float:
        self.repairs += 1
        self.our_generation, self.reference, self.verified_generation = self.generation(), None, None
        self.unaccounted = False
        return took

    def verify(self, notifications_lost: bool = False, deep: bool = True) -> Optional[Drift]:
        """Why the kernel no longer holds what was applied, or None (`precheck`, then
        the listing if one is needed, judged by `judge_listing`)."""
        problem, listing_needed, gen = self.precheck(notifications_lost, deep)
        if not listing_needed:
            return problem
        return self.judge_listing(self.kernel.listing(self.tables), gen, notifications_lost)

    def precheck(self, notifications_lost: bool, deep: bool) -> tuple[Optional[Drift], bool, Optional[int]]:
        """(problem, whether a listing is needed, ruleset generation). Nothing to do when
        nothing was committed since the last check (the generation is unchanged); a
        shallow check only sees that the tables exist (the monitor reports edits); a
        deep one, or one after lost notifications with foreign commits, needs a listing."""
        if self.applied is None:
            return None, False, None
        gen = self.generation()
        if gen is not None and gen == self.verified_generation:
            return None, False, gen
        if notifications_lost and gen is not None and gen == self.our_generation and not self.unaccounted:
            notifications_lost = False      # nobody committed since us: the lost ones were ours
        if not deep and not notifications_lost:
            present = self.kernel.tables_present(tuple((t.family, t.name) for t in self.applied.tables))
            return (None if present else Drift("the agent's tables are gone")), False, gen
        return None, True, gen

    def judge_listing(self, text: Optional[str], gen: Optional[int], notifications_lost: bool) -> Optional[Drift]:
        """Compare a listing taken at generation `gen` with the one taken after our
        apply (the first listing after an apply becomes that reference); what differs
        is named chain by chain and set by set."""
        if self.applied is None:
            return None
        listing = normalize_listing(text)
        if listing is None and self.applied.tables:
            return Drift("the agent's tables are gone")
        if self.reference is None:
            if (gen is None or gen != self.our_generation or self.unaccounted) and notifications_lost:
                return Drift("changes happened while notifications were lost")
            self.reference = listing
            self.unaccounted = False
        elif listing != self.reference:
            objects = build_differing(listing or "", self.reference)
            return Drift("the tables differ from what was applied", objects or None)
        self.verified_generation = gen
        return None


def _with_stamp(rs: Ruleset, token: str) -> Ruleset:
    """The ruleset as the kernel holds it: with the stamp set in the inet table."""
    tables = tuple(replace(t, sets=t.sets + (stamp_set(token),)) if (t.family, t.name) == ("inet", TABLE) else t
                   for t in rs.tables)
    return replace(rs, tables=tables)
