"""`diff`'s summary (pure): per interface, the flows a change newly drops and newly
accepts, as classes of protocol and ports with the peer addresses they concern (IPv4 and
IPv6 together), and the interface filter (`--iface`, by name or host:name)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

from agent.guardrails.diff import InterfaceDiff
from agent.errors import InputError, InvalidInput
from agent.policy.host_views import fleet_interfaces
from agent.model.objects import DROP, INGRESS, DesiredState

NEWLY_DROPPED, NEWLY_ACCEPTED = "newly dropped", "newly accepted"


@dataclass(frozen=True)
class FlowClass:
    direction: str
    traffic: str                       # "tcp 5432", "any protocol but tcp"
    side: str                          # from | to
    addresses: tuple[str, ...]         # "10.0.1.12", "fd00:1::11", "0.0.0.0/0 except ..."

    @property
    def text(self) -> str:
        return f"{self.direction} {self.traffic} {self.side} {', '.join(self.addresses)}"

    def to_json(self) -> dict[str, Any]:
        return {"direction": self.direction, "traffic": self.traffic, "addresses": list(self.addresses)}


@dataclass(frozen=True)
class InterfaceSummary:
    interface: str
    dropped: tuple[FlowClass, ...]
    accepted: tuple[FlowClass, ...]

    def to_json(self) -> dict[str, Any]:
        return {"interface": self.interface, "newly_dropped": [c.to_json() for c in self.dropped],
                "newly_accepted": [c.to_json() for c in self.accepted]}


def summarize(diffs: Iterable[InterfaceDiff]) -> list[InterfaceSummary]:
    """Interfaces with verdict changes, each change class once with all its addresses."""
    out = []
    for d in diffs:
        classes: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
        for dd in d.directions:
            side = "from" if dd.direction == INGRESS else "to"
            for v in dd.verdicts:
                traffic, _, addresses = v.traffic.rpartition(f" {side} ")
                key = (v.new_verdict, dd.direction, traffic, side)
                if addresses not in classes[key]:
                    classes[key].append(addresses)
        if classes:
            made = {k: FlowClass(k[1], k[2], k[3], tuple(a)) for k, a in classes.items()}
            out.append(InterfaceSummary(d.interface,
                                        tuple(c for k, c in made.items() if k[0] == DROP),
                                        tuple(c for k, c in made.items() if k[0] != DROP)))
    return out


def newly_dropped(summary: Iterable[InterfaceSummary]) -> bool:
    return any(s.dropped for s in summary)


def render_summary(summary: list[InterfaceSummary]) -> str:
    if not summary:
        return "summary: no flow changes verdict\n"
    dropping = sum(1 for s in summary if s.dropped)
    accepting = sum(1 for s in summary if s.accepted)
    lines = [f"summary: {len(summary)} interface(s) change verdicts; {dropping} newly drop, "
             f"{accepting} newly accept"]
    for s in summary:
        lines += [f"  {s.interface}: {NEWLY_DROPPED} {c.text}" for c in s.dropped]
        lines += [f"  {s.interface}: {NEWLY_ACCEPTED} {c.text}" for c in s.accepted]
    return "\n".join(lines) + "\n"


def select_interfaces(diffs: list[InterfaceDiff], names: list[str], old: DesiredState,
                      new: DesiredState) -> list[InterfaceDiff]:
    """The diffs of the named interfaces (name on the document's host, or host:name);
    every name that is an interface of neither document is an error."""
    home = new.host
    known = {port.label for state in (old, new) for port, _, _ in fleet_interfaces(state)}
    wanted = {n.removeprefix(f"{home}:") for n in names}
    errors = [InputError("--iface", n, f"not an interface of either document (known: {', '.join(sorted(known))})")
              for n in names if n.removeprefix(f"{home}:") not in known]
    if errors:
        raise InvalidInput(errors)
    return [d for d in diffs if d.interface in wanted]
