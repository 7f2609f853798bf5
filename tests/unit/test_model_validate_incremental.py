"""agent.model.validate_incremental: the result of `validate_update` is always the full
`validate_document` result (equal state, or the identical error list), and a typical
change takes the fast path, reusing the built objects of whatever did not change.

Documents: small outputs of scripts/gen-config (when present) and the shop
fixture, edited at random; edits are chained so that `previous` is itself an incremental
result, and an invalid document leaves the last valid result in place (as the daemon does).
"""
from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import yaml
from gen_config import GEN, generate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from profiles import examples

from agent.errors import InvalidInput
from agent.model.validate import validate_document
from agent.model.validate_incremental import Validated, validate_update

SHOP = Path(__file__).resolve().parents[1] / "fixtures" / "valid" / "shop.yaml"
HOST = "hv-bench"


@cache
def generated(interfaces: int, rules: int, seed: int, remote: int = 0) -> str:
    args = ["--interfaces", str(interfaces), "--rules", str(rules), "--seed", str(seed),
            "--remote", str(remote), "--host", HOST]
    return generate(*args)


def base_documents() -> list[str]:
    docs = [json.dumps(yaml.safe_load(SHOP.read_text()))]
    if GEN.exists():
        docs += [generated(20, 5, 1), generated(12, 4, 2, remote=4), generated(8, 3, 3)]
    return docs


BASES = base_documents()


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except InvalidInput as exc:
        return "invalid", [str(e) for e in exc.errors]


# --- edits: each mutates a fresh copy of the document, drawing its choices ------------------

def _pick(d: st.DataObject, seq: list) -> Any:
    return seq[d.draw(st.integers(0, len(seq) - 1))] if seq else None


def _seq(obj: dict, key: str) -> list:
    """obj[key] when it is a list (an earlier edit may have broken it), else a scratch list."""
    value = obj.get(key)
    return value if isinstance(value, list) else []


def _items(obj: dict, key: str) -> list[dict]:
    return [x for x in _seq(obj, key) if isinstance(x, dict)]


def _group(doc: dict, d: st.DataObject) -> Optional[dict]:
    return _pick(d, _items(doc, "security_groups"))


def _rule(doc: dict, d: st.DataObject) -> Optional[dict]:
    return _pick(d, [r for g in _items(doc, "security_groups") for r in _items(g, "rules")])


def _gids(doc: dict) -> list[str]:
    return [str(g.get("id")) for g in _items(doc, "security_groups")] or ["sg-none"]


def _ids(doc: dict, key: str) -> list[str]:
    return [str(x.get("id")) for x in _items(doc, key)]


def edit_rule_port(doc: dict, d: st.DataObject) -> None:
    if rule := _rule(doc, d):
        rule["protocol"] = d.draw(st.sampled_from(["tcp", "udp", "icmp"]))
        rule["port_range"] = d.draw(st.sampled_from(["80/80", "1/65535", 443, "90/80", "0/9", "x", "-1/-1"]))


def edit_rule_priority(doc: dict, d: st.DataObject) -> None:
    if rule := _rule(doc, d):
        rule["priority"] = d.draw(st.sampled_from([1, 7, 100, 0, 101, "5", 2.5]))


def edit_rule_peer(doc: dict, d: st.DataObject) -> None:
    if not (rule := _rule(doc, d)):
        return
    for side in ("source", "dest"):
        for kind in ("cidr", "group", "prefix_list"):
            rule.pop(f"{side}_{kind}", None)
    side = "source" if rule.get("direction") == "ingress" else d.draw(st.sampled_from(["dest", "source"]))
    kind = d.draw(st.sampled_from(["cidr", "group", "prefix_list", "none"]))
    values = {"cidr": ["10.0.0.0/8", "fd00::/8", "10.0.0.1/8", "banana"],
              "group": _gids(doc)[:3] + ["sg-unknown"],
              "prefix_list": _ids(doc, "prefix_lists") + ["pl-unknown"]}
    if kind != "none":
        rule[f"{side}_{kind}"] = d.draw(st.sampled_from(values[kind]))


def add_rule(doc: dict, d: st.DataObject) -> None:
    group, rule = _group(doc, d), _rule(doc, d)
    if group is not None and rule is not None:
        new = copy.deepcopy(rule)
        how = d.draw(st.sampled_from(["new id", "no id", "same", "same id, other port"]))
        if how == "new id":
            new["id"] = f"added-{len(_seq(group, 'rules'))}"
        elif how == "no id":
            new.pop("id", None)
        elif how == "same id, other port":
            new.update(protocol="tcp", port_range="7/7")
        if isinstance(group.setdefault("rules", []), list):
            group["rules"].append(new)


def remove_rule(doc: dict, d: st.DataObject) -> None:
    if (group := _group(doc, d)) and _seq(group, "rules"):
        del group["rules"][d.draw(st.integers(0, len(group["rules"]) - 1))]


def add_instance(doc: dict, d: st.DataObject) -> None:
    instances = _seq(doc, "instances")
    if not (inst := _pick(d, _items(doc, "instances"))):
        return
    new = copy.deepcopy(inst)
    new["id"] = f"i-added-{len(instances)}"
    if d.draw(st.booleans()):
        for n, nic in enumerate(_items(new, "interfaces")):
            nic["name"] = f"add{len(instances)}x{n}"
    new["host"] = d.draw(st.sampled_from([HOST, "hv-remote", None, new.get("host")]))
    instances.insert(d.draw(st.integers(0, len(instances))), new)


def remove_instance(doc: dict, d: st.DataObject) -> None:
    if instances := _seq(doc, "instances"):
        del instances[d.draw(st.integers(0, len(instances) - 1))]


def edit_instance_groups(doc: dict, d: st.DataObject) -> None:
    if inst := _pick(d, _items(doc, "instances")):
        choices = _gids(doc) + ["sg-unknown", " " + _gids(doc)[0]]
        inst["security_groups"] = d.draw(st.lists(st.sampled_from(choices), max_size=3))


def edit_instance_addresses(doc: dict, d: st.DataObject) -> None:
    inst = _pick(d, _items(doc, "instances"))
    if inst and _items(inst, "interfaces"):
        _items(inst, "interfaces")[0]["addresses"] = d.draw(st.lists(st.sampled_from(
            ["10.9.9.9", "fd00::99", "10.9.9.9/32", "nope", "10.0.1.11"]), max_size=2))


def edit_instance_nic(doc: dict, d: st.DataObject) -> None:
    inst, other = _pick(d, _items(doc, "instances")), _pick(d, _items(doc, "instances"))
    if inst and _items(inst, "interfaces") and other and _items(other, "interfaces"):
        nic = _items(inst, "interfaces")[0]
        field = d.draw(st.sampled_from(["name", "attachment", "nic_type", "network", "host"]))
        if field == "name":
            nic["name"] = d.draw(st.sampled_from([_items(other, "interfaces")[0].get("name"),
                                                  "fresh0", "bad name"]))
        elif field == "attachment":
            nic["attachment"] = d.draw(st.sampled_from(["bridged", "routed", "wired"]))
        elif field == "nic_type":
            nic["nic_type"] = d.draw(st.sampled_from(["internet", "intranet"]))
        elif field == "network":
            inst["network"] = d.draw(st.sampled_from(["classic", "vpc"]))
        else:
            inst["host"] = d.draw(st.sampled_from([HOST, " hv-remote ", "hv-remote", None, 7]))


def duplicate_id(doc: dict, d: st.DataObject) -> None:
    key = d.draw(st.sampled_from(["security_groups", "instances", "prefix_lists"]))
    if item := _pick(d, _items(doc, key)):
        doc[key].append(copy.deepcopy(item))


def edit_top_level(doc: dict, d: st.DataObject) -> None:
    field, value = d.draw(st.sampled_from([
        ("attachment", "bridged"), ("attachment", "routed"), ("attachment", "bogus"),
        ("anti_spoofing", False), ("revoke_connections", False), ("host", "hv-other"),
        ("host", HOST), ("comment", "hello"), ("instances", None), ("prefix_lists", "x")]))
    doc[field] = value


def edit_prefix_list(doc: dict, d: st.DataObject) -> None:
    how = d.draw(st.sampled_from(["entries", "add", "remove"]))
    plists = _seq(doc, "prefix_lists")
    if how == "add" and isinstance(doc.setdefault("prefix_lists", plists), list):
        plists = doc["prefix_lists"]
        plists.append({"id": f"pl-added-{len(plists)}", "entries": ["192.0.2.0/24"]})
    elif plists and how == "remove":
        del plists[d.draw(st.integers(0, len(plists) - 1))]
    elif plists:
        if plist := _pick(d, _items(doc, "prefix_lists")):
            plist["entries"] = d.draw(st.lists(st.sampled_from(
                ["192.0.2.0/24", "2001:db8::/32", "192.0.2.1/24", "junk"]), max_size=3))


def edit_group(doc: dict, d: st.DataObject) -> None:
    if not (group := _group(doc, d)):
        return
    field, value = d.draw(st.sampled_from([
        ("type", "enterprise"), ("type", "default"), ("type", "CUSTOM"), ("network", "classic"),
        ("inner_access", "drop"), ("allow_http", True), ("name", "renamed"),
        ("id", "sg-renamed"), ("id", f" {group.get('id')} ")]))
    group[field] = value


def add_or_remove_group(doc: dict, d: st.DataObject) -> None:
    if not isinstance(groups := doc.setdefault("security_groups", []), list):
        return
    if d.draw(st.booleans()) or not groups:
        peer = d.draw(st.sampled_from(_gids(doc)[:2] + ["sg-added-0", "sg-nowhere"]))
        groups.append({"id": f"sg-added-{len(groups)}", "rules": [
            {"direction": "ingress", "protocol": "tcp", "port_range": "22/22", "source_group": peer}]})
    else:
        del groups[d.draw(st.integers(0, len(groups) - 1))]


def shuffle(doc: dict, d: st.DataObject) -> None:
    key = d.draw(st.sampled_from(["security_groups", "instances", "prefix_lists"]))
    if isinstance(doc.get(key), list):
        doc[key] = d.draw(st.permutations(doc[key]))


def nothing(doc: dict, d: st.DataObject) -> None:
    pass


EDITS = [edit_rule_port, edit_rule_priority, edit_rule_peer, add_rule, remove_rule, add_instance,
         remove_instance, edit_instance_groups, edit_instance_addresses, edit_instance_nic,
         duplicate_id, edit_top_level, edit_prefix_list, edit_group, add_or_remove_group,
         shuffle, nothing]


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(d=st.data())
def test_update_is_the_full_validation(d: st.DataObject) -> None:
    host = d.draw(st.sampled_from([HOST, None]))
    current = json.loads(d.draw(st.sampled_from(BASES)))
    previous = validate_update(copy.deepcopy(current), host, None)
    for edit in d.draw(st.lists(st.sampled_from(EDITS), min_size=1, max_size=5)):
        doc = copy.deepcopy(current)
        edit(doc, d)
        expected = outcome(lambda: validate_document(copy.deepcopy(doc), host))
        got = outcome(lambda: validate_update(doc, host, previous))
        if got[0] == "ok":
            assert expected == ("ok", got[1].state)
            previous, current = got[1], doc
        else:
            assert got == expected
            if d.draw(st.booleans()):       # go on from the invalid document, or from the last valid
                current = doc


# --- the fast path is taken and reuses what did not change ----------------------------------

@pytest.fixture(scope="module")
def fleet() -> str:
    if not GEN.exists():
        pytest.skip(f"{GEN} not present")
    return generated(60, 10, 5, remote=10)


def _step(text: str, edit: Callable[[dict], None], previous: Validated) -> Validated:
    doc = json.loads(text)
    edit(doc)
    result = validate_update(doc, None, previous)
    assert result.state == validate_document(json.loads(json.dumps(doc)), None)
    return result


def test_one_rule_edit_takes_the_fast_path_and_reuses_the_rest(fleet: str) -> None:
    first = validate_update(json.loads(fleet), None, None)
    assert first.mode == "full"

    def edit(doc: dict) -> None:
        doc["security_groups"][3]["rules"][0].update(protocol="tcp", port_range="4242/4243")
    second = _step(fleet, edit, first)
    assert second.mode == "incremental"
    edited = second.state.groups[3].id
    for old, new in zip(first.state.groups, second.state.groups):
        assert (old is new) == (new.id != edited)
    assert all(a is b for a, b in zip(first.state.instances, second.state.instances))
    third = _step(fleet, lambda doc: None, second)          # back to the first document
    assert third.mode == "incremental" and third.state == first.state
    assert third.state.group_by_id[edited] is not second.state.group_by_id[edited]


@pytest.mark.parametrize("name", ["instance groups", "instance address", "add rule", "remove rule",
                                  "add instance", "remove instance", "add group", "nothing"])
def test_typical_changes_take_the_fast_path(fleet: str, name: str) -> None:
    def edit(doc: dict) -> None:
        inst, group = doc["instances"][5], doc["security_groups"][2]
        if name == "instance groups":
            inst["security_groups"] = [doc["security_groups"][0]["id"]]
        elif name == "instance address":
            inst["interfaces"][0]["addresses"] = ["10.99.0.1"]
        elif name == "add rule":
            group["rules"].append({"direction": "egress", "protocol": "udp", "port_range": 53,
                                   "dest_cidr": "10.0.0.0/8"})
        elif name == "remove rule":
            group["rules"].pop()
        elif name == "add instance":
            doc["instances"].append({"id": "i-new", "security_groups": [group["id"]],
                                     "interfaces": [{"name": "tnew", "addresses": ["10.77.0.1"]}]})
        elif name == "remove instance":
            doc["instances"].remove(inst)
        elif name == "add group":
            doc["security_groups"].insert(0, {"id": "sg-new", "rules": []})
    assert _step(fleet, edit, validate_update(json.loads(fleet), None, None)).mode == "incremental"


@pytest.mark.parametrize("edit", [
    lambda doc: doc.update(anti_spoofing=False),
    lambda doc: doc["security_groups"].pop(),
    lambda doc: doc["security_groups"][0].update(type="enterprise", inner_access="drop"),
], ids=["top-level field", "group removed", "group type"])
def test_what_the_fast_path_does_not_handle_falls_back(fleet: str, edit: Callable[[dict], None]) -> None:
    try:
        result = _step(fleet, edit, validate_update(json.loads(fleet), None, None))
    except InvalidInput:
        return                                              # (the full check found it invalid)
    assert result.mode == "full"


def test_an_invalid_change_reports_the_full_error_list(fleet: str) -> None:
    previous = validate_update(json.loads(fleet), None, None)
    doc = json.loads(fleet)
    doc["security_groups"][1]["rules"][0]["priority"] = 0
    doc["instances"][0]["security_groups"] = ["sg-unknown"]
    with pytest.raises(InvalidInput) as full:
        validate_document(json.loads(json.dumps(doc)), None)
    with pytest.raises(InvalidInput) as incremental:
        validate_update(doc, None, previous)
    assert [str(e) for e in incremental.value.errors] == [str(e) for e in full.value.errors]
