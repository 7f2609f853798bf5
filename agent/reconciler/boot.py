"""The fail-closed boot table (pure): what the boot step loads first, before the saved
ruleset, so the instance interfaces are filtered within milliseconds of the step.

The saved ruleset (`ruleset.nft`) is one `nft -f` of the whole state: at 1,000
interfaces x 100 rules the kernel commits it in ~30 s, and until then nothing filters
the taps. `failclosed.nft` is a few hundred bytes: the agent's own tables (the same
names, so the full restore replaces them in its one transaction: `table X` + `delete
table X` + `table X {...}`) holding only one drop rule per `instance_interfaces`
pattern, in both directions and every hook the full ruleset uses (inet forward, input,
output; bridge prerouting, forward, output). Every instance interface is dropped until
the full ruleset is in: fail closed. It carries no stamp, so a start that finds it (the
full restore failed) replaces it in full.
"""
from __future__ import annotations

from agent.compiler.dispatch import BRIDGE_PRIORITY
from agent.compiler.ruleset import TABLE
from agent.compiler.unknown import OUTPUT_PRIORITY, build_unknown_rules

INET_CHAINS = (("forward", "forward", 0, ("iifname", "oifname")),
               ("input", "input", 0, ("iifname",)),
               ("output", "output", OUTPUT_PRIORITY, ("oifname",)))
BRIDGE_CHAINS = (("prerouting", "prerouting", BRIDGE_PRIORITY, ("iifname",)),
                 ("forward", "forward", BRIDGE_PRIORITY, ("iifname", "oifname")),
                 ("output", "output", BRIDGE_PRIORITY, ("oifname",)))


def _table(family: str, chains: tuple, patterns: tuple[str, ...]) -> list[str]:
    lines = [f"table {family} {TABLE}", f"delete table {family} {TABLE}", f"table {family} {TABLE} {{"]
    for name, hook, priority, keys in chains:
        lines.append(f"\tchain boot_{name} {{")
        lines.append(f"\t\ttype filter hook {hook} priority {priority}; policy accept;")
        lines += [f"\t\t{rule}" for key in keys for rule in build_unknown_rules(key, patterns)]
        lines.append("\t}")
    lines.append("}")
    return lines


def render_failclosed(patterns: tuple[str, ...]) -> str:
    """The boot table's `nft -f` script; "" when there are no patterns (nothing to close)."""
    if not patterns:
        return ""
    head = ["# secgroup-agent boot step: every instance interface dropped until the saved",
            "# ruleset is restored (agent/reconciler/boot.py)"]
    return "\n".join(head + _table("inet", INET_CHAINS, patterns) + _table("bridge", BRIDGE_CHAINS, patterns)) + "\n"
