"""Unknown instance interfaces fail closed (part of the pure compiler; docs/fail-closed.md).

The document's `instance_interfaces` (e.g. `tap*`, `vnet*`) names the interfaces that
are instances'. One that matches and that the ruleset in the kernel does not dispatch
(the desired state does not name it, or names it only since a ruleset not yet applied)
has all its traffic dropped and counted by kernel rules, so also while the daemon is
down and for an interface created meanwhile:

* inet, after the dispatch by name (a known routed interface has left by its `goto`):
  forward and input `iifname "<pattern>" counter drop`, forward `oifname ...`; output
  (the host to the instance) `oifname "<pattern>" oifname != @instance_ports`, where
  `instance_ports` holds the routed interfaces the state names;
* bridge (frames of bridge ports: the inet hooks see only the bridge), first in
  prerouting, forward and output: `iifname`/`oifname "<pattern>"` not in `@ports`, the
  bridged interfaces the state names.
"""
from __future__ import annotations

from agent.compiler.ruleset import Chain, NftSet

INET_PORTS = "instance_ports"
BRIDGE_PORTS = "ports"
OUTPUT_PRIORITY = 10


def build_unknown_rules(key: str, patterns: tuple[str, ...], known: str = "", then: str = "counter drop") -> list[str]:
    """One drop rule per pattern (not an anonymous set: see agent.compiler.guard._not_in);
    `known`: the named set of the interfaces exempted; `then`: the drop (in the inet
    table the jump to the unknown-interface verdict chain, which counts)."""
    exempt = f" {key} != @{known}" if known else ""
    return [f'{key} "{p}"{exempt} {then}' for p in patterns]


def ports_set(name: str, names: list[str], quote) -> NftSet:
    return NftSet(name, "ifname", tuple(quote(n) for n in sorted(names)), interval=False)


def inet_output(patterns: tuple[str, ...], routed: list[str], quote,
                then: str = "counter drop") -> tuple[list[NftSet], list[Chain]]:
    """The inet set of routed instance interfaces and the output chain dropping the host's
    packets to unknown ones (nothing when `patterns` is empty)."""
    if not patterns:
        return [], []
    chain = Chain("output_ingress", tuple(build_unknown_rules("oifname", patterns, INET_PORTS, then)),
                  f"type filter hook output priority {OUTPUT_PRIORITY}; policy accept;")
    return [ports_set(INET_PORTS, routed, quote)], [chain]


def bridge_output(patterns: tuple[str, ...], priority: int) -> list[Chain]:
    if not patterns:
        return []
    return [Chain("output", tuple(build_unknown_rules("oifname", patterns, BRIDGE_PORTS)),
                  f"type filter hook output priority {priority}; policy accept;")]
