"""Fleet-wide views of a desired state, for the guard-rail tools (lint, diff).

The agent itself only builds effective lists for its *local* interfaces. `lint` and
`diff` are fleet tools: they judge every instance of the document as if it were local,
host by host. Each view is the same state with `host` set to one of the fleet's hosts
(an instance without `host` belongs to the document's host), so interface names need
only be unique per host, exactly as validation requires.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Iterator

from agent.model.objects import DIRECTIONS, DesiredState, Interface
from agent.policy.effective import EffectiveList, build_effective_list

log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class Port:
    """One interface of the fleet. `label` is its bare name on the document's host,
    `host:name` elsewhere."""
    host: str
    name: str
    label: str


def fleet_views(state: DesiredState) -> list[tuple[str, DesiredState]]:
    """(host, view) for every host of the fleet, the document's own host first."""
    home = state.host
    instances = tuple(replace(i, host=i.host or home) for i in state.instances)
    hosts = sorted({i.host for i in instances}, key=lambda h: (h != home, h))
    return [(h, replace(state, host=h, instances=instances)) for h in hosts]


def port_of(host: str, name: str, home: str) -> Port:
    return Port(host, name, name if host == home else f"{host}:{name}")


def fleet_interfaces(state: DesiredState) -> Iterator[tuple[Port, DesiredState, Interface]]:
    """Every interface of every instance in the document, with the view it is local in."""
    for host, view in fleet_views(state):
        for name in sorted(view.local_interfaces):
            yield port_of(host, name, state.host), view, view.local_interfaces[name]


def fleet_lists(state: DesiredState) -> Iterator[tuple[Port, DesiredState, EffectiveList]]:
    """Every effective list of the fleet: each interface, ingress then egress."""
    for port, view, nic in fleet_interfaces(state):
        for direction in DIRECTIONS:
            yield port, view, build_effective_list(view, nic.name, direction)
