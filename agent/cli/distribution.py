"""Fleet commands: `publish` (a document into etcd for the agents that watch it)."""
from __future__ import annotations

import argparse
from typing import Callable

from agent.errors import InputError, InvalidInput

EXIT_OK = 0


def cmd_publish(args: argparse.Namespace) -> int:
    from agent.distribution.publish import publish
    from agent.sources import SourceError
    from agent.sources.etcd_layout import parse_etcd_spec
    try:
        target = parse_etcd_spec(args.to)
    except SourceError as exc:
        raise InvalidInput([InputError("--to", args.to, str(exc).split(": ", 1)[-1])]) from None
    report = publish(args.config, args.to, target, args.host, ca_file=args.ca_file,
                     cert_file=args.cert_file, key_file=args.key_file)
    print(report.summary())
    return EXIT_OK


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("publish", cmd_publish,
                "validate the desired state and write it into etcd in one transaction "
                "(only what changed; keys that are gone are deleted)")
    p.add_argument("--to", required=True, metavar="etcd://HOST:PORT/PREFIX",
                   help="where the agents watch (several endpoints: HOST:PORT,HOST:PORT)")
    p.add_argument("--ca-file", help="CA of etcd's client certificates (https to etcd)")
    p.add_argument("--cert-file", help="client certificate for etcd")
    p.add_argument("--key-file", help="its private key")
