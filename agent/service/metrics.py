"""Optional Prometheus endpoint (`run --metrics-port`): the facts of `status`, a
histogram of apply durations, and the verdict counters of the kernel per identity
(`secgroup_agent_verdict_*`, labels direction, stage, group, rule, verdict, audit: one
series per verdict identity of the applied state, so the cardinality is bounded by the
desired state: 2 x user rules + default rules + groups with intra-group access + 15
essentials; docs/observability.md). Uses its own registry; nothing is exported unless asked.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterator, Optional

from agent.errors import AgentError
from agent.reconciler.result import ApplyResult
from agent.service.status_doc import RulesetFacts, Status

log = logging.getLogger(__name__)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self, snapshot: Callable[[], Status]) -> None:
        try:
            from prometheus_client import CollectorRegistry, Histogram
        except ImportError as exc:
            raise AgentError("--metrics-port needs the prometheus-client package") from exc
        self.registry = CollectorRegistry()
        self.snapshot = snapshot
        self.histogram = Histogram("secgroup_agent_apply_duration_seconds",
                                   "Time from desired state to committed kernel state, per apply",
                                   ["mode"], buckets=BUCKETS, registry=self.registry)
        self.registry.register(_Collector(snapshot))
        self.registry.register(VerdictCollector())

    def observe(self, result: ApplyResult) -> None:
        if result.mode != "unchanged":
            self.histogram.labels(result.mode).observe(result.seconds)

    def serve(self, port: int, addr: str) -> None:
        from prometheus_client import start_http_server
        try:
            start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            raise AgentError(f"metrics endpoint {addr}:{port}: {exc.strerror or exc}") from None
        log.info("metrics on http://%s:%d/metrics", addr, port)


class _Collector:
    def __init__(self, snapshot: Callable[[], Status]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, InfoMetricFamily
        doc = self.snapshot()
        last, nics, rs = doc.last_apply, doc.interfaces, doc.ruleset or RulesetFacts()
        yield InfoMetricFamily("secgroup_agent_state", "Source and revision being enforced",
                               value={"source": str(doc.source), "revision": str(doc.revision),
                                      "state_hash": str(doc.state_hash)})
        yield _gauge("ready", "1 once a valid state has been applied", float(doc.ready))
        yield _gauge("errors", "Errors in the latest desired state or apply", len(doc.errors))
        yield _gauge("last_apply_timestamp_seconds", "When the latest apply attempt ended",
                     last.time if last else 0)
        yield _gauge("last_apply_success", "1 when the latest apply attempt succeeded",
                     float(last is not None and last.result == "ok"))
        yield _gauge("interfaces_configured", "Local interfaces configured", nics.configured)
        yield _gauge("interfaces_present", "Local interfaces present", nics.present)
        yield _gauge("interfaces_programmed", "Local interfaces whose rules are in the kernel", len(nics.programmed))
        for key in ("chains", "rules", "sets", "elements"):
            yield _gauge(f"ruleset_{key}", f"nftables {key} the agent applied", getattr(rs, key))
        applies = CounterMetricFamily("secgroup_agent_applies", "Applies by mode", labels=["mode"])
        for mode, n in sorted(doc.applies.items()):
            applies.add_metric([mode], n)
        yield applies
        yield CounterMetricFamily("secgroup_agent_drift_repairs", "Tables restored after drift",
                                  value=doc.drift_repairs)
        yield CounterMetricFamily("secgroup_agent_conntrack_deleted", "Connections deleted (revocation)",
                                  value=doc.conntrack_deleted)


class VerdictCollector:
    """The kernel's verdict counters at scrape time (read at most every `min_interval`
    seconds: a listing of a large table takes a child `nft` a second or more), and the
    last-hit record updated with them (agent.compiler.counters)."""
    LABELS = ["direction", "stage", "group", "rule", "verdict", "audit"]

    def __init__(self, read: Optional[Callable[[], list]] = None, min_interval: float = 15.0) -> None:
        self.read = read or _read_kernel
        self.min_interval = min_interval
        self._at = -min_interval
        self._last: list = []

    def counters(self) -> list:
        now = time.monotonic()
        if now - self._at >= self.min_interval:
            try:
                self._last = self.read()
            except AgentError as exc:
                log.warning("verdict counters: %s", exc)
            self._at = now
        return self._last

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily
        families = {name: CounterMetricFamily(f"secgroup_agent_verdict_{name}", text, labels=self.LABELS)
                    for name, text in (("packets", "Packets decided per verdict identity (new connections for accepts)"),
                                       ("bytes", "Bytes of the packets decided"),
                                       ("logged", "Packets logged (NFLOG)"),
                                       ("log_suppressed", "Packets the log rate limits kept from the log"))}
        for c in self.counters():
            v = c.vid
            labels = [v.direction or "-", v.stage, v.group or "-", v.rule or "-", v.verdict, str(v.audit).lower()]
            families["packets"].add_metric(labels, c.packets)
            families["bytes"].add_metric(labels, c.bytes)
            if c.logged is not None:
                families["logged"].add_metric(labels, c.logged)
                families["log_suppressed"].add_metric(labels, c.suppressed or 0)
        yield from families.values()


def _read_kernel() -> list:
    from agent.reconciler.hits import read_and_record
    return read_and_record()


def _gauge(name: str, doc: str, value: float):
    from prometheus_client.core import GaugeMetricFamily
    return GaugeMetricFamily(f"secgroup_agent_{name}", doc, value=value)
