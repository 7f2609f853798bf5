"""Verdict counters from a JSON listing, last hits, lint's never-hit, the metrics (no kernel)."""
from __future__ import annotations

import pytest

from agent.compiler.counters import never_hit, read_counters, update_hits
from agent.guardrails.lint import NEVER_HIT, LintOptions, lint
from agent.model.validate import validate_document


def _rule(chain: str, handle: int, packets: int, comment: str = "", extra: tuple = ()) -> dict:
    rule = {"family": "inet", "table": "secgroup_agent", "chain": chain, "handle": handle,
            "expr": [*extra, {"counter": {"packets": packets, "bytes": packets * 60}}]}
    return {"rule": rule | ({"comment": comment} if comment else {})}


LISTING = [
    {"metainfo": {"version": "1.0.6"}},
    _rule("pin_x", 1, 99),                                              # not a verdict chain
    _rule("v_3", 10, 7, "ingress/user/sg/web/10/accept"),
    _rule("v_4", 20, 12, "ingress/user/sg/block/5/drop"),
    _rule("v_4", 21, 2, extra=({"limit": {}},)), _rule("v_4", 22, 1), _rule("v_4", 23, 0),
    _rule("v_4", 24, 9),
]


def test_counters_per_identity_logged_and_suppressed():
    web, block = read_counters(LISTING)
    assert (web.number, web.key, web.packets, web.bytes, web.logged) == (3, "ingress/user/sg/web/10/accept", 7, 420, None)
    assert (block.packets, block.logged, block.suppressed) == (12, 9, 3)
    assert block.packets == block.logged + block.suppressed
    assert block.to_json()["rule"] == "block" and block.to_json()["verdict"] == "drop"


def test_last_hits_and_never_hit_findings():
    first = update_hits({}, read_counters(LISTING), 100.0)
    assert first["ingress/user/sg/web/10/accept"] == {"first_seen": 100.0, "last_hit": 100.0, "packets": 7}
    zero = [_rule("v_5", 1, 0, "ingress/user/sg/idle/20/accept")]
    record = update_hits(update_hits({}, read_counters(zero), 50.0), read_counters(zero), 60.0)
    assert never_hit(record) == {"ingress/user/sg/idle/20/accept": 50.0}
    moved = update_hits(record, read_counters([_rule("v_5", 1, 1, "ingress/user/sg/idle/20/accept")]), 70.0)
    assert never_hit(moved) == {}
    doc = {"host": "hv", "security_groups": [{"id": "sg", "rules": [
        {"id": "idle", "direction": "ingress", "protocol": "tcp", "port_range": "1/1", "priority": 20,
         "source_cidr": "192.0.2.0/24"}]}], "instances": []}
    found = [f for f in lint(validate_document(doc, "hv"), LintOptions(never_hit=never_hit(record)))
             if f.kind == NEVER_HIT]
    assert [(f.group, f.rule, f.severity) for f in found] == [("sg", "idle", "info")]
    assert "1970-01-01 00:00:50 UTC" in found[0].message


def test_metrics_collector_series_per_identity():
    pytest.importorskip("prometheus_client")
    from agent.service.metrics import VerdictCollector
    calls = []
    collector = VerdictCollector(lambda: calls.append(1) or read_counters(LISTING), min_interval=60)
    families = {f.name: f for f in collector.collect()}
    list(collector.collect())
    assert len(calls) == 1                                  # cached between scrapes
    samples = {(s.labels["rule"], s.name): s.value for f in families.values() for s in f.samples}
    assert samples[("web", "secgroup_agent_verdict_packets_total")] == 7
    assert samples[("block", "secgroup_agent_verdict_log_suppressed_total")] == 3
