"""Datapath commands: render (no root), apply and flush (root)."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from agent.errors import InvalidInput

EXIT_OK = 0


def instance_patterns(text: str) -> tuple[str, ...]:
    from agent.model.schema import parse_interface_patterns
    try:
        return parse_interface_patterns(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_instance_interfaces(p: argparse.ArgumentParser) -> None:
    p.add_argument("--instance-interfaces", type=instance_patterns, metavar="PATTERNS",
                   help="instead of the document's instance_interfaces: interface name patterns "
                        "('tap*,vnet*'; '' for none) whose unknown interfaces are dropped")


def load(args: argparse.Namespace):
    """The desired state of --config, with --instance-interfaces if given."""
    from agent.model.objects import with_instance_interfaces
    from agent.model.validate import load_state
    return with_instance_interfaces(load_state(args.config, args.host), args.instance_interfaces)


def cmd_render(args: argparse.Namespace) -> int:
    from agent.compiler.compile import build_ruleset
    from agent.compiler.render import render_ruleset
    ruleset = build_ruleset(load(args))
    sys.stdout.write(render_ruleset(ruleset))
    for err in ruleset.errors:
        print(f"warning: {err}", file=sys.stderr)
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from agent.model.loader import read_document
    from agent.model.validate_incremental import validate_update
    from agent.reconciler.oneshot import apply_once
    from agent.model.objects import with_instance_interfaces
    validated = validate_update(read_document(args.config), args.host, None)
    state = with_instance_interfaces(validated.state, args.instance_interfaces)
    report = apply_once(state, context=validated)      # the daemon's next start reuses it
    print(report.summary())
    return EXIT_OK if not report.errors else 1


def cmd_flush(args: argparse.Namespace) -> int:
    from agent.reconciler.oneshot import flush
    flush()
    print("removed the agent's tables")
    return EXIT_OK


def add_commands(command: Callable) -> None:
    for p in (command("render", cmd_render, "print the nftables ruleset it would apply (no root needed)"),
              command("apply", cmd_apply, "compile and apply once, atomically")):
        add_instance_interfaces(p)
    command("flush", cmd_flush, "remove everything the agent installed", config=False)


__all__ = ["add_commands", "InvalidInput"]
