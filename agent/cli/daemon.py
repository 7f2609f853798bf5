"""Daemon commands: `run` (apply, then follow changes) and `status` (ask a running one)."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
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
    from agent.compiler.compile import TABLE
    from agent.service.daemon import Daemon, DaemonConfig, Ports
    from agent.reconciler.keeper import Keeper, RealKernel
    from agent.sources import open_source
    source = open_source(args.source or args.config, **source_options(args))
    ports = Ports(present_links=links.present_links, notify=sdnotify.notify,
                  background=lambda work: threading.Thread(target=work, name="verify", daemon=True).start())
    if not args.no_link_monitor:
        ports.link_monitor = lambda cb: _started(links.LinkMonitor(cb))
    if not args.no_drift_monitor:
        tables = {("inet", TABLE), ("bridge", TABLE)}
        ports.table_watch = lambda drift, lost: _started(nftmon.TableWatch(tables, drift, lost))
    config = DaemonConfig(host=args.host, verify_interval=args.verify_interval,
                          instance_interfaces=args.instance_interfaces,
                          watchdog_interval=sdnotify.watchdog_interval())
    return Daemon(source, Keeper(RealKernel()), config, ports)


def _started(thing):
    thing.start()
    return thing


def cmd_run(args: argparse.Namespace) -> int:
    from agent.service.status import StatusServer
    daemon = build_daemon(args)
    server = StatusServer(args.socket, daemon.snapshot).start()
    daemon._closers.append(server)
    if args.metrics_port:
        from agent.service.metrics import Metrics
        metrics = Metrics(daemon.snapshot)
        metrics.serve(args.metrics_port, args.metrics_addr)
        daemon.ports.observe_apply = metrics.observe
    signal.signal(signal.SIGTERM, lambda *_: daemon.request("stop"))
    signal.signal(signal.SIGINT, lambda *_: daemon.request("stop"))
    signal.signal(signal.SIGHUP, lambda *_: daemon.request("reload"))
    log.info("watching %s; status on %s", daemon.source.name, args.socket)
    return daemon.run()


def cmd_status(args: argparse.Namespace) -> int:
    from agent.service.status import format_status, query
    doc = query(args.socket)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        sys.stdout.write(format_status(doc))
    return 0 if not doc.get("errors") else 1


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
    p.add_argument("--no-drift-monitor", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-link-monitor", action="store_true", help=argparse.SUPPRESS)
    p = command("status", cmd_status, "a running daemon's state: source, revision, last apply, errors, "
                                      "interfaces", config=False)
    p.add_argument("--socket", default=DEFAULT_SOCKET, help=f"status socket (default {DEFAULT_SOCKET})")
    p.add_argument("--json", action="store_true", help="print the status document as JSON")
