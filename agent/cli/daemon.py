"""Daemon commands: `run` (apply, then follow changes), `status` (ask a running one) and
`wait` (until an interface's rules are enforced)."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from typing import Callable

from agent.cli.kernel import add_instance_interfaces
from agent.service.status import DEFAULT_SOCKET

log = logging.getLogger(__name__)


def source_options(args: argparse.Namespace) -> dict[str, str]:
    """TLS and token options of `run` for an https:// or etcd:// source."""
    return {k: getattr(args, k) for k in ("ca_file", "cert_file", "key_file", "token_file")
            if getattr(args, k, None)}


def build_daemon(args: argparse.Namespace):
    """The production daemon: real source, kernel, monitors, systemd and metrics."""
    from agent.kernel import links, monitor as nftmon
    from agent.service import sdnotify
    from agent.service.daemon import Daemon, DaemonConfig, Ports
    from agent.service.saver import ForkedSaver
    from agent.reconciler.keeper import Keeper
    from agent.reconciler.port import OWNED_TABLES, RealKernel
    from agent.reconciler.revoke import RevocationWorker
    from agent.reconciler.store import StateStore, state_dir
    from agent.sources import open_source
    source = open_source(args.source or args.config, **source_options(args))
    ports = Ports(present_links=links.present_links, notify=sdnotify.notify,
                  background=lambda work: threading.Thread(target=work, name="verify", daemon=True).start(),
                  saver=ForkedSaver())
    if not args.no_link_monitor:
        ports.link_monitor = lambda cb: _started(links.LinkMonitor(cb))
    if not args.no_drift_monitor:
        ports.table_watch = lambda drift, lost: _started(nftmon.TableWatch(set(OWNED_TABLES), drift, lost))
    config = DaemonConfig(host=args.host, verify_interval=args.verify_interval,
                          instance_interfaces=args.instance_interfaces,
                          watchdog_interval=sdnotify.watchdog_interval())
    kernel = RealKernel()
    keeper = Keeper(kernel, store=StateStore(state_dir()))
    keeper.revoke_later = RevocationWorker(kernel, keeper.count_revoked).submit
    return Daemon(source, keeper, config, ports)


def _started(thing):
    thing.start()
    return thing


def cmd_run(args: argparse.Namespace) -> int:
    from agent.service.status import StatusServer
    daemon = build_daemon(args)
    server = StatusServer(args.socket, daemon.snapshot).start()
    daemon._closers.append(server)
    daemon.ports.published = server.notify
    if args.metrics_port:
        from agent.service.metrics import Metrics
        metrics = Metrics(daemon.snapshot)
        metrics.serve(args.metrics_port, args.metrics_addr)
        daemon.ports.observe_apply = metrics.observe
    _start_records(args, daemon, metrics.registry if args.metrics_port else None)
    signal.signal(signal.SIGTERM, lambda *_: daemon.request("stop"))
    signal.signal(signal.SIGINT, lambda *_: daemon.request("stop"))
    signal.signal(signal.SIGHUP, lambda *_: daemon.request("reload"))
    log.info("watching %s; status on %s", daemon.source.name, args.socket)
    return daemon.run()


def _start_records(args: argparse.Namespace, daemon, registry) -> None:
    """`run --records`: the record writers as threads of the daemon (the one hook)."""
    import socket
    from agent.cli.records import record_options
    options = record_options(args, args.host or socket.gethostname())
    if options is None:
        return
    from agent.service.recorder import Recorder
    recorder = Recorder(options, state=lambda: daemon.keeper.state).start()
    daemon._closers.append(recorder)
    if registry is not None:
        registry.register(recorder.collector())


def cmd_status(args: argparse.Namespace) -> int:
    from agent.service.status import format_status, query
    doc = query(args.socket)
    if args.json:
        print(json.dumps(doc.to_dict(), indent=2, default=str))
    else:
        sys.stdout.write(format_status(doc))
    return 0 if not doc.errors else 1


def cmd_wait(args: argparse.Namespace) -> int:
    """Exit 0 once the daemon reports IFACE programmed (at --revision R, if given);
    1 when --timeout runs out (the last answer is printed) or no daemon answers in time."""
    from agent.errors import AgentError
    from agent.service.status import query
    deadline = time.monotonic() + args.timeout
    why = "no answer yet"
    while True:
        try:
            left = max(0.0, deadline - time.monotonic())
            doc = query(args.socket, timeout=left + 2.0,           # the daemon answers when it is enforced
                        request=f"wait {args.iface} {args.revision or '-'} {left:.3f}")
            got = doc.interfaces.programmed.get(args.iface)
            if got is not None and (args.revision is None or got == args.revision):
                print(f"{args.iface}: enforced (revision {got})")
                return 0
            why = f"programmed at revision {got}" if got else f"not programmed (daemon at revision {doc.revision})"
        except AgentError as exc:
            why = str(exc)
        if time.monotonic() >= deadline:
            print(f"{args.iface}: not enforced after {args.timeout:g} s: {why}", file=sys.stderr)
            return 1
        time.sleep(args.interval)


def add_commands(command: Callable) -> None:
    p = command("run", cmd_run, "the daemon: apply the desired state, then follow changes until stopped",
                config=False)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-c", "--config", metavar="PATH", help="desired state file (watched)")
    src.add_argument("--source", metavar="SPEC", help="a source: file path, http(s)://..., etcd://...")
    p.add_argument("--host", help="this host's name (default: the document's host, else the hostname)")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help=f"status socket (default {DEFAULT_SOCKET})")
    for flag, what in (("--ca-file", "CA bundle to verify an https/etcd source"),
                       ("--cert-file", "client certificate for the source (mutual TLS)"),
                       ("--key-file", "the client certificate's key"),
                       ("--token-file", "file holding a bearer token for an https source")):
        p.add_argument(flag, metavar="PATH", help=what)
    p.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on this port")
    p.add_argument("--metrics-addr", default="127.0.0.1", metavar="ADDR",
                   help="address of the metrics endpoint (default 127.0.0.1)")
    p.add_argument("--verify-interval", type=float, default=30.0, metavar="SECONDS",
                   help="how often to check the tables against what was applied (default 30)")
    add_instance_interfaces(p)
    p.add_argument("--records", action="store_true", help="write packet log lines (and --flows records) "
                                                          "to the journal and/or --log-file")
    __import__("agent.cli.records", fromlist=["add_record_options"]).add_record_options(p)
    p.add_argument("--no-drift-monitor", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-link-monitor", action="store_true", help=argparse.SUPPRESS)
    p = command("status", cmd_status, "a running daemon's state: source, revision, last apply, errors, "
                                      "interfaces", config=False)
    p.add_argument("--socket", default=DEFAULT_SOCKET, help=f"status socket (default {DEFAULT_SOCKET})")
    p.add_argument("--json", action="store_true", help="print the status document as JSON")
    p = command("wait", cmd_wait, "wait until an interface's rules are enforced (for VM start hooks)",
                config=False)
    p.add_argument("--iface", required=True, metavar="NAME", help="a local interface of the desired state")
    p.add_argument("--revision", metavar="R", help="wait for this revision of the desired state (status shows it)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="give up after (default 30)")
    p.add_argument("--interval", type=float, default=0.01, help=argparse.SUPPRESS)
    p.add_argument("--socket", default=DEFAULT_SOCKET, help=f"status socket (default {DEFAULT_SOCKET})")
