"""`secgroup-agent` command line (SPEC §5). Exit: 0 ok, 1 runtime failure, 2 invalid input."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Callable, Optional

from agent.errors import AgentError, InputError, InvalidInput
from agent.model.objects import DIRECTIONS
from agent.model.loader import read_document
from agent.model.validate import load_state, validate_document
from agent.model.validate_warnings import document_warnings, is_strict

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2
log = logging.getLogger("agent.cli.main")
EXIT_CODES = """exit status:
  0  ok (diff --exit-code: nothing newly dropped; lint: no finding at --fail-on)
  1  runtime failure (diff --exit-code: a flow is newly dropped; lint: a finding at --fail-on)
  2  invalid input or usage"""


def cmd_check(args: argparse.Namespace) -> int:
    """Errors and warnings are this command's output: stdout."""
    data = None
    try:
        data = read_document(args.config)
        state = validate_document(data, args.host, args.strict)
    except InvalidInput as exc:
        for err in exc.errors:
            print(err)
        _print_warnings(data, args.strict)
        print(f"{args.config}: {len(exc.errors)} error(s)")
        return EXIT_INVALID
    _print_warnings(data, args.strict)
    nics = len(state.local_interfaces)
    print(f"{args.config}: valid ({len(state.groups)} groups, {len(state.instances)} instances, "
          f"{nics} local interfaces on host {state.host})")
    return EXIT_OK


def _print_warnings(data: object, strict: bool) -> None:
    if data is not None and not is_strict(data, strict):     # strict: they are errors
        for warning in document_warnings(data):
            print(f"warning: {warning}")


def cmd_show(args: argparse.Namespace) -> int:
    from agent.policy.explain import render_show
    if args.counters:
        from agent.cli.observe import kernel_counters, render_show_counters
        sys.stdout.write(render_show_counters(load_state(args.config, args.host), args.iface, kernel_counters()))
        return 0
    sys.stdout.write(render_show(load_state(args.config, args.host), args.iface, args.addresses))
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from agent.policy import explain_flow as flow
    from agent.policy.explain import build_packet, decision_json, explain_at, find_interface, render_decision
    _check_explain_mode(args)
    state = load_state(args.config, args.host)
    if args.matrix:
        protocol = args.protocol or "icmp"
        ids, cells = flow.reachability_matrix(state, protocol, args.dport)
        out = (json.dumps(flow.matrix_json(ids, cells, protocol, args.dport), indent=2) + "\n" if args.json
               else flow.render_matrix(ids, cells, protocol, args.dport))
    elif args.from_ is not None:
        f = flow.explain_flow(state, args.from_, args.to, args.protocol, args.dport, args.sport,
                              args.icmp_type, args.ip_version)
        out = json.dumps(flow.flow_json(f), indent=2) + "\n" if args.json else flow.render_flow(f)
    else:
        nic = find_interface(state, args.iface)[1]
        packet = build_packet(nic, args.direction, args.protocol, args.src, args.dst, args.sport,
                              args.dport, args.icmp_type)
        j = explain_at(state, args.iface, args.direction, packet)
        out = json.dumps(decision_json(j, packet), indent=2) + "\n" if args.json else render_decision(j, packet)
    sys.stdout.write(out)
    return EXIT_OK


def _check_explain_mode(args: argparse.Namespace) -> None:
    """One of three forms: --iface/--direction, --from/--to, --matrix; every error at once."""
    given = {"--iface": args.iface, "--direction": args.direction, "--from": args.from_, "--to": args.to,
             "--src": args.src, "--dst": args.dst}
    modes = [m for m, on in (("--iface", args.iface or args.direction), ("--from/--to", args.from_ or args.to),
                             ("--matrix", args.matrix)) if on]
    errors = []
    if len(modes) != 1:
        errors.append(InputError("explain", " ".join(modes) or "(none)",
                                 "give exactly one of --iface/--direction, --from/--to or --matrix"))
    elif modes == ["--iface"]:
        errors += [InputError(k, "(missing)", "is required with --iface") for k in ("--iface", "--direction")
                   if given[k] is None]
    elif modes == ["--from/--to"]:
        errors += [InputError(k, "(missing)", "is required with --from/--to") for k in ("--from", "--to")
                   if given[k] is None]
        errors += [InputError(k, given[k], "the ends' own addresses are used with --from/--to")
                   for k in ("--src", "--dst") if given[k] is not None]
    if modes and modes != ["--matrix"] and args.protocol is None:
        errors.append(InputError("--protocol", "(missing)", "is required"))
    if errors:
        raise InvalidInput(errors)


def _number(text: str, hi: int, what: str, lo: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"{text}: not {what} ({lo}-{hi})")
    return value


def _port(text: str) -> int:
    """1-65535, as in rules' port ranges."""
    return _number(text, 65535, "a port", lo=1)


def _icmp_type(text: str) -> int:
    return _number(text, 255, "an ICMP type")


def installed_version() -> str:
    """The installed distribution's version (pyproject.toml; the Debian package installs it)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("secgroup-agent")
    except PackageNotFoundError:        # a source tree on sys.path, not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secgroup-agent", epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Security groups for hypervisor hosts, enforced with nftables.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do (COMMAND --help for its options)")

    def command(name: str, func: Callable, help_text: str, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EXIT_CODES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if config:
            p.add_argument("-c", "--config", required=True, metavar="PATH", help="desired state (YAML or JSON)")
            p.add_argument("--host", help="this host's name (default: the document's host, else the hostname)")
        p.set_defaults(func=func)
        return p

    p = command("check", cmd_check, "validate the desired state; print every error and warning with its path")
    p.add_argument("--strict", action="store_true",
                   help="warnings (unknown fields, interfaces without addresses) are errors")
    p = command("show", cmd_show, "the effective ordered rule list of an interface, both directions")
    p.add_argument("iface", metavar="IFACE", help="a local interface, or HOST:IFACE for any interface of the document")
    p.add_argument("--addresses", action="store_true",
                   help="list the member addresses of group and prefix-list peers instead of counting them")
    p.add_argument("--counters", action="store_true", help="each line's kernel counter beside it (local interface)")
    p = command("explain", cmd_explain, "the verdict for a new connection and what decides it: at one "
                "interface (--iface), between two endpoints (--from/--to) or for every pair (--matrix)")
    p.add_argument("--iface", metavar="IFACE", help="judge at this interface (local, or HOST:IFACE)")
    p.add_argument("--direction", choices=DIRECTIONS, help="with --iface: which list judges")
    p.add_argument("--from", dest="from_", metavar="ENDPOINT",
                   help="the sender: instance id, HOST:IFACE, interface name or address (local, remote or outside)")
    p.add_argument("--to", metavar="ENDPOINT", help="the receiver, as --from")
    p.add_argument("--matrix", action="store_true",
                   help="instances x instances: which reach which with --protocol (default icmp) and --dport")
    p.add_argument("--protocol", help="tcp, udp, icmp, icmpv6, gre or a number (icmp means ICMPv6 between IPv6 ends)")
    p.add_argument("--src", metavar="ADDR", help="with --iface: source address (egress: defaults to the interface's)")
    p.add_argument("--dst", metavar="ADDR", help="with --iface: destination address (ingress: defaults to the interface's)")
    p.add_argument("--sport", type=_port, metavar="N", help="source port 1-65535 (default 40000)")
    p.add_argument("--dport", type=_port, metavar="N", help="destination port 1-65535 (required for tcp and udp)")
    p.add_argument("--icmp-type", type=_icmp_type, metavar="T", help="ICMP/ICMPv6 type 0-255 (--from/--to: echo request)")
    p.add_argument("--ip-version", type=int, choices=(4, 6),
                   help="with --from/--to: the IP version when both ends have both (default 4)")
    p.add_argument("--json", action="store_true", help='print JSON: {"verdict": ..., ...}')
    _add_kernel_commands(command)
    __import__("agent.cli.daemon", fromlist=["add_commands"]).add_commands(command)
    __import__("agent.cli.distribution", fromlist=["add_commands"]).add_commands(command)
    __import__("agent.cli.records", fromlist=["add_commands"]).add_commands(command)
    from agent.cli import guardrails as cli_tools
    cli_tools.add_commands(command)
    __import__("agent.cli.observe", fromlist=["add_commands"]).add_commands(command)
    return parser


def _add_kernel_commands(command: Callable) -> None:
    """Commands of the datapath layers (render, apply, flush)."""
    from agent.cli import kernel as cli_kernel
    cli_kernel.add_commands(command)


QUICK_EXIT = frozenset({"apply", "render"})      # one-shot commands that build the whole state


def entry() -> None:
    """The `secgroup-agent` program: `main`, then the exit. After `apply` and `render` the
    process ends without the interpreter's teardown, which frees the state, the ruleset
    and the compiler's memo object by object (0.3-0.45 s at 1,000 interfaces x 100
    rules, measured with bench/apply.py's phases); nothing of theirs is left to do then
    (no atexit hooks in the agent, every file is closed and output flushed here)."""
    argv = sys.argv[1:]
    code = main(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in QUICK_EXIT:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except InvalidInput as exc:
        for err in exc.errors:
            print(f"error: {err}", file=sys.stderr)
        print(f"{len(exc.errors)} error(s); nothing was changed", file=sys.stderr)
        return EXIT_INVALID
    except AgentError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    entry()
