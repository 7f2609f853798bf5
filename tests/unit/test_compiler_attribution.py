"""Verdict identities in the compiled datapath (agent.compiler.verdicts, attribution)."""
from __future__ import annotations

import copy
import re

from compile_helpers import HOST, by_key, verdict_keys
from compile_sim import Simulator, parse_verdict_chain

from agent.compiler.attribution import VerdictId, ct_mark_numbers, number_of_chain
from agent.compiler.boxes import first_match_labels, first_match_region
from agent.compiler.compile import build_ruleset, compile_ruleset
from agent.compiler.patch import compile_changes
from agent.compiler.transaction import plan_update
from agent.compiler.verdicts import Numbering
from agent.model.validate import validate_document


def _doc() -> dict:
    rules = [{"id": "web", "direction": "ingress", "protocol": "tcp", "port_range": "80/80", "priority": 10,
              "source_cidr": "0.0.0.0/0"},
             {"id": "block", "direction": "ingress", "protocol": "tcp", "port_range": "1/1023", "priority": 5,
              "policy": "drop", "source_cidr": "192.0.2.0/24"},
             {"id": "out", "direction": "egress", "protocol": "udp", "port_range": "53/53", "priority": 1,
              "dest_cidr": "10.0.0.0/8"}]
    return {"host": HOST, "security_groups": [{"id": "sg", "type": "custom", "rules": rules}],
            "instances": [{"id": "a", "security_groups": ["sg"],
                           "interfaces": [{"name": "tap-a", "addresses": ["10.0.0.1"]}]}]}


def test_labels_keep_the_old_region_and_split_only_by_deciding_line():
    items = [(((0, 9), (0, 9)), 1), (((5, 14), (0, 9)), 2), (((0, 3), (0, 3)), 3)]
    labelled = first_match_labels(items)
    assert sorted(labelled) == [(((0, 9), (0, 9)), 1), (((10, 14), (0, 9)), 2)]
    accepts = [(box, label != 2) for box, label in items]
    assert first_match_region(accepts) == tuple(b for b, lab in first_match_labels(accepts) if lab)
    assert first_match_labels(items, keep=lambda label: label == 2) == ((((10, 14), (0, 9)), 2),)


def test_one_chain_per_identity_with_its_key_and_mark():
    rs = build_ruleset(validate_document(_doc(), HOST))
    keys = verdict_keys(rs)
    assert len(set(keys.values())) == len(keys)
    (table,) = [t for t in rs.tables if t.family == "inet"]
    for chain in table.chains:
        number = number_of_chain(chain.name)
        if number is None:
            continue
        verdict, key, _ = parse_verdict_chain(chain)
        vid = VerdictId.from_key(key)
        if verdict == "accept":
            mark = int(re.search(r"or (0x[0-9a-f]+)", chain.rules[0])[1], 16)
            assert ct_mark_numbers(mark) == ((number, 0) if vid.direction == "egress" else (0, number))
    assert "ingress/user/sg/web/10/accept" in keys.values() and "ingress/user/sg/block/5/drop" in keys.values()


def test_numbers_survive_an_edit_and_the_edit_stays_small():
    doc = _doc()
    first, memo = compile_changes(validate_document(doc, HOST), None)
    before = {v: k for k, v in verdict_keys(first).items()}
    doc["security_groups"][0]["rules"].insert(0, {"id": "new", "direction": "ingress", "protocol": "udp",
                                                  "port_range": "5000/5000", "priority": 1,
                                                  "source_cidr": "198.51.100.0/24"})
    second, _ = compile_changes(validate_document(doc, HOST), memo)
    after = {v: k for k, v in verdict_keys(second).items()}
    assert all(after[key] == name for key, name in before.items())       # old identities, old numbers
    new = after["ingress/user/sg/new/1/accept"]
    assert new not in before.values()
    plan = plan_update(first, second)
    assert f"add chain inet secgroup_agent {new}" in plan
    assert len(plan.splitlines()) < 15, plan


def test_a_deleted_rule_frees_its_chain_and_its_number_is_not_reused_at_once():
    doc = _doc()
    first, memo = compile_ruleset(validate_document(doc, HOST), None)
    web = {v: k for k, v in verdict_keys(first).items()}["ingress/user/sg/web/10/accept"]
    doc["security_groups"][0]["rules"][0]["id"] = "web2"
    second, _ = compile_ruleset(validate_document(copy.deepcopy(doc), HOST), memo)
    keys = verdict_keys(second)
    assert web not in keys and "ingress/user/sg/web/10/accept" not in keys.values()
    assert int(number_of_chain(next(n for n, k in keys.items() if k.endswith("/web2/10/accept")))) > \
        max(number_of_chain(n) or 0 for n in verdict_keys(first))


def test_numbering_takes_free_numbers_and_keeps_old_ones():
    a, b, c = (VerdictId("user", "ingress", "accept", "g", r) for r in "abc")
    n = Numbering({a: 3, b: 1})
    assert n.number(c) == 2 and n.number(a) == 3 and n.number(b) == 1


def test_simulator_names_the_deciding_rule():
    state = validate_document(_doc(), HOST)
    rs = build_ruleset(state)
    sim = Simulator(rs)
    from ipaddress import ip_address
    from agent.policy.effective import Packet
    blocked = sim.judge("tap-a", "ingress", Packet(ip_address("192.0.2.7"), ip_address("10.0.0.1"), 6, 999, 80))
    web = sim.judge("tap-a", "ingress", Packet(ip_address("198.51.100.7"), ip_address("10.0.0.1"), 6, 999, 80))
    other = sim.judge("tap-a", "ingress", Packet(ip_address("198.51.100.7"), ip_address("10.0.0.1"), 6, 999, 81))
    assert (blocked.verdict, blocked.identity) == ("drop", "ingress/user/sg/block/5/drop")
    assert (web.verdict, web.identity) == ("accept", "ingress/user/sg/web/10/accept")
    assert (other.verdict, other.identity) == ("drop", "ingress/final/-/-/-/drop")
    assert by_key(rs, ["goto v_1"])[0].startswith("=> ")


def test_audit_rule_accepts_counts_and_explain_says_so():
    from ipaddress import ip_address
    from agent.policy.effective import Packet
    from agent.policy.explain import explain_at, render_decision
    from agent.guardrails.diff import diff_states, render_text
    doc = _doc()
    doc["security_groups"][0]["rules"][1]["mode"] = "audit"
    state = validate_document(doc, HOST)
    rs = build_ruleset(state)
    probe = Packet(ip_address("192.0.2.7"), ip_address("10.0.0.1"), 6, 999, 80)
    got = Simulator(rs).judge("tap-a", "ingress", probe)
    assert (got.verdict, got.identity) == ("accept", "ingress/user/sg/block/5/accept/audit")
    j = explain_at(state, "tap-a", "ingress", probe)
    assert j.decision.verdict == "accept" and "audit mode: it would drop" in render_decision(j, probe)
    text = render_text(diff_states(validate_document(_doc(), HOST), state))
    assert "audit" in text, text
    whole = copy.deepcopy(doc)
    del whole["security_groups"][0]["rules"][1]["mode"]
    whole["mode"] = "audit"                             # top level: every drop rule audits
    assert Simulator(build_ruleset(validate_document(whole, HOST))).judge("tap-a", "ingress", probe).identity \
        == "ingress/user/sg/block/5/accept/audit"


def test_logging_chains_rate_limit_and_keep_the_verdict():
    from ipaddress import ip_address
    from agent.policy.effective import Packet
    from agent.reconciler.drift import without_dynamic_elements
    doc = _doc()
    doc["security_groups"][0]["rules"][0]["log"] = True
    doc["log"] = {"drops": True, "rate": "3/second", "group": 7}
    rs = build_ruleset(validate_document(doc, HOST))
    (table,) = [t for t in rs.tables if t.family == "inet"]
    chains = {c.name: c for c in table.chains}
    keys = verdict_keys(rs)
    web = next(n for n, k in keys.items() if k == "ingress/user/sg/web/10/accept")
    assert len(chains[web].rules) == 5 and chains[web].rules[-1] == f'counter log group 7 prefix "sg:{web[2:]}:" accept'
    assert all(len(chains[n].rules) == (5 if VerdictId.from_key(k).verdict == "drop" or n == web else 1)
               for n, k in keys.items())
    assert {"log_iface", "log_all"} <= {s.name for s in table.sets}
    sim = Simulator(rs)
    got = sim.judge("tap-a", "ingress", Packet(ip_address("198.51.100.7"), ip_address("10.0.0.1"), 6, 999, 80))
    assert (got.verdict, got.identity) == ("accept", "ingress/user/sg/web/10/accept")
    listing = ("table inet secgroup_agent {\n\tset log_iface {\n\t\ttype ifname . ifname . mark\n\t\tsize 65536\n"
               "\t\tflags dynamic,timeout\n\t\ttimeout 1m\n\t\telements = { \"tap-a\" . \"\" . 0x00000000 limit rate over "
               "3/second expires 59s,\n\t\t\t     \"tap-b\" . \"\" . 0x00000000 expires 3s }\n\t}\n}\n")
    assert "elements" not in without_dynamic_elements(listing) and "timeout 1m" in without_dynamic_elements(listing)
    quiet = build_ruleset(validate_document(_doc(), HOST))
    assert not {"log_iface", "log_all"} & {s.name for t in quiet.tables for s in t.sets}
