"""`secgroup-agent` command line (SPEC §5). Exit: 0 ok, 1 runtime failure, 2 invalid input."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Optional

from agent.errors import AgentError, InvalidInput
from agent.model import DIRECTIONS
from agent.validate import load_state

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2
log = logging.getLogger("agent.cli")


def cmd_check(args: argparse.Namespace) -> int:
    try:
        state = load_state(args.config, args.host)
    except InvalidInput as exc:    # the errors are this command's output: stdout
        for err in exc.errors:
            print(err)
        print(f"{args.config}: {len(exc.errors)} error(s)")
        return EXIT_INVALID
    nics = len(state.local_interfaces)
    print(f"{args.config}: valid ({len(state.groups)} groups, {len(state.instances)} instances, "
          f"{nics} local interfaces on host {state.host})")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from agent.explain import render_show
    sys.stdout.write(render_show(load_state(args.config, args.host), args.iface))
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from agent.explain import build_packet, decision_json, explain, local_interface, render_decision
    state = load_state(args.config, args.host)
    nic = local_interface(state, args.iface)
    packet = build_packet(nic, args.direction, args.protocol, args.src, args.dst, args.sport,
                          args.dport, args.icmp_type)
    decision, elist = explain(state, args.iface, args.direction, packet)
    if args.json:
        print(json.dumps(decision_json(decision, elist, packet), indent=2))
    else:
        sys.stdout.write(render_decision(decision, elist, packet))
    return EXIT_OK


def _number(text: str, hi: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= hi:
        raise argparse.ArgumentTypeError(f"{text}: not {what} (0-{hi})")
    return value


def _port(text: str) -> int:
    return _number(text, 65535, "a port")


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
    parser = argparse.ArgumentParser(prog="secgroup-agent",
                                     description="Security groups for hypervisor hosts, enforced with nftables.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable, help_text: str, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            p.add_argument("-c", "--config", required=True, metavar="PATH", help="desired state (YAML or JSON)")
            p.add_argument("--host", help="this host's name (default: the document's host, else the hostname)")
        p.set_defaults(func=func)
        return p

    command("check", cmd_check, "validate the desired state; print every error with its path")
    p = command("show", cmd_show, "the effective ordered rule list of an interface, both directions")
    p.add_argument("iface", metavar="IFACE")
    p = command("explain", cmd_explain, "the verdict for a new connection and what decides it")
    p.add_argument("--iface", required=True)
    p.add_argument("--direction", required=True, choices=DIRECTIONS)
    p.add_argument("--protocol", required=True, help="tcp, udp, icmp, icmpv6, gre or a number")
    p.add_argument("--src", help="source address (egress: defaults to the interface's)")
    p.add_argument("--dst", help="destination address (ingress: defaults to the interface's)")
    p.add_argument("--sport", type=_port, help="source port (default 40000)")
    p.add_argument("--dport", type=_port, help="destination port (tcp/udp)")
    p.add_argument("--icmp-type", type=_icmp_type, help="ICMP/ICMPv6 type")
    p.add_argument("--json", action="store_true", help='print {"verdict": ..., ...}')
    _add_kernel_commands(command)
    __import__("agent.cli_daemon", fromlist=["add_commands"]).add_commands(command)
    __import__("agent.cli_fleet", fromlist=["add_commands"]).add_commands(command)
    from agent import cli_tools
    cli_tools.add_commands(command)
    return parser


def _add_kernel_commands(command: Callable) -> None:
    """Commands of the datapath layers (render, apply, flush)."""
    from agent import cli_kernel
    cli_kernel.add_commands(command)


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
    sys.exit(main())
