"""Observation commands: `counters` (what the kernel decided, per verdict identity) and
the counters beside `show`'s lines (docs/observability.md)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from agent.compiler.counters import HitRecord, VerdictCounter
from agent.compiler.verdicts import verdict_of
from agent.errors import AgentError
from agent.model.objects import DIRECTIONS, DesiredState
from agent.reconciler.hits import HITS_FILE, default_hits_path, kernel_counters, record_hits

log = logging.getLogger(__name__)
__all__ = ["add_commands", "kernel_counters", "render_show_counters"]


def hits_path(arg: Optional[str]) -> Optional[Path]:
    if arg == "-":
        return None
    return Path(arg) if arg else default_hits_path()


def interface_keys(state: DesiredState, iface: str) -> set[str]:
    """The identity keys that can decide on a local interface (both directions)."""
    from agent.policy.effective import build_effective_list
    keys = set()
    for direction in DIRECTIONS:
        for e in build_effective_list(state, iface, direction, resolve_peers=False).entries:
            vid = verdict_of(e, direction)
            if vid is not None:
                keys.add(vid.key())
    return keys


def render_counters(counters: list[VerdictCounter], record: HitRecord) -> str:
    head = f"{'#':>5}  {'dir':<7} {'stage':<18} {'group/rule':<32} {'verdict':<8} {'packets':>10} " \
           f"{'bytes':>12} {'logged':>8} {'suppr':>8}  last hit"
    lines = [head]
    for c in counters:
        v = c.vid
        who = f"{v.group}/{v.rule}" if v.rule and v.group else (v.group or v.rule or "-")
        verdict = "audit" if v.audit else v.verdict
        last = (record.get(c.key) or {}).get("last_hit")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(last)) if last else "-"
        lines.append(f"{c.number:>5}  {v.direction or '-':<7} {v.stage:<18} {who:<32} {verdict:<8} {c.packets:>10} "
                     f"{c.bytes:>12} {_opt(c.logged):>8} {_opt(c.suppressed):>8}  {when}")
    return "\n".join(lines) + "\n"


def _opt(n: Optional[int]) -> str:
    return "-" if n is None else str(n)


def cmd_counters(args: argparse.Namespace) -> int:
    counters = kernel_counters()
    record = record_hits(hits_path(args.hits), counters, time.time())
    if args.iface:
        if not args.config:
            raise AgentError("--iface needs -c/--config (which identities decide on an interface)")
        from agent.model.validate import load_state
        keys = interface_keys(load_state(args.config, args.host), args.iface)
        counters = [c for c in counters if c.key in keys]
    if args.json:
        print(json.dumps([c.to_json() | {"last_hit": (record.get(c.key) or {}).get("last_hit")}
                          for c in counters], indent=2))
    else:
        sys.stdout.write(render_counters(counters, record))
    return 0


def render_show_counters(state: DesiredState, iface: str, counters: list[VerdictCounter]) -> str:
    """`show`'s lists with each line's kernel counter beside it (packets decided)."""
    from agent.policy.effective import build_effective_list
    from agent.policy.explain import render_list
    by_key = {c.key: c for c in counters}
    out = []
    for direction in DIRECTIONS:
        elist = build_effective_list(state, iface, direction)
        lines = render_list(elist)
        out += [f"{direction} - first match decides (packets: as counted by the kernel):", lines[0] + "  packets"]
        for e, line in zip(elist.entries, lines[1:]):
            vid = verdict_of(e, direction)
            c = by_key.get(vid.key()) if vid is not None else None
            out.append(f"{line}  [{c.packets if c else '-'}]")
        out.append("")
    return "\n".join(out)


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("counters", cmd_counters, "what the kernel decided: packets and bytes per rule and stage "
                "(new connections for accepts), logged and suppressed log lines", config=False)
    p.add_argument("-c", "--config", metavar="PATH", help="desired state, to select an interface's rules (--iface)")
    p.add_argument("--host", help="this host's name (default: the document's host, else the hostname)")
    p.add_argument("--iface", metavar="IFACE", help="only the identities that decide on this local interface")
    p.add_argument("--json", action="store_true", help="print JSON: one object per identity")
    p.add_argument("--hits", metavar="FILE",
                   help=f"last-hit record to update (default: the state directory's {HITS_FILE}; '-': none)")
