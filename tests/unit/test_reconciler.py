"""The one reconciler (agent.reconciler) against a fake kernel: stamps, adoption,
partial drift repair, revocation off the critical path, the saved state."""
from __future__ import annotations

import copy
import ipaddress
import os
from pathlib import Path

import pytest
import yaml

from agent.compiler.render import render_ruleset
from agent.model.validate import validate_document
from agent.policy.revocation import Flow
from agent.reconciler.drift import build_differing, build_repair
from agent.reconciler.keeper import ELEMENTS, FULL, INCREMENTAL, UNCHANGED, Drift, Keeper
from agent.reconciler.oneshot import apply_once
from agent.reconciler.revoke import RevocationWorker, apply_revocations, touched_addresses
from agent.reconciler.stamp import STAMP_SET, build_token
from agent.reconciler.store import PICKLE_FILE, RESTORE_FILE, StateStore
from fake_kernel import FakeKernel

WEBSHOP = yaml.safe_load((Path(__file__).parents[2] / "examples" / "webshop.yaml").read_text())


def state(doc=WEBSHOP):
    return validate_document(copy.deepcopy(doc), "hv-01")


def member_joins(doc=WEBSHOP) -> dict:
    doc = copy.deepcopy(doc)
    doc["instances"].append({"id": "web-9", "host": "hv-09", "security_groups": ["sg-web"],
                             "interfaces": [{"name": "tap-web9", "addresses": ["10.0.1.90"]}]})
    return doc


def no_anti_spoofing(doc=WEBSHOP) -> dict:
    doc = copy.deepcopy(doc)
    doc["anti_spoofing"] = False
    return doc


def test_every_commit_writes_the_stamp():
    k = FakeKernel()
    keeper = Keeper(k)
    first = keeper.apply(state())
    assert first.mode == FULL and k.stamp == keeper.token
    assert keeper.token == build_token(render_ruleset(keeper.applied))      # a full replace: its script's digest
    assert f"set {STAMP_SET}" in k.commits[0][1]
    before = keeper.token
    assert keeper.apply(state(member_joins())).mode == ELEMENTS
    assert STAMP_SET in k.commits[-1][1] and k.stamp == keeper.token != before
    before = keeper.token
    assert keeper.apply(state(no_anti_spoofing(member_joins()))).mode == INCREMENTAL
    assert "delete table" not in k.commits[-1][1] and k.stamp == keeper.token != before


def port_moved(doc=WEBSHOP) -> dict:
    doc = copy.deepcopy(doc)
    rule = next(r for g in doc["security_groups"] for r in g["rules"] if r.get("port_range"))
    low, _ = map(int, rule["port_range"].split("/"))
    rule["port_range"] = f"{low + 1}/{low + 1}"
    return doc


def test_a_refill_goes_over_netlink_and_falls_back_to_nft():
    """A rule edit that changes existing chains (and elements) is one netlink commit with
    the stamp; refused, the same change is an nft script; either way the stamp follows."""
    k = FakeKernel()
    keeper = Keeper(k)
    keeper.apply(state())
    assert keeper.apply(state(port_moved())).mode == INCREMENTAL
    assert k.commits[-1][0] == "changes" and STAMP_SET in k.commits[-1][1] and k.stamp == keeper.token
    k.refuse.add("changes")
    assert keeper.apply(state()).mode == INCREMENTAL
    assert k.commits[-1][0] == "incremental" and k.stamp == keeper.token


def test_adopt_takes_over_a_saved_ruleset_with_no_kernel_work(tmp_path):
    k = FakeKernel()
    store = StateStore(tmp_path)
    first = Keeper(k, store=store)
    first.apply(state())
    first.save()
    assert (tmp_path / RESTORE_FILE).read_text().count(k.stamp) == 1 and (tmp_path / PICKLE_FILE).exists()
    again = Keeper(k, store=store)
    assert again.adopt() == "adopted" and again.applied == first.applied
    assert again.apply(state()).mode == UNCHANGED and len(k.commits) == 1
    # a one-rule difference after a restart: a small transaction, not the full replace
    third = Keeper(k, store=store)
    assert third.adopt() == "adopted"
    assert third.apply(state(member_joins())).mode == ELEMENTS and k.stamp == third.token


def test_a_different_stamp_is_not_adopted(tmp_path):
    k = FakeKernel()
    store = StateStore(tmp_path)
    keeper = Keeper(k, store=store)
    keeper.apply(state())
    keeper.save()
    k.stamp = "::1"                                           # another writer's table
    fresh = Keeper(k, store=store)
    assert fresh.adopt() != "adopted" and fresh.apply(state()).mode == FULL


def test_apply_without_saved_state_recognises_its_full_replace(tmp_path):
    k = FakeKernel()
    assert apply_once(state(), kernel=k, store=StateStore(tmp_path / "a")).mode == FULL
    other = StateStore(tmp_path / "b")                        # nothing saved there
    assert apply_once(state(), kernel=k, store=other).mode == UNCHANGED and len(k.commits) == 1
    assert apply_once(state(), kernel=k, store=other, force=True).mode == FULL


def test_untrusted_saved_state_is_not_loaded(tmp_path):
    k = FakeKernel()
    keeper = Keeper(k, store=StateStore(tmp_path))
    keeper.apply(state())
    keeper.save()
    os.chmod(tmp_path / PICKLE_FILE, 0o666)
    assert StateStore(tmp_path).load() is None


def test_partial_repair_rewrites_only_the_touched_objects():
    k = FakeKernel()
    keeper = Keeper(k)
    keeper.apply(state())
    objects = frozenset({("inet", "secgroup_agent", "chain", "in_tap-web1"),
                         ("inet", "secgroup_agent", "set", "local_addr4"),
                         ("inet", "secgroup_agent", "chain", "foreign")})
    keeper.repair(Drift("nft[1]: delete rule", objects))
    what, script = k.commits[-1]
    assert what == "repair" and "delete table" not in script
    lines = script.splitlines()
    assert "flush chain inet secgroup_agent in_tap-web1" in lines
    assert "flush set inet secgroup_agent local_addr4" in lines
    assert lines[-1] == "delete chain inet secgroup_agent foreign"
    assert any(ln.startswith("add rule inet secgroup_agent in_tap-web1 ") for ln in lines)
    assert not any("eg_tap-web1" in ln for ln in lines) and keeper.repairs == 1
    keeper.repair(Drift("nft[1]: delete table", None))       # a table: the full replace
    assert "delete table inet secgroup_agent" in k.commits[-1][1]


def test_build_repair_refuses_tables_and_unknown_kinds():
    keeper = Keeper(FakeKernel())
    keeper.apply(state())
    assert build_repair(keeper.applied, [("inet", "secgroup_agent", "table", "secgroup_agent")]) is None
    assert build_repair(keeper.applied, [("ip", "other", "chain", "x")]) is None


def test_a_listing_is_compared_object_by_object():
    reference = ("table inet secgroup_agent {\n\tset s {\n\t\ttype ipv4_addr\n\t}\n"
                 "\tchain a {\n\t\tcounter packets 1 bytes 2 accept\n\t}\n\tchain b {\n\t\tdrop\n\t}\n}\n")
    now = reference.replace("\t\tdrop\n", "").replace("packets 1 bytes 2", "packets 9 bytes 9")
    assert build_differing(now, reference) == {("inet", "secgroup_agent", "chain", "b")}


def test_revocation_worker_coalesces_and_counts():
    k = FakeKernel()
    web1 = ipaddress.ip_address("10.0.1.11")
    st = state()
    k.flows = [Flow(ipaddress.ip_address("198.51.100.7"), web1, 6, 40000, 9999)]
    counted = []
    worker = RevocationWorker(k, counted.append, delay=0.0)
    worker.submit(st, frozenset())
    worker.submit(st, frozenset())
    assert worker.idle(5)
    assert len(k.deleted) == 1 and sum(counted) == 1 and len(counted) <= 2     # tcp/9999 is not allowed


def test_revocation_after_the_commit_through_the_hook():
    k = FakeKernel()
    later = []
    keeper = Keeper(k, revoke_later=lambda s, prev, old, revision: later.append(prev))
    result = keeper.apply(state())
    assert result.revoked == 0 and len(later) == 1


@pytest.mark.parametrize("mode", [FULL, UNCHANGED])
def test_result_summary_names_the_mode(mode):
    from agent.reconciler.result import ApplyResult
    text = ApplyResult(mode, 0.1, 0.05, 10, 0, (), 3, 21, 18).summary()
    assert text.startswith("applied:" if mode == FULL else "unchanged:")


def without_rule(rule_id: str, doc=WEBSHOP) -> dict:
    doc = copy.deepcopy(doc)
    for g in doc["security_groups"]:
        g["rules"] = [r for r in g.get("rules", []) if r["id"] != rule_id]
    return doc


def addrs(*texts: str) -> frozenset:
    return frozenset(ipaddress.ip_address(t) for t in texts)


def test_revocation_looks_only_at_the_interfaces_a_change_touches():
    old = state()
    # a rule of sg-web: its local members (web-1, web-2); db-1 names sg-web as a peer,
    # but sg-web's members did not change, so its lists did not
    assert touched_addresses(old, state(without_rule("web-https")), frozenset()) == \
        addrs("10.0.1.11", "fd00:1::11", "10.0.1.12")
    # a member joins sg-web (remotely): every list naming sg-web, db-1's included
    assert touched_addresses(old, state(member_joins()), frozenset()) == \
        addrs("10.0.1.11", "fd00:1::11", "10.0.1.12", "10.0.2.21")
    assert touched_addresses(old, state(), frozenset()) == frozenset()
    assert touched_addresses(None, old, frozenset()) is None                  # not known: everything
    assert touched_addresses(old, state(no_anti_spoofing()), frozenset()) is None
    gone = addrs("10.0.9.9")                                                  # left the host
    assert touched_addresses(old, state(), gone | addrs("10.0.1.11")) == gone


def test_revocation_lists_and_judges_only_touched_addresses():
    k = FakeKernel()
    web1, db1, out = (ipaddress.ip_address(a) for a in ("10.0.1.11", "10.0.2.21", "198.51.100.7"))
    k.flows = [Flow(out, web1, 6, 40000, 443), Flow(out, db1, 6, 40001, 9999)]   # db1's: not allowed anyway
    old = state()
    assert apply_revocations(state(without_rule("web-https")), frozenset(), k, old) == 1
    assert k.listed[-1] == addrs("10.0.1.11", "fd00:1::11", "10.0.1.12")
    assert k.deleted == [k.flows[0]]                                          # db1's flow was never judged
    assert apply_revocations(old, frozenset(), k, old) == 0 and len(k.listed) == 1   # nothing touched: no listing
    assert apply_revocations(old, frozenset(), k) == 1 and k.listed[-1] is None      # no old state: everything
