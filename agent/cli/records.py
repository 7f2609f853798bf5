"""Record commands: `logs` (packet log lines and flow records, live from the kernel or
from the daemon's --log-file) and `trace` (one interface's packets through the agent's
chains, for a bounded time). docs/observability-records.md."""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Any, Callable, Iterator, Optional, TextIO

from agent.compiler.attribution import NFLOG_GROUP

EXIT_OK, EXIT_FAILURE = 0, 1


def _state(args: argparse.Namespace):
    if not getattr(args, "config", None):
        return None
    from agent.model.validate import load_state
    return load_state(args.config, args.host)


def _host(args: argparse.Namespace, state) -> str:
    return args.host or (state.host if state is not None else socket.gethostname())


def format_record(r: dict[str, Any]) -> str:
    """One record as a line of text."""
    if r.get("type") == "packet":
        ports = (f":{r['sport']} -> {r['dst']}:{r['dport']}" if r.get("sport") is not None
                 else f" -> {r['dst']} type {r.get('icmp_type')}" if r.get("icmp_type") is not None
                 else f" -> {r.get('dst')}")
        who = "/".join(str(r[k]) for k in ("group", "rule") if r.get(k)) or "-"
        return (f"{r['time']} {r.get('verdict') or '?'}{' (audit)' if r.get('audit') else ''} "
                f"{r.get('direction') or '-'} {r.get('interface') or '?'} ({r.get('instance') or '-'}) "
                f"{r.get('stage') or '?'} {who}: {r.get('protocol')} {r.get('src')}{ports}")
    if r.get("type") == "flow":
        def end(e: dict) -> str:
            rule = e.get("rule") or {}
            name = "/".join(str(rule[k]) for k in ("group", "rule") if rule.get(k)) or rule.get("stage") or "-"
            return f"{e['address']} [{e.get('interface') or '-'} {e.get('instance') or '-'} by {name}]"
        counts = " ".join(f"{k} {c['packets']}p/{c['bytes']}B" for k in ("orig", "reply") if (c := r.get(k)))
        cut = f" revoked by revision {r['revoked']['revision']}" if r.get("revoked") else ""
        return (f"{r['time']} flow {r['event']} {r['protocol']} {end(r['source'])}:{r.get('sport') or ''} -> "
                f"{end(r['destination'])}:{r.get('dport') or ''} {counts}{cut}")
    return json.dumps(r, separators=(",", ":"))


def _printer(as_json: bool, out: TextIO = sys.stdout) -> Callable[[dict], None]:
    def echo(record: dict) -> None:
        out.write((json.dumps(record, separators=(",", ":")) if as_json else format_record(record)) + "\n")
        out.flush()
    return echo


def follow_file(path: str, follow: bool, poll: float = 0.2) -> Iterator[dict]:
    """The JSON records of `path`; with `follow`, also those appended later (a rotation
    - the file replaced or truncated - is followed to the new file)."""
    f = open(path, encoding="utf-8")
    try:
        while True:
            start = f.tell()
            line = f.readline()
            if line.endswith("\n"):
                if line.strip().startswith("{"):
                    yield json.loads(line)
                continue
            if line and follow:             # half written: read it again when complete
                f.seek(start)
            elif line.strip().startswith("{"):
                yield json.loads(line)
            if not follow:
                return
            time.sleep(poll)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if st.st_ino != os.fstat(f.fileno()).st_ino or st.st_size < f.tell():
                f.close()
                f = open(path, encoding="utf-8")
    finally:
        f.close()


def cmd_logs(args: argparse.Namespace) -> int:
    echo = _printer(args.json)
    if args.file:
        for record in follow_file(args.file, args.follow):
            echo(record)
        return EXIT_OK
    from agent.service.recorder import Recorder, RecordOptions
    state = _state(args)
    options = RecordOptions(host=_host(args, state), group=args.group, packets=not args.no_packets,
                            flows=args.flows, log_file=args.log_file, max_bytes=args.max_bytes,
                            syslog=args.syslog, report_every=args.report_every,
                            flow_update_every=args.flow_update_every)
    recorder = Recorder(options, state=lambda: state, echo=echo).start()
    print(f"reading NFLOG group {args.group}{' and conntrack events' if args.flows else ''}",
          file=sys.stderr, flush=True)
    deadline = time.monotonic() + args.seconds if args.seconds else None
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic())))
    except KeyboardInterrupt:
        pass
    finally:
        recorder.close()
    print(json.dumps({"type": "summary", **recorder.stats.snapshot()}, separators=(",", ":")), file=sys.stderr)
    return EXIT_OK


def cmd_trace(args: argparse.Namespace) -> int:
    from agent.kernel import verdicts
    from agent.kernel.trace import TraceSession, arm_script
    from agent.service.observe import Resolver
    from agent.service.traceview import TraceView, policy_names
    state = _state(args)
    nic = state.local_interfaces.get(args.iface) if state is not None else None
    addresses = [str(a) for a in nic.addresses] if nic is not None else []
    view = TraceView(Resolver(verdicts.read_verdict_chains, lambda: state), policy_names(state))
    script = arm_script(args.iface, " ".join(args.match), addresses)
    deadline = time.monotonic() + args.seconds
    try:
        with TraceSession(script) as session:
            print(f"tracing {args.iface} {' '.join(args.match)} for {args.seconds:g} s", file=sys.stderr, flush=True)
            for line in session.lines(deadline, args.max_lines):
                text = view.line(line) if not args.raw else line
                if text:
                    print(text, flush=True)
    except KeyboardInterrupt:
        pass
    for tid, where in view.decisions().items():
        print(f"[{tid}] decided by {where}")
    return EXIT_OK


def add_commands(command: Callable) -> None:
    p = command("logs", cmd_logs, "packet log lines (NFLOG) and flow records: live from the kernel, or "
                                  "from the daemon's --log-file (--file)", config=False)
    p.add_argument("-c", "--config", metavar="PATH", help="desired state: names instances and interfaces")
    p.add_argument("--host", help="this host's name (default: the document's, else the hostname)")
    p.add_argument("--file", metavar="PATH", help="read the records of this file (the daemon's --log-file)")
    p.add_argument("--follow", action="store_true", help="with --file: keep printing what is appended")
    p.add_argument("--json", action="store_true", help="print the JSON records, one a line")
    p.add_argument("--seconds", type=float, metavar="S", help="live: stop after S seconds (default: Ctrl-C)")
    add_record_options(p)
    p = command("trace", cmd_trace, "trace an interface's packets through the agent's chains, for a "
                                    "bounded time, named by stage, group and rule", config=False)
    p.add_argument("--iface", required=True, metavar="NAME", help="the interface whose packets are traced")
    p.add_argument("match", nargs="*", help="an nft match on those packets, e.g. tcp dport 22")
    p.add_argument("-c", "--config", metavar="PATH",
                   help="desired state: the interface's addresses (trace its ingress too) and policy names")
    p.add_argument("--host", help="this host's name (default: the document's, else the hostname)")
    p.add_argument("--seconds", type=float, default=10.0, metavar="S", help="how long (default 10)")
    p.add_argument("--max-lines", type=int, default=10000, metavar="N", help="stop after N trace lines")
    p.add_argument("--raw", action="store_true", help="print nft's trace lines untranslated")


def add_record_options(p: argparse.ArgumentParser) -> None:
    """The options of the record writers, shared by `logs` and `run --records`."""
    p.add_argument("--group", type=int, default=NFLOG_GROUP, metavar="N",
                   help=f"NFLOG group of the log statements (default {NFLOG_GROUP})")
    p.add_argument("--flows", action="store_true", help="also flow records (conntrack events)")
    p.add_argument("--no-packets", action="store_true", help="no packet log lines (flows only)")
    p.add_argument("--log-file", metavar="PATH", help="also write the JSON records to this file (rotated)")
    p.add_argument("--max-bytes", type=int, default=64 << 20, metavar="N",
                   help="rotate the file at N bytes, 4 old files kept (default 64 MiB)")
    p.add_argument("--syslog", action="store_true", help="also write the records to the journal "
                                                         "(syslog identifier secgroup-agent-log)")
    p.add_argument("--report-every", type=float, default=60.0, metavar="S",
                   help="a loss record every S seconds when records were lost (default 60)")
    p.add_argument("--flow-update-every", type=float, default=300.0, metavar="S",
                   help="a flow record for connections open longer than S seconds, every S seconds (default 300)")


def record_options(args: argparse.Namespace, host: str) -> Optional[Any]:
    """`run --records`: the recorder's options (None: not asked; --flows or --log-file
    alone also ask)."""
    if not (getattr(args, "records", False) or args.flows or args.log_file):
        return None
    from agent.service.recorder import RecordOptions
    return RecordOptions(host=host, group=args.group, packets=not args.no_packets, flows=args.flows,
                         log_file=args.log_file, max_bytes=args.max_bytes, syslog=args.syslog or not args.log_file,
                         report_every=args.report_every, flow_update_every=args.flow_update_every)
