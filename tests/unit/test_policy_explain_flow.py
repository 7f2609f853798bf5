"""`explain --from A --to B`, `explain --matrix`, near-miss hints and `show --addresses`
(issue 18): endpoints of every kind, both ends judged in order, the overall verdict, and
agreement with agent.policy.effective on random documents.
In process; through the `secgroup-agent` process: tests/component/test_cli_explain_flow.py."""
from __future__ import annotations

import pytest
from cli_helpers import EXAMPLE
from guardrail_helpers import HOST, documents
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from profiles import examples

from agent.errors import InvalidInput
from agent.model.validate import load_state, validate_document
from agent.policy.effective import build_effective_list, evaluate
from agent.policy.explain_flow import (
    explain_flow,
    reachability_matrix,
    resolve_endpoint,
)
from agent.policy.host_views import fleet_views

SHOP = load_state(str(EXAMPLE), None)


@pytest.mark.parametrize("text,label,local", [
    ("web-1", "web-1 (tap-web1)", True), ("tap-db1", "db-1 (tap-db1)", True),
    ("hv-01:tap-db1", "db-1 (tap-db1)", True), ("hv-02:tap-db2", "db-2 (hv-02:tap-db2)", False),
    ("tap-db2", "db-2 (hv-02:tap-db2)", False), ("db-2", "db-2 (hv-02:tap-db2)", False),
    ("10.0.2.22", "db-2 (hv-02:tap-db2)", False), ("fd00:1::11", "web-1 (tap-web1)", True),
    ("198.51.100.7", "198.51.100.7 (outside)", None)])
def test_endpoints_of_every_kind(text: str, label: str, local) -> None:
    end = resolve_endpoint(SHOP, text, "--from")
    assert end.label == label
    if local is None:
        assert end.nic is None and end.view is None
    else:
        assert (end.view.host == SHOP.host) is local


def test_unknown_endpoint_is_refused_with_its_flag() -> None:
    with pytest.raises(InvalidInput, match="--to: nope: not an instance id"):
        resolve_endpoint(SHOP, "nope", "--to")
    with pytest.raises(InvalidInput, match="--to: hv-09:tap-x: not a local interface"):
        resolve_endpoint(SHOP, "hv-09:tap-x", "--to")


def test_both_ends_in_order_and_the_overall_verdict() -> None:
    f = explain_flow(SHOP, "web-2", "db-1", "tcp", 5432)
    assert [(j.label, j.elist.direction, j.decision.verdict) for j in f.judgements] == [
        ("tap-web2", "egress", "accept"), ("tap-db1", "ingress", "drop")]
    assert f.judgements[1].decision.entry.rule_id == "db-block-web2"
    assert f.verdict == "drop"
    assert explain_flow(SHOP, "web-1", "db-1", "tcp", 5432).verdict == "accept"


def test_sender_drop_is_reported_with_the_receiver_still_judged() -> None:
    f = explain_flow(SHOP, "web-1", "198.51.100.7", "tcp", 25)
    assert [j.decision.entry.rule_id for j in f.judgements] == ["web-no-smtp"]
    assert f.verdict == "drop"
    f = explain_flow(SHOP, "web-1", "web-2", "tcp", 25)       # intra-group sg-web comes first
    assert [j.decision.entry.stage for j in f.judgements] == ["intra-group", "intra-group"]


def test_remote_end_is_judged_in_its_own_hosts_view() -> None:
    f = explain_flow(SHOP, "web-1", "hv-02:tap-db2", "tcp", 5432)
    assert [j.label for j in f.judgements] == ["tap-web1", "hv-02:tap-db2"]
    assert f.verdict == "accept"
    assert explain_flow(SHOP, "db-2", "db-1", "tcp", 5433).verdict == "accept"


def test_ip_version_and_icmp_on_ipv6() -> None:
    f = explain_flow(SHOP, "2001:db8:1::9", "web-1", "icmp")
    assert f.packet.protocol == 58 and f.packet.icmp_type == 128 and f.packet.dst.version == 6
    assert explain_flow(SHOP, "2001:db8:1::9", "web-1", "tcp", 22).verdict == "accept"   # pl-office
    with pytest.raises(InvalidInput, match="no IPv6"):
        explain_flow(SHOP, "web-1", "db-1", "tcp", 5432, version=6)     # db-1 has no IPv6


def test_near_miss_names_the_one_field_that_differs() -> None:
    hints = {h.field: h for h in explain_flow(SHOP, "db-2", "db-1", "tcp", 5432).judgements[1].hints}
    assert hints["port"].name == "sg-db/db-replication" and "opens port 5433" in hints["port"].detail
    assert hints["peer"].name == "sg-db/db-from-web" and "not an address of a member of sg-web" in hints["peer"].detail
    udp = explain_flow(SHOP, "web-1", "db-1", "udp", 5432).judgements[1].hints
    assert [(h.name, h.field) for h in udp] == [("sg-db/db-from-web", "protocol")]
    order = explain_flow(SHOP, "web-2", "db-1", "tcp", 5432).judgements[1].hints
    assert [(h.name, h.field, h.line) for h in order] == [("sg-db/db-from-web", "order", 5)]


def test_near_miss_ip_version_and_nic_type() -> None:
    doc = {"host": HOST, "security_groups": [
        {"id": "g", "network": "classic", "rules": [
            {"id": "v6", "direction": "ingress", "protocol": "tcp", "port_range": "80/80", "source_cidr": "::/0"},
            {"id": "pub", "direction": "ingress", "protocol": "tcp", "port_range": "443/443",
             "source_cidr": "0.0.0.0/0", "nic_type": "internet"},
            {"id": "a", "direction": "ingress", "protocol": "udp", "port_range": "1/10", "source_cidr": "0.0.0.0/0"},
            {"id": "b", "direction": "ingress", "protocol": "udp", "port_range": "1/20", "source_cidr": "0.0.0.0/0"},
            {"id": "c", "direction": "ingress", "protocol": "udp", "port_range": "1/30", "source_cidr": "0.0.0.0/0"},
            {"id": "d", "direction": "ingress", "protocol": "udp", "port_range": "1/40", "source_cidr": "0.0.0.0/0"}]}],
        "instances": [{"id": "i", "network": "classic", "security_groups": ["g"], "interfaces": [
            {"name": "tap-in", "nic_type": "intranet", "addresses": ["10.0.0.1"]},
            {"name": "tap-out", "nic_type": "internet", "addresses": ["192.0.2.1"]}]}]}
    state = validate_document(doc, HOST)
    v6 = explain_flow(state, "198.51.100.1", "tap-in", "tcp", 80).judgements[0].hints
    assert [(h.name, h.field) for h in v6] == [("g/v6", "IP version")]
    nic = explain_flow(state, "198.51.100.1", "tap-in", "tcp", 443).judgements[0].hints
    assert [(h.name, h.field, h.line) for h in nic] == [("g/pub", "nic type", None)]
    many = explain_flow(state, "198.51.100.1", "tap-in", "udp", 50).judgements[0].hints
    assert len(many) == 3 and {h.field for h in many} == {"port"}          # at most three


def test_matrix_agrees_with_explain_flow_per_pair() -> None:
    ids, cells = reachability_matrix(SHOP, "tcp", 5432)
    assert ids == ["db-1", "db-2", "web-1", "web-2"]
    for a in ids:
        for b in ids:
            if a != b:
                for v, verdict in cells[a][b].items():
                    assert explain_flow(SHOP, a, b, "tcp", 5432, version=v).verdict == verdict
    assert cells["web-1"]["db-1"] == {4: "accept"} and cells["web-2"]["db-1"] == {4: "drop"}


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), st.sampled_from([("tcp", 80), ("udp", 22), ("icmp", None), ("gre", None)]),
       st.sampled_from([4, 6]))
def test_flow_is_senders_egress_then_receivers_ingress(doc: dict, proto, version: int) -> None:
    """On random documents: the overall verdict is accept exactly when the sender's egress
    list and the receiver's ingress list (each in its host's view) both accept."""
    state = validate_document(doc, HOST)
    views = dict(fleet_views(state))
    for a in state.instances:
        for b in state.instances:
            if a.id == b.id or not all(any(x.version == version for x in i.interfaces[0].addresses) for i in (a, b)):
                continue
            f = explain_flow(state, a.id, b.id, proto[0], proto[1], version=version)
            want = "accept"
            for inst, direction in ((a, "egress"), (b, "ingress")):
                view = views[inst.host or state.host]
                if evaluate(build_effective_list(view, inst.interfaces[0].name, direction), f.packet).verdict == "drop":
                    want = "drop"
            assert f.verdict == want
