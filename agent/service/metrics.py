"""Optional Prometheus endpoint (`run --metrics-port`): the facts of `status`, plus a
histogram of apply durations. Uses its own registry; nothing is exported unless asked.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator

from agent.errors import AgentError
from agent.reconciler.keeper import ApplyResult

log = logging.getLogger(__name__)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self, snapshot: Callable[[], dict]) -> None:
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
    def __init__(self, snapshot: Callable[[], dict]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, InfoMetricFamily
        doc = self.snapshot()
        last = doc.get("last_apply") or {}
        nics = doc.get("interfaces") or {}
        rs = doc.get("ruleset") or {}
        yield InfoMetricFamily("secgroup_agent_state", "Source and revision being enforced",
                               value={"source": str(doc.get("source")), "revision": str(doc.get("revision")),
                                      "state_hash": str(doc.get("state_hash"))})
        yield _gauge("ready", "1 once a valid state has been applied", float(bool(doc.get("ready"))))
        yield _gauge("errors", "Errors in the latest desired state or apply", len(doc.get("errors") or []))
        yield _gauge("last_apply_timestamp_seconds", "When the latest apply attempt ended", last.get("time") or 0)
        yield _gauge("last_apply_success", "1 when the latest apply attempt succeeded",
                     float(last.get("result") == "ok"))
        for key in ("configured", "present"):
            yield _gauge(f"interfaces_{key}", f"Local interfaces {key}", nics.get(key, 0))
        for key in ("chains", "rules", "sets", "elements"):
            yield _gauge(f"ruleset_{key}", f"nftables {key} the agent applied", rs.get(key, 0))
        applies = CounterMetricFamily("secgroup_agent_applies", "Applies by mode", labels=["mode"])
        for mode, n in sorted((doc.get("applies") or {}).items()):
            applies.add_metric([mode], n)
        yield applies
        yield CounterMetricFamily("secgroup_agent_drift_repairs", "Tables restored after drift",
                                  value=doc.get("drift_repairs", 0))
        yield CounterMetricFamily("secgroup_agent_conntrack_deleted", "Connections deleted (revocation)",
                                  value=doc.get("conntrack_deleted", 0))


def _gauge(name: str, doc: str, value: float):
    from prometheus_client.core import GaugeMetricFamily
    return GaugeMetricFamily(f"secgroup_agent_{name}", doc, value=value)
