"""Verdict counters, audit mode and connection marks with real traffic (issue 16;
docs/observability.md), routed and bridged:

* each new connection accepted by a rule adds exactly one to its verdict chain's counter,
  at the receiver's ingress rule and at the sender's egress rule;
* a probe to a dropped port is counted by the drop rule's chain (at least once: TCP
  retransmits its SYN), and not by the accept rules;
* a drop rule in audit mode lets the connection through, counts it once and logs it
  (its log counter moves);
* the conntrack mark of an accepted connection carries the egress identity number in
  bits 16-31 and the ingress one in bits 0-15.
"""
from __future__ import annotations

import json
import re

import pytest

from khelpers import assert_connection, assert_no_connection, group, rule
from sandbox.hypervisor import run

from agent.compiler.attribution import ct_mark_numbers

pytestmark = pytest.mark.kernel
WEB, AUDITED, BLOCKED = 80, 22, 5432


def counters_doc(topo) -> dict:
    server = group("sg-web",
                   rule("ingress", "tcp", ports=f"{WEB}/{WEB}", rid="web", cidr="0.0.0.0/0"),
                   rule("ingress", "tcp", "drop", ports=f"{AUDITED}/{AUDITED}", rid="audited", cidr="0.0.0.0/0")
                   | {"mode": "audit"},
                   rule("ingress", "tcp", "drop", ports=f"{BLOCKED}/{BLOCKED}", rid="blocked", cidr="0.0.0.0/0"),
                   rule("ingress", "tcp", "accept", priority=2, ports="1/65535", rid="rest", cidr="0.0.0.0/0"))
    client = group("sg-client", rule("egress", "all", rid="out", cidr="0.0.0.0/0"))
    return topo.doc([server, client], {"i1": ["sg-web"], "i2": ["sg-client"]})


def counters(topo) -> dict[str, dict]:
    proc = topo.cli("counters", "--json", "--hits", "-")
    assert proc.returncode == 0, proc.stderr
    return {c["key"]: c for c in json.loads(proc.stdout)}


def delta(before: dict, after: dict, key: str, field: str = "packets") -> int:
    return (after[key][field] or 0) - (before.get(key, {}).get(field) or 0)


WEB_KEY = "ingress/user/sg-web/web/1/accept"
OUT_KEY = "egress/user/sg-client/out/1/accept"
AUDIT_KEY = "ingress/user/sg-web/audited/1/accept/audit"
BLOCK_KEY = "ingress/user/sg-web/blocked/1/drop"


def test_counters_count_new_connections_exactly(fresh):
    topo = fresh
    topo.apply(counters_doc(topo))
    before = counters(topo)
    assert {WEB_KEY, OUT_KEY, AUDIT_KEY, BLOCK_KEY} <= set(before)
    for _ in range(5):
        assert_connection(topo, "i2", "i1", "tcp", WEB)
    assert_no_connection(topo, "i2", "i1", "tcp", BLOCKED)
    after = counters(topo)
    assert delta(before, after, WEB_KEY) == 5, after[WEB_KEY]           # new connections, not packets
    assert delta(before, after, OUT_KEY) == 6                           # the sender's egress: 5 + the blocked probe
    assert delta(before, after, BLOCK_KEY) >= 1                         # dropped SYNs (retransmissions too)
    assert after[WEB_KEY]["bytes"] > before[WEB_KEY]["bytes"]


def test_audit_rule_accepts_counts_and_logs(fresh):
    topo = fresh
    topo.apply(counters_doc(topo))
    before = counters(topo)
    assert_connection(topo, "i2", "i1", "tcp", AUDITED)                 # would be dropped: audit accepts
    after = counters(topo)
    assert delta(before, after, AUDIT_KEY) == 1
    assert delta(before, after, AUDIT_KEY, "logged") == 1               # within the limits: logged
    assert after[AUDIT_KEY]["verdict"] == "accept" and after[AUDIT_KEY]["audit"] is True
    assert delta(before, after, "ingress/user/sg-web/rest/2/accept") == 0


def test_ct_mark_carries_both_ends_identities(fresh):
    topo = fresh
    topo.apply(counters_doc(topo))
    numbers = {k: c["number"] for k, c in counters(topo).items()}
    hold = topo.hold("i2", "i1", WEB)
    try:
        hold.wait_up()
        out = run(["ip", "netns", "exec", topo.hv, "conntrack", "-L", "-p", "tcp", "--dport", str(WEB),
                   "--orig-dst", topo.addr("i1", 4)], check=False).stdout
        marks = [int(m) for m in re.findall(r"\bmark=(\d+)", out)]
        assert marks, out
        assert ct_mark_numbers(marks[0]) == (numbers[OUT_KEY], numbers[WEB_KEY]), (out, numbers)
    finally:
        hold.close()
