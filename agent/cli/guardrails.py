"""Guard-rail commands: lint, diff, group clone (docs/guard-rails.md)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from agent.errors import InputError, InvalidInput

log = logging.getLogger(__name__)
EXIT_OK, EXIT_FINDINGS = 0, 1


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be a whole number of at least 1")
    return value


def _ports(text: str) -> tuple[int, ...]:
    from agent.guardrails.lint import parse_ports
    try:
        return parse_ports(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _never_hit(path: Optional[str]) -> Optional[dict[str, float]]:
    """The identities not hit since first counted, from a last-hit record (`counters`)."""
    if not path:
        return None
    from agent.compiler.counters import never_hit
    try:
        return never_hit(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as exc:
        raise InvalidInput([InputError("--hits", path, f"cannot read the last-hit record: {exc}")]) from None


def cmd_lint(args: argparse.Namespace) -> int:
    from agent.guardrails.lint import LintOptions, lint, reaches, render_text
    from agent.model.validate import load_state
    state = load_state(args.config, args.host)
    options = LintOptions(**{k: v for k, v in (("exposed_ports", args.exposed_ports),
                                               ("max_rules", args.max_rules),
                                               ("max_peer_groups", args.max_peer_groups))
                             if v is not None})
    options = replace(options, never_hit=_never_hit(args.hits))
    findings = lint(state, options)
    if args.json:
        print(json.dumps([f.to_json() for f in findings], indent=2))
    else:
        sys.stdout.write(render_text(findings))
    return EXIT_FINDINGS if reaches(findings, args.fail_on) else EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    from agent.guardrails.diff import diff_states, flow_text, live_revocations, render_text
    from agent.guardrails.diff_summary import newly_dropped, render_summary, select_interfaces, summarize
    from agent.model.validate import load_state
    if len(args.config) != 2:
        raise InvalidInput([InputError("-c/--config", str(len(args.config)),
                                       "diff takes exactly two documents: -c OLD -c NEW")])
    old, new = (load_state(path, args.host) for path in args.config)
    diffs = diff_states(old, new)
    if args.iface:
        diffs = select_interfaces(diffs, args.iface, old, new)
    summary = summarize(diffs)
    revocations = live_revocations(old, new) if args.live else None
    status = EXIT_FINDINGS if args.exit_code and newly_dropped(summary) else EXIT_OK
    if args.json:
        out: dict = {"old": args.config[0], "new": args.config[1],
                     "interfaces": [d.to_json() for d in diffs],
                     "summary": [s.to_json() for s in summary], "newly_dropped": newly_dropped(summary)}
        if revocations is not None:
            out["live"] = [{"flow": flow_text(r.flow), "reason": r.reason} for r in revocations]
        print(json.dumps(out, indent=2))
        return status
    sys.stdout.write(render_text(diffs))
    if diffs:
        sys.stdout.write(render_summary(summary))
    if revocations is not None:
        for r in revocations:
            print(f"live: would cut {flow_text(r.flow)}: {r.reason}")
        if not revocations:
            print("live: no established connection would be cut")
    return status


def cmd_group(args: argparse.Namespace) -> int:
    return args.group_func(args)


def cmd_group_clone(args: argparse.Namespace) -> int:
    from agent.guardrails.clone import clone_group
    result = clone_group(args.config, args.source, args.new_id, args.host)
    print(result.summary())
    return EXIT_OK


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("lint", cmd_lint, "report shadowed, duplicate and exposed rules and other hazards")
    p.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    p.add_argument("--fail-on", choices=("info", "warning", "error"), default="error",
                   help="exit 1 when a finding is at least this severe (default: error)")
    p.add_argument("--exposed-ports", type=_ports, metavar="PORTS",
                   help="ports not to open to the world: '22,5432,8000-8100' replaces the "
                        "default list, '+8080,+9000' adds to it")
    p.add_argument("--max-rules", type=_positive, metavar="N",
                   help="warn when an interface's effective list holds more rules (default 200)")
    p.add_argument("--max-peer-groups", type=_positive, metavar="N",
                   help="warn when a group names more groups as peers (default 20)")
    p.add_argument("--hits", metavar="FILE", help="last-hit record of `secgroup-agent counters` "
                   "(/var/lib/secgroup-agent/verdict-hits.json): info findings for rules never hit")
    p = command("diff", cmd_diff, "what a new desired state changes: lines and verdicts per interface",
                config=False)
    p.add_argument("-c", "--config", action="append", required=True, metavar="PATH",
                   help="give it twice: -c OLD -c NEW")
    p.add_argument("--host", help="this host's name (default: the document's host, else the hostname)")
    p.add_argument("--json", action="store_true", help="print the differences as JSON")
    p.add_argument("--iface", action="append", metavar="IFACE",
                   help="only this interface (name, or HOST:IFACE); give it again for more")
    p.add_argument("--exit-code", action="store_true",
                   help="exit 1 when the change newly drops any flow (0 otherwise; 2 on invalid input)")
    p.add_argument("--live", action="store_true",
                   help="also list the established connections (conntrack, needs root) NEW would cut")
    p = command("group", cmd_group, "operate on security groups in the document", config=False)
    sub = p.add_subparsers(dest="group_command", required=True, metavar="ACTION", help="clone")
    c = sub.add_parser("clone", help="copy a group (rules with fresh ids, no members) into the file",
                       description="copy group SRC as NEW into the document file, keeping its comments")
    c.add_argument("source", metavar="SRC", help="the id of the group to copy")
    c.add_argument("new_id", metavar="NEW", help="the id of the copy (must be new)")
    c.add_argument("-c", "--config", required=True, metavar="PATH", help="the document to edit (YAML or JSON)")
    c.add_argument("--host", help="this host's name (for validation)")
    c.set_defaults(group_func=cmd_group_clone)
