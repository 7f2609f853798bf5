"""Datapath commands: render (no root), apply and flush (root)."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from agent.errors import InvalidInput

EXIT_OK = 0


def cmd_render(args: argparse.Namespace) -> int:
    from agent.compiler.compile import build_ruleset
    from agent.compiler.render import render_ruleset
    from agent.model.validate import load_state
    ruleset = build_ruleset(load_state(args.config, args.host))
    sys.stdout.write(render_ruleset(ruleset))
    for err in ruleset.errors:
        print(f"warning: {err}", file=sys.stderr)
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from agent.model.loader import read_document
    from agent.model.validate_incremental import validate_update
    from agent.reconciler.oneshot import apply_once
    validated = validate_update(read_document(args.config), args.host, None)
    report = apply_once(validated.state, context=validated)      # the daemon's next start reuses it
    print(report.summary())
    return EXIT_OK if not report.errors else 1


def cmd_flush(args: argparse.Namespace) -> int:
    from agent.reconciler.oneshot import flush
    flush()
    print("removed the agent's tables")
    return EXIT_OK


def add_commands(command: Callable) -> None:
    command("render", cmd_render, "print the nftables ruleset it would apply (no root needed)")
    command("apply", cmd_apply, "compile and apply once, atomically")
    command("flush", cmd_flush, "remove everything the agent installed", config=False)


__all__ = ["add_commands", "InvalidInput"]
