"""`secgroup-agent publish -c F --to etcd://HOST:PORT/PREFIX`: a validated document into
etcd, as the keys of agent/sources/etcd_layout.py, in ONE transaction.

Idempotent: the keys under the prefix are read first and only what differs is written
(nothing at all when the document is already there); keys that the document no longer
has are deleted in the same transaction. The transaction only commits if no key under the
prefix changed since that read (a concurrent publish); otherwise it is planned again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from agent.sources import SourceError
from agent.sources.client import ClientOptions
from agent.sources.etcd_gateway import EtcdGateway, b64, prefix_end
from agent.sources.etcd_layout import EtcdTarget, Plan, document_keys, plan_changes
from agent.model.loader import read_document
from agent.model.validate import validate_document

log = logging.getLogger(__name__)
ATTEMPTS = 3


@dataclass(frozen=True)
class PublishReport:
    target: str
    revision: int          # the store revision that holds the document
    written: int           # keys put
    deleted: int           # keys deleted
    kept: int              # keys already equal

    def summary(self) -> str:
        if not self.written and not self.deleted:
            return f"{self.target}: unchanged ({self.kept} keys, revision {self.revision})"
        return (f"{self.target}: published at revision {self.revision}: {self.written} written, "
                f"{self.deleted} deleted, {self.kept} unchanged")


def publish(path: str | Path, spec: str, target: EtcdTarget, host: Optional[str] = None,
            **options: Any) -> PublishReport:
    """Validate the file (InvalidInput), then write it; SourceError when etcd fails."""
    data = read_document(path)  # agent.model.loader: the limits and checks of every source
    state = validate_document(data, host)
    if data.get("host"):
        log.warning("publish %s: the document names host %s; agents started without --host "
                    "will all take that name", spec, state.host)
    gw = EtcdGateway(list(target.endpoints), ClientOptions.from_kwargs(spec, options))
    try:
        return _write(gw, spec, target, document_keys(data, target.prefix))
    finally:
        gw.close()


def _write(gw: EtcdGateway, spec: str, target: EtcdTarget, desired: dict[str, bytes]) -> PublishReport:
    for attempt in range(1, ATTEMPTS + 1):
        snap = gw.range_prefix(target.key_prefix)
        plan = plan_changes(snap.kvs, desired)
        kept = len(desired) - len(plan.puts)
        if plan.empty:
            return PublishReport(spec, snap.revision, 0, 0, kept)
        ok, revision = _commit(gw, spec, target, snap.revision, plan)
        if ok:
            log.info("publish %s: revision %d: %d put, %d deleted", spec, revision,
                     len(plan.puts), len(plan.deletes))
            return PublishReport(spec, revision, len(plan.puts), len(plan.deletes), kept)
        log.info("publish %s: keys changed meanwhile (attempt %d); planning again", spec, attempt)
    raise SourceError(f"publish {spec}: the keys kept changing under a concurrent writer; "
                      f"gave up after {ATTEMPTS} attempts")


def _commit(gw: EtcdGateway, spec: str, target: EtcdTarget, revision: int, plan: Plan) -> tuple[bool, int]:
    ops = _operations(plan)
    try:
        return gw.txn(_unchanged_since(target, revision), ops)
    except SourceError as exc:
        if "too many operations" in str(exc):
            raise SourceError(f"publish {spec}: {len(ops)} changed keys exceed etcd's limit of "
                              f"operations per transaction; start etcd with a larger "
                              f"--max-txn-ops (default 128)") from None
        raise


def _unchanged_since(target: EtcdTarget, revision: int) -> list[dict]:
    """No key under the prefix was modified after `revision`."""
    return [{"key": b64(target.key_prefix), "range_end": b64(prefix_end(target.key_prefix)),
             "target": "MOD", "result": "LESS", "mod_revision": revision + 1}]


def _operations(plan: Plan) -> list[dict]:
    ops = [{"request_put": {"key": b64(k), "value": b64(v)}} for k, v in sorted(plan.puts.items())]
    ops += [{"request_delete_range": {"key": b64(k)}} for k in plan.deletes]
    return ops
