"""plan_update (pure): only what changed, in an order the kernel accepts."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from agent.compiler.compile import TABLE, Chain, NftSet, Ruleset, Table, build_ruleset
from agent.compiler.transaction import element_diff, plan_update, ruleset_size
from agent.model.validate import validate_document

WEBSHOP = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "webshop.yaml").read_text())


def _rs(sets=(), chains=()) -> Ruleset:
    return Ruleset((Table("inet", TABLE, tuple(sets), tuple(chains)),))


BASE = Chain("forward", ("oifname vmap @ports",), "type filter hook forward priority 0; policy accept;")
PORTS = NftSet("ports", "ifname", ('"tap1" : goto in_tap1',), interval=False, map_to="verdict")
ADDRS = NftSet("g4", "ipv4_addr", ("10.0.0.0-10.0.0.255", "10.2.0.5"))


def test_nothing_changed_is_empty():
    rs = _rs([ADDRS, PORTS], [BASE, Chain("in_tap1", ("drop",))])
    assert plan_update(rs, rs) == ""


def test_golden_small_update():
    old = _rs([ADDRS, PORTS], [BASE, Chain("in_tap1", ("ip saddr @g4 accept", "drop"))])
    new = _rs([NftSet("g4", "ipv4_addr", ("10.0.0.0-10.0.0.127", "10.2.0.5")),
               NftSet("ports", "ifname", ('"tap1" : goto in_tap1', '"tap2" : goto in_tap2'),
                      interval=False, map_to="verdict")],
              [BASE, Chain("in_tap1", ("ip saddr @g4 accept", "drop")), Chain("in_tap2", ("drop",))])
    assert plan_update(old, new) == "\n".join([
        f"add chain inet {TABLE} in_tap2",
        f"delete element inet {TABLE} g4 {{ 10.0.0.0-10.0.0.255 }}",
        f"add element inet {TABLE} g4 {{ 10.0.0.0-10.0.0.127 }}",
        f'add element inet {TABLE} ports {{ "tap2" : goto in_tap2 }}',
        f"add rule inet {TABLE} in_tap2 drop",
    ]) + "\n"


def test_removed_chain_is_unreferenced_before_it_is_deleted():
    old = _rs([PORTS], [BASE, Chain("in_tap1", ("drop",))])
    new = _rs([NftSet("ports", "ifname", (), interval=False, map_to="verdict")], [BASE])
    lines = plan_update(old, new).splitlines()
    assert lines == [f"flush chain inet {TABLE} in_tap1",
                     f'delete element inet {TABLE} ports {{ "tap1" }}',
                     f"delete chain inet {TABLE} in_tap1"]


def test_map_value_change_deletes_the_key_then_adds_it():
    new_ports = NftSet("ports", "ifname", ('"tap1" : goto other',), interval=False, map_to="verdict")
    assert element_diff(PORTS, new_ports) == (('"tap1"',), ('"tap1" : goto other',))


def test_changed_set_declaration_replaces_set_and_refills_its_chains():
    old = _rs([ADDRS], [BASE, Chain("c", ("ip saddr @g4 accept",)), Chain("d", ("drop",))])
    new = _rs([NftSet("g4", "ipv4_addr", ("10.2.0.5",), interval=False)],
              [BASE, Chain("c", ("ip saddr @g4 accept",)), Chain("d", ("drop",))])
    lines = plan_update(old, new).splitlines()
    assert lines == [f"flush chain inet {TABLE} c", f"delete set inet {TABLE} g4",
                     f"add set inet {TABLE} g4 {{ type ipv4_addr; elements = {{ 10.2.0.5 }}; }}",
                     f"add rule inet {TABLE} c ip saddr @g4 accept"]


def test_hook_change_and_new_table_replace_the_table():
    old = _rs([], [BASE])
    new = _rs([], [Chain("forward", ("oifname vmap @ports",), "type filter hook forward priority 5; policy accept;")])
    script = plan_update(old, new)
    assert script.startswith(f"table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{")
    bridge = Table("bridge", TABLE, (), (Chain("x", ("accept",)),))
    script = plan_update(old, Ruleset(old.tables + (bridge,)))
    assert script.startswith(f"table bridge {TABLE}\ndelete table bridge {TABLE}\n")
    assert plan_update(Ruleset(old.tables + (bridge,)), old) == f"delete table bridge {TABLE}\n"


def _compiled(doc: dict) -> Ruleset:
    return build_ruleset(validate_document(doc))


def test_remote_instance_joining_a_group_changes_only_set_elements():
    new = copy.deepcopy(WEBSHOP)
    new["instances"].append({"id": "web-9", "host": "hv-99", "security_groups": ["sg-web"],
                             "interfaces": [{"name": "tap-web9", "addresses": ["10.0.1.99"]}]})
    script = plan_update(_compiled(WEBSHOP), _compiled(new))
    assert script
    verbs = {" ".join(line.split()[:2]) for line in script.splitlines()}
    assert verbs <= {"add element", "delete element"}, script
    from agent.compiler.transaction import (
        plan_element_changes,  # what the daemon commits
    )
    changes = plan_element_changes(_compiled(WEBSHOP), _compiled(new))
    assert changes and all("10.0.1.99" in " ".join(c.added) for c in changes)


def test_local_instance_leaving_a_group_touches_only_its_own_chains_and_sets():
    old, doc = _compiled(WEBSHOP), copy.deepcopy(WEBSHOP)
    inst = next(i for i in doc["instances"] if len(i["security_groups"]) > 1 and i.get("host") in (None, "hv-01"))
    inst["security_groups"] = inst["security_groups"][:1]
    script = plan_update(old, _compiled(doc))
    nics = {n["name"] for n in inst["interfaces"]}
    for line in script.splitlines():
        words = line.split()
        if words[1] in ("chain", "rule") and words[4].startswith(("in_", "eg_")):
            assert any(words[4].endswith(n.replace("-", "-")) for n in nics), line
    assert "delete table" not in script


def test_ruleset_size_counts():
    rs = _rs([ADDRS, PORTS], [BASE, Chain("in_tap1", ("a", "b"))])
    size = ruleset_size(rs)
    assert (size.chains, size.rules, size.sets, size.elements) == (2, 3, 2, 3)


def test_replace_sets_mode_replaces_a_changed_set_with_its_chains():
    old = _rs([ADDRS], [BASE, Chain("c", ("ip saddr @g4 accept",)), Chain("d", ("drop",))])
    new = _rs([NftSet("g4", "ipv4_addr", ("10.2.0.5",))],
              [BASE, Chain("c", ("ip saddr @g4 accept",)), Chain("d", ("drop",))])
    assert plan_update(old, new, replace_sets=True).splitlines() == [
        f"flush chain inet {TABLE} c", f"delete set inet {TABLE} g4",
        f"add set inet {TABLE} g4 {{ type ipv4_addr; flags interval; elements = {{ 10.2.0.5 }}; }}",
        f"add rule inet {TABLE} c ip saddr @g4 accept"]
    assert "element" in plan_update(old, new)


def test_element_changes_alone_when_only_elements_differ():
    from agent.compiler.transaction import plan_element_changes
    chains = [BASE, Chain("in_tap1", ("ip saddr @g4 accept", "drop"))]
    old = _rs([ADDRS, PORTS], chains)
    narrowed = NftSet("g4", "ipv4_addr", ("10.0.0.0-10.0.0.127", "10.2.0.5"))
    changes = plan_element_changes(old, _rs([narrowed, PORTS], chains))
    assert [(c.set.name, c.removed, c.added) for c in changes] == [
        ("g4", ("10.0.0.0-10.0.0.255",), ("10.0.0.0-10.0.0.127",))]
    assert plan_element_changes(old, old) == ()
    other_chain = [BASE, Chain("in_tap1", ("drop",))]
    assert plan_element_changes(old, _rs([narrowed, PORTS], other_chain)) is None
    assert plan_element_changes(old, _rs([ADDRS], chains)) is None                 # a set went
    redeclared = NftSet("g4", "ipv4_addr", ADDRS.elements, interval=False)
    assert plan_element_changes(old, _rs([redeclared, PORTS], chains)) is None
