"""agent.model.validate_membership: the membership tables a re-validated state carries
(patched from the previous state's) are exactly what the state computes itself, on
random chains of instance edits (groups, addresses, host, network, nic type, added and
removed instances), and the fast path is really taken. The daemon's whole pure path
(validate_update, then compile_changes patching the previous build, shared sets and
their union included) builds the same ruleset as a build from scratch."""
from __future__ import annotations

import copy

from compile_helpers import renumbered
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.compiler.compile import build_ruleset
from agent.compiler.patch import compile_changes
from agent.model.validate import validate_document
from agent.model.validate_incremental import validate_update

GROUPS = ["g0", "g1", "g2", "g3"]
CLASSIC = ["c0", "c1"]                  # classic groups: a classic instance's internet nic lends nothing
TABLES = ("members", "group_addresses", "group_networks", "instance_by_id", "local_instances",
          "local_interfaces")


def instance(n: int, groups: list[str], host: str, network: str, nic_type: str, addr: int) -> dict:
    if network == "classic":
        groups = [CLASSIC[GROUPS.index(g) % 2] for g in groups[:1]]
    else:
        nic_type = "intranet"
    return {"id": f"i{n:02d}", "host": host, "network": network, "security_groups": groups,
            "interfaces": [{"name": f"t{n:02d}", "nic_type": nic_type,
                            "addresses": [f"10.0.0.{addr}", f"fd00::{addr:x}"]}]}


def document(instances: list[dict]) -> dict:
    return {"host": "here", "security_groups": [
        {"id": g, "rules": [{"direction": "ingress", "policy": "accept", "protocol": "tcp",
                             "port_range": "22/22", "source_group": GROUPS[(i + 1) % 4]}]}
        for i, g in enumerate(GROUPS)] + [
        {"id": c, "network": "classic", "rules": [{"direction": "ingress", "policy": "accept", "protocol": "udp",
                                                   "port_range": "53/53", "source_group": "c1"}]}
        for c in CLASSIC],
        "instances": instances}


instances_st = st.builds(
    instance, st.integers(0, 11), st.lists(st.sampled_from(GROUPS), min_size=1, max_size=3, unique=True),
    st.sampled_from(["here", "there", "elsewhere"]), st.sampled_from(["vpc", "classic"]),
    st.sampled_from(["intranet", "internet"]), st.integers(1, 40))


def tables(state) -> dict:
    return {name: getattr(state, name) for name in TABLES}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=st.lists(instances_st, max_size=8, unique_by=lambda i: i["id"]),
       edits=st.lists(st.tuples(st.sampled_from(["replace", "add", "remove"]), instances_st), max_size=6))
def test_patched_tables_are_the_computed_ones(first: list[dict], edits: list) -> None:
    local = [instance(90, ["g0"], "here", "vpc", "intranet", 50), instance(91, ["g2", "g3"], "here", "vpc",
                                                                             "intranet", 51)]
    doc = document(local + first)
    try:
        previous = validate_update(copy.deepcopy(doc), None, None)
    except Exception:                   # noqa: BLE001 - e.g. an address clash: not this test's matter
        return
    _, memo = compile_changes(previous.state, None)      # computes the tables, as the daemon does
    for kind, inst in edits:
        new = copy.deepcopy(doc)
        ids = [i["id"] for i in new["instances"]]
        if kind == "remove" and len(ids) > 2:
            new["instances"].pop(2 + (len(ids) - 2) // 2)            # never one of the two local ones
        elif inst["id"] in ids:
            new["instances"][ids.index(inst["id"])] = inst
        else:
            new["instances"].append(inst)
        try:
            expected = validate_document(copy.deepcopy(new), None)
        except Exception:               # noqa: BLE001 - invalid: the daemon keeps the last one
            continue
        got = validate_update(new, None, previous)
        assert got.state == expected
        assert tables(got.state) == tables(expected)
        ruleset, memo = compile_changes(got.state, memo)
        assert renumbered(ruleset) == renumbered(build_ruleset(expected)) and not ruleset.errors
        previous, doc = got, new


def test_a_member_joining_patches_only_its_groups() -> None:
    doc = document([instance(n, [GROUPS[n % 4]], "there", "vpc", "intranet", n + 1) for n in range(12)])
    first = validate_update(copy.deepcopy(doc), None, None)
    before = tables(first.state)
    new = copy.deepcopy(doc)
    new["instances"][5]["security_groups"] = ["g1", "g3"]           # i05 joins g3 (it was in g1)
    got = validate_update(new, None, first)
    assert got.mode == "incremental"
    assert tables(got.state) == tables(validate_document(copy.deepcopy(new), None))
    after = got.state.__dict__
    assert after["group_addresses"]["g0"] is before["group_addresses"]["g0"]   # untouched: same object
    assert after["group_addresses"]["g3"] is not before["group_addresses"]["g3"]
    assert after["local_interfaces"] is before["local_interfaces"]             # a remote instance changed
