"""Unit tests of the trace view (captured `nft monitor trace` lines, nft 1.0.6), the
trace tables' script, the drift check's view of them, and the loss report."""
from __future__ import annotations

import pytest

from agent.cli.records import follow_file, format_record
from agent.errors import InvalidInput
from agent.kernel.trace import TRACE_TABLES, arm_script, check_match, disarm_script
from agent.kernel.verdicts import parse_verdict_chains
from agent.reconciler.port import OWNED_TABLES
from agent.service.observe import Resolver
from agent.service.recorder import Recorder, RecordOptions
from agent.service.traceview import TraceView

from test_records_codecs import LISTING

TRACE = """trace id 1f3ad624 inet secgroup_agent_trace pre packet: iif "tap7" ip saddr 10.77.0.2 ip daddr 10.77.0.1 udp dport 9000
trace id 1f3ad624 inet secgroup_agent_trace pre unknown rule handle 3 (verdict continue)
trace id 1f3ad624 inet secgroup_agent_trace pre policy accept
trace id 1f3ad624 inet secgroup_agent input packet: iif "tap7" ip saddr 10.77.0.2 ip daddr 10.77.0.1 udp dport 9000
trace id 1f3ad624 inet secgroup_agent input rule iifname "tap7" udp dport 9000 jump v_7 (verdict jump v_7)
trace id 1f3ad624 inet secgroup_agent in_tap7 rule goto pin_classic_all_sg-web (verdict goto pin_classic_all_sg-web)
trace id 1f3ad624 inet secgroup_agent v_7 rule log prefix "sg:7:" group 2701 comment "ingress/user/sg-web/r1/10/drop" (verdict continue)
trace id 1f3ad624 inet secgroup_agent v_7 rule counter packets 0 bytes 0 drop (verdict drop)"""


def test_trace_lines_in_the_documents_terms():
    view = TraceView(Resolver(lambda: parse_verdict_chains(LISTING), min_refresh=0.0))
    out = [t for t in (view.line(line) for line in TRACE.splitlines()) if t]
    assert out[0].startswith("[1f3ad624] packet: iif \"tap7\"")
    assert any(t.endswith("inet interface tap7 ingress: goto pin_classic_all_sg-web") for t in out)
    assert any("verdict v_7: stage user, ingress, group sg-web, rule r1, priority 10: drop: drop" in t for t in out)
    assert not any("handle" in t for t in out)
    assert view.decisions() == {"1f3ad624": "verdict v_7: stage user, ingress, group sg-web, rule r1, priority 10: drop"}


def test_trace_tables_are_not_the_agents_datapath():
    script = arm_script("tap7", "tcp dport 22", ["10.0.0.5", "fd00::5"])
    assert "priority -350" in script and 'iifname "tap7" tcp dport 22 meta nftrace set 1' in script
    assert "ip daddr { 10.0.0.5 } tcp dport 22" in script and "ip6 daddr { fd00::5 }" in script
    assert "table bridge secgroup_agent_trace {" in script
    assert not set(TRACE_TABLES) & set(OWNED_TABLES)      # drift monitor and verify never look at them
    assert disarm_script().count("delete table") == 2


@pytest.mark.parametrize("bad", ["tcp dport 22; flush ruleset", "tcp dport 22\nflush ruleset", "meta nftrace set 0"])
def test_trace_match_is_one_expression(bad):
    with pytest.raises(InvalidInput):
        check_match(bad)
    with pytest.raises(InvalidInput):
        arm_script("tap7;", "")


def test_loss_report_only_when_a_loss_grew(tmp_path):
    out = tmp_path / "records.jsonl"
    rec = Recorder(RecordOptions(host="hv1", log_file=str(out), packets=False),
                   resolver=Resolver(lambda: {}, min_refresh=0.0))
    assert rec.report_loss() is None
    rec.stats.add("queue_full", 3)
    first = rec.report_loss()
    assert first is not None and first["since_last"] == {"queue_full": 3}
    assert rec.report_loss() is None
    rec.sink.close()
    (line,) = list(follow_file(str(out), follow=False))
    assert line["type"] == "loss" and line["totals"]["queue_full"] == 3


def test_text_format_of_a_packet_record():
    r = {"type": "packet", "time": "2026-12-06T14:00:00.000Z", "verdict": "drop", "direction": "ingress",
         "interface": "tap7", "instance": "i1", "stage": "user", "group": "sg-web", "rule": "r1",
         "protocol": "udp", "src": "10.77.0.2", "sport": 36779, "dst": "10.77.0.1", "dport": 9000}
    assert format_record(r) == ("2026-12-06T14:00:00.000Z drop ingress tap7 (i1) user sg-web/r1: "
                                "udp 10.77.0.2:36779 -> 10.77.0.1:9000")


def test_flow_memory_is_bounded_and_long_flows_reported(tmp_path):
    from dataclasses import replace

    from agent.kernel.ctevents import parse_buffer
    from test_records_codecs import CT_DESTROY, CT_NEW
    written: list = []
    rec = Recorder(RecordOptions(host="hv1", packets=False, max_connections=1, flow_update_every=60),
                   echo=written.append, resolver=Resolver(lambda: parse_verdict_chains(LISTING), min_refresh=0.0))
    (new,), (gone,) = parse_buffer(CT_NEW), parse_buffer(CT_DESTROY)
    rec.handle_flow_event(new)
    rec.handle_flow_event(replace(new, id=new.id + 1))          # over max_connections: counted, not kept
    assert rec.stats.snapshot()["flow_untracked"] == 1 and len(rec._first_seen) == 1
    rec.handle_flow_event(gone)
    assert [r["event"] for r in written] == ["end"] and not rec._first_seen
    long_ago = replace(gone, kind="update", start=gone.start - 120 if gone.start else None)
    rec.long_flows([long_ago, replace(long_ago, start=gone.stop)], now=gone.stop + 1)
    assert [r["event"] for r in written] == ["end", "update"]
    assert written[1]["destination"]["rule"]["rule"] == "web"


def test_loss_counters_exported_to_prometheus():
    from prometheus_client import CollectorRegistry, generate_latest
    rec = Recorder(RecordOptions(host="hv1", packets=False), resolver=Resolver(lambda: {}, min_refresh=0.0))
    rec.stats.add("kernel_gaps", 4)
    registry = CollectorRegistry()
    registry.register(rec.collector())
    text = generate_latest(registry).decode()
    assert "secgroup_agent_records_kernel_gaps_total 4.0" in text
    assert "secgroup_agent_records_packets_logged_total 0.0" in text


def test_follow_file_waits_for_whole_lines_and_follows_rotation(tmp_path):
    import json
    import os
    import threading
    import time
    path = tmp_path / "records.jsonl"
    path.write_text('{"n": 1}\n{"n": ')            # the second line half written
    got: list = []

    def read():
        for r in follow_file(str(path), follow=True, poll=0.01):
            got.append(r["n"])
            if len(got) == 3:
                return
    t = threading.Thread(target=read, daemon=True)
    t.start()
    time.sleep(0.1)
    with open(path, "a") as f:
        f.write('2}\n')
    time.sleep(0.1)
    os.rename(path, tmp_path / "records.jsonl.1")      # rotated: a new file at the path
    path.write_text(json.dumps({"n": 3}) + "\n")
    t.join(timeout=5)
    assert got == [1, 2, 3]
