"""The compiler's memo (agent.compiler.memo): a build that reuses the previous build's
chains and sets is the same Ruleset as a build from scratch, whatever changed; and
what did not change is the very same objects (so agent.compiler.transaction skips it)."""
from __future__ import annotations

import copy
import json
import random

from compile_helpers import renumbered
from gen_config import generate
from hypothesis import given, settings
from hypothesis import strategies as st
from profiles import examples

from agent.compiler.compile import build_ruleset, compile_ruleset
from agent.compiler.patch import compile_changes
from agent.compiler.transaction import plan_update
from agent.errors import InvalidInput
from agent.model.validate import validate_document

HOST = "hv-bench"


def _generated(seed: int) -> dict:
    out = generate("--interfaces", "8", "--rules", "4", "--groups", "4", "--remote", "4",
                   "--prefix-lists", "2", "--seed", str(seed))
    return json.loads(out)


DOCS = [_generated(seed) for seed in (1, 2)]


def _rule(rng: random.Random, doc: dict) -> dict:
    direction = rng.choice(["ingress", "egress"])
    side = "source" if direction == "ingress" else "dest"
    peer = rng.choice([(f"{side}_cidr", rng.choice(["10.0.0.0/8", "0.0.0.0/0", "fd00::/8", "192.0.2.7/32"])),
                       (f"{side}_group", rng.choice(doc["security_groups"])["id"]),
                       (f"{side}_prefix_list", rng.choice(doc["prefix_lists"])["id"])])
    proto = rng.choice(["tcp", "udp", "icmp", "all"])
    rule = {"direction": direction, "policy": rng.choice(["accept", "drop"]),
            "priority": rng.randint(1, 100), "protocol": proto, peer[0]: peer[1]}
    if proto in ("tcp", "udp"):
        lo = rng.randint(1, 65000)
        rule["port_range"] = f"{lo}/{lo + rng.randint(0, 500)}"
    return rule


def _edit(rng: random.Random, doc: dict) -> None:
    """One random, valid change of the kind the daemon sees."""
    groups, instances = doc["security_groups"], doc["instances"]
    kind = rng.randrange(11)
    group = rng.choice(groups)
    if kind == 0:
        group["rules"].append(_rule(rng, doc))
    elif kind == 1 and group["rules"]:
        group["rules"].pop(rng.randrange(len(group["rules"])))
    elif kind == 2 and group["rules"]:
        group["rules"][rng.randrange(len(group["rules"]))] = _rule(rng, doc)
    elif kind == 3:
        inst = rng.choice(instances)
        inst["security_groups"] = rng.sample([g["id"] for g in groups], rng.randint(1, 2))
    elif kind == 4:
        nic = rng.choice(instances)["interfaces"][0]
        nic["addresses"] = [f"10.9.{rng.randint(0, 9)}.{rng.randint(1, 250)}"] + nic["addresses"][1:]
    elif kind == 5:
        pl = rng.choice(doc["prefix_lists"])
        pl["entries"] = pl["entries"][1:] + [f"198.51.{rng.randint(0, 255)}.0/24"]
    elif kind == 6:
        group["inner_access"] = rng.choice(["accept", "drop"])
    elif kind == 7:
        doc["anti_spoofing"] = not doc.get("anti_spoofing", True)
    elif kind == 8:
        nic = rng.choice(instances)["interfaces"][0]
        nic["mac"] = rng.choice([None, "52:54:00:00:00:aa"])
    elif kind == 9:                  # the log settings alone: every verdict chain may change
        doc["log"] = rng.choice([{"drops": True}, {"drops": False}, {"drops": True, "rate": 5, "burst": 2}])
    elif group["rules"]:             # one rule's log flag
        rule = group["rules"][rng.randrange(len(group["rules"]))]
        rule["log"] = not rule.get("log", False)


@settings(max_examples=examples(40), deadline=None)
@given(st.integers(0, 1), st.integers(0, 2 ** 32), st.integers(1, 8), st.booleans())
def test_memo_build_equals_fresh_build(which, seed, steps, patched):
    """Both entry points: compile_ruleset (memo per chain) and compile_changes (the
    patched build the daemon uses, which falls back to compile_ruleset)."""
    build = compile_changes if patched else compile_ruleset
    rng = random.Random(seed)
    doc = copy.deepcopy(DOCS[which])
    ruleset, memo = build(validate_document(doc, HOST), None)
    for _ in range(steps):
        before = copy.deepcopy(doc)
        _edit(rng, doc)
        try:
            state = validate_document(copy.deepcopy(doc), HOST)
        except InvalidInput:        # e.g. icmp with an IPv6 CIDR: not a change the daemon applies
            doc = before
            continue
        ruleset, memo = build(state, memo)
        assert renumbered(ruleset) == renumbered(build_ruleset(state))


def test_unchanged_objects_are_reused_and_plan_nothing():
    doc = copy.deepcopy(DOCS[0])
    first, memo = compile_ruleset(validate_document(doc, HOST), None)
    again, _ = compile_ruleset(validate_document(copy.deepcopy(doc), HOST), memo)
    assert again == first and plan_update(first, again) == ""
    old_sets = {s.name: s for s in first.tables[0].sets}
    assert all(s is old_sets[s.name] for s in again.tables[0].sets if s.name.startswith(("pin", "peg", "grp")))


def test_one_rule_change_repaints_only_chains_of_that_group():
    doc = copy.deepcopy(DOCS[0])
    first, memo = compile_ruleset(validate_document(doc, HOST), None)
    group = doc["security_groups"][0]
    group["rules"].append({"direction": "ingress", "policy": "accept", "priority": 1, "protocol": "udp",
                           "port_range": "4242/4242", "source_cidr": "192.0.2.0/24"})
    second, _ = compile_ruleset(validate_document(doc, HOST), memo)
    old = {o.name: o for o in first.tables[0].sets + first.tables[0].chains}
    changed = {o.name for o in second.tables[0].sets + second.tables[0].chains
               if o.name.startswith(("pin", "peg", "grp")) and old.get(o.name) is not o}
    assert changed and all(s.startswith("pin_") and group["id"] in s for s in changed), changed


def test_a_member_joining_carries_the_verdict_chains():
    """No policy or interface chain changed: the verdict chains are the previous build's
    objects (not rebuilt), and the build is still the fresh one."""
    doc = copy.deepcopy(DOCS[0])
    first, memo = compile_changes(validate_document(doc, HOST), None)
    remote = next(i for i in doc["instances"] if i.get("host") != HOST)
    remote["interfaces"][0]["addresses"] = ["10.77.0.9"]
    state = validate_document(copy.deepcopy(doc), HOST)
    second, _ = compile_changes(state, memo)
    old = {c.name: c for c in first.tables[0].chains}
    verdict = [c for c in second.tables[0].chains if c.name.startswith("v_")]
    assert verdict and all(c is old[c.name] for c in verdict)
    assert renumbered(second) == renumbered(build_ruleset(state)) and second != first


def test_patched_build_is_taken_for_rule_prefix_and_group_setting_edits(monkeypatch):
    import agent.compiler.patch as patch
    calls = []
    real = patch._patched
    monkeypatch.setattr(patch, "_patched", lambda *a: calls.append(1) or real(*a))
    doc = copy.deepcopy(DOCS[0])
    _, memo = compile_changes(validate_document(doc, HOST), None)
    edits = [lambda d: d["security_groups"][1]["rules"].append(
                 {"direction": "egress", "policy": "drop", "priority": 3, "protocol": "tcp",
                  "port_range": "25/25", "dest_cidr": "0.0.0.0/0"}),
             lambda d: d["prefix_lists"][0]["entries"].append("198.51.100.0/24"),
             lambda d: d["security_groups"][0].update(inner_access="drop"),
             lambda d: d["security_groups"][0].update(inner_access="accept")]
    for n, edit in enumerate(edits, 1):
        edit(doc)
        state = validate_document(copy.deepcopy(doc), HOST)
        ruleset, memo = compile_changes(state, memo)
        assert len(calls) == n and renumbered(ruleset) == renumbered(build_ruleset(state))


def test_memo_keeps_digests_of_region_lines_not_the_lines():
    """The memo lives as long as the daemon: holding every chain's boxes would cost
    more than the ruleset itself (~140 MB at 1,000 interfaces x 100 rules)."""
    _, memo = compile_changes(validate_document(copy.deepcopy(DOCS[0]), HOST), None)
    assert memo.region_parts and all(isinstance(p.digest, bytes) and len(p.digest) == 32
                                     for p in memo.region_parts.values())
