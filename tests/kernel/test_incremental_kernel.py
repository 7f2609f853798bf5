"""Incremental updates on the real kernel: old full apply + plan_update(old, new) must
leave exactly the objects a full apply of `new` leaves (in a namespace of its own).

The kernel lists a table's objects in creation order and interval-set elements in
insertion order, so listings are compared per object with elements sorted."""
from __future__ import annotations

import copy
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.compiler.compile import build_ruleset
from agent.compiler.transaction import plan_update
from agent.compiler.render import render_flush, render_ruleset
from agent.model.validate import validate_document
from scratch import scratch_namespace

pytestmark = [pytest.mark.kernel,
              pytest.mark.require_root]
ROOT = Path(__file__).resolve().parents[2]
WEBSHOP = yaml.safe_load((ROOT / "examples" / "webshop.yaml").read_text())
GEN = Path(__file__).resolve().parents[2] / "scripts" / "gen-config"
NS = f"sginc{os.getpid() % 100000}"


@pytest.fixture(scope="module")
def ns():
    with scratch_namespace(NS) as name:
        yield name


def nft(ns: str, script: str, tmp_path: Path) -> None:
    f = tmp_path / "script.nft"
    f.write_text(script)
    proc = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", str(f)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + "\n" + script[:3000]


def listing(ns: str) -> list[str]:
    out = []
    for family in ("inet", "bridge"):
        proc = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", family, "secgroup_agent"],
                              capture_output=True, text=True)
        if proc.returncode == 0:
            body = proc.stdout.strip().split("\n", 1)[1].rsplit("\n}", 1)[0]     # inside `table ... { }`
            out += [f"{family}: {b.strip()}" for b in re.split(r"\n\s*\n", body)
                    if not b.strip().startswith("set agent_stamp ")]     # the reconciler's stamp
    return sorted(canonical(b) for b in renumber(out))


def renumber(blocks: list[str]) -> list[str]:
    """Verdict chain numbers replaced by their identity keys (the chains' comments): an
    incremental apply keeps the previous build's numbers, a full apply of the same state
    numbers afresh; what they name must be the same."""
    keys = {}
    for b in blocks:
        m = re.search(r'chain (v_\d+) \{.*comment "([^"]+)"', b, re.S)
        if m:
            keys[m[1]] = m[2]
    out = []
    for b in blocks:
        b = re.sub(r"ct mark set ct mark & \S+ \| \S+", "ct mark set <n>", b)
        out.append(re.sub(r"\bv_\d+\b", lambda m: f"v<{keys.get(m[0], '?')}>", b))
    return out


def canonical(block: str) -> str:
    """One object's text with its elements in a fixed order."""
    def sort_elements(m: re.Match) -> str:
        items = [e.strip() for e in m.group(1).replace("\n", " ").split(",") if e.strip()]
        return "elements = { " + ", ".join(sorted(items)) + " }"
    return re.sub(r"elements = \{([^}]*)\}", sort_elements, block)


def compiled(doc: dict):
    return build_ruleset(validate_document(copy.deepcopy(doc)))


def check(ns: str, tmp_path: Path, old: dict, new: dict, replace_sets: bool = False) -> str:
    a, b = compiled(old), compiled(new)
    nft(ns, render_ruleset(a), tmp_path)
    script = plan_update(a, b, replace_sets)
    if script:
        nft(ns, script, tmp_path)
    incremental = listing(ns)
    nft(ns, render_flush(b.owned), tmp_path)
    nft(ns, render_ruleset(b), tmp_path)
    assert incremental == listing(ns)
    nft(ns, render_flush(b.owned), tmp_path)
    return script


def _mutated(fn):
    doc = copy.deepcopy(WEBSHOP)
    fn(doc)
    return doc


def _group(doc, gid):
    return next(g for g in doc["security_groups"] if g["id"] == gid)


WEBSHOP_CHANGES = {
    "rule port": lambda d: d["security_groups"][0]["rules"][0].update(port_range="8080/8090"),
    "rule removed": lambda d: d["security_groups"][0]["rules"].pop(0),
    "rule added": lambda d: d["security_groups"][0]["rules"].append(
        {"direction": "ingress", "protocol": "udp", "port_range": "53/53", "policy": "accept",
         "priority": 5, "source_cidr": "10.0.0.0/8"}),
    "policy flipped": lambda d: d["security_groups"][0]["rules"][0].update(policy="drop"),
    "remote joins": lambda d: d["instances"].append(
        {"id": "r9", "host": "elsewhere", "security_groups": [g["id"] for g in d["security_groups"]
                                                              if g.get("type") != "enterprise"][:1],
         "interfaces": [{"name": "tap-r9", "addresses": ["10.0.1.90", "fd00::90"]}]}),
    "local added": lambda d: d["instances"].append(
        {"id": "n1", "security_groups": [d["security_groups"][0]["id"]],
         "interfaces": [{"name": "tap-new1", "addresses": ["10.0.9.1"]}]}),
    "local removed": lambda d: d["instances"].pop(0),
    "groups changed": lambda d: d["instances"][0].update(security_groups=[d["security_groups"][-1]["id"]]),
    "bridged port": lambda d: d["instances"][0]["interfaces"][0].update(attachment="bridged"),
}


@pytest.mark.parametrize("replace_sets", [False, True], ids=["elements", "replace-sets"])
@pytest.mark.parametrize("change", sorted(WEBSHOP_CHANGES))
def test_incremental_equals_full(ns, tmp_path, change, replace_sets):
    new = _mutated(WEBSHOP_CHANGES[change])
    script = check(ns, tmp_path, WEBSHOP, new, replace_sets)
    assert script, "the change must change something"
    if change not in ("bridged port",):
        assert "delete table" not in script
    if not replace_sets and change == "remote joins":
        assert "chain" not in script and "delete set" not in script
    back = check(ns, tmp_path, new, WEBSHOP, replace_sets)          # and the way back
    assert back


@pytest.mark.skipif(not GEN.exists(), reason="gen-config not available")
def test_incremental_equals_full_on_generated_configs(ns, tmp_path):
    doc = json.loads(subprocess.run([str(GEN), "--interfaces", "20", "--rules", "10", "--remote", "10",
                                     "--seed", "7"], capture_output=True, text=True, check=True).stdout)
    rnd = random.Random(7)
    for _ in range(4):
        new = copy.deepcopy(doc)
        for _ in range(3):
            g = rnd.choice(new["security_groups"])
            if not g["rules"]:
                continue
            r = rnd.choice(g["rules"])
            r["priority"] = rnd.randint(1, 100)
            r["policy"] = rnd.choice(["accept", "drop"])
        inst = rnd.choice(new["instances"])
        inst["security_groups"] = [rnd.choice(new["security_groups"])["id"]]
        check(ns, tmp_path, doc, new)
        check(ns, tmp_path, doc, new, replace_sets=True)
        doc = new


def test_overlapping_interval_elements_swap_in_one_transaction(ns, tmp_path):
    """delete element + add an overlapping one, concatenated (pipapo) and plain (rbtree)."""
    nft(ns, "table inet sgovl {\n set c { type ipv4_addr . inet_proto . inet_service; flags interval;"
            " elements = { 10.0.0.0-10.0.0.255 . 6 . 80 }; }\n"
            " set p { type ipv4_addr; flags interval; elements = { 10.0.0.0/24 }; }\n}\n", tmp_path)
    nft(ns, "delete element inet sgovl c { 10.0.0.0-10.0.0.255 . 6 . 80 }\n"
            "add element inet sgovl c { 10.0.0.0-10.0.0.127 . 6 . 80-81, 10.0.0.128-10.0.0.255 . 6 . 80 }\n"
            "delete element inet sgovl p { 10.0.0.0/24 }\n"
            "add element inet sgovl p { 10.0.0.0/25, 10.0.0.128-10.0.0.200 }\n", tmp_path)
    nft(ns, "delete table inet sgovl\n", tmp_path)


KEEPER_SCRIPT = """
import json, sys
from agent.reconciler.keeper import Keeper
from agent.reconciler.port import RealKernel
from agent.model.validate_incremental import validate_update
scripts = []                    # the nft scripts committed, by kind (the rest went over netlink)
commit = RealKernel.commit
RealKernel.commit = lambda self, script, what: scripts.append(what) or commit(self, script, what)
keeper, validated, modes = Keeper(RealKernel()), None, []
for path in sys.argv[1:]:
    validated = validate_update(json.load(open(path)), None, validated)
    modes.append(keeper.apply(validated.state).mode)
    if modes[-1] == "incremental" and scripts[-1:] != ["incremental"]:
        modes[-1] = "incremental over netlink"
    scripts.clear()
print(json.dumps(modes))
"""


def keeper_applies(ns: str, tmp_path: Path, docs: list[dict]) -> list[str]:
    """The daemon's reconciler (incremental validation, patched compile, the cheapest
    commit: set elements over netlink, else an nft script) applying `docs` in turn,
    inside the namespace; the modes it chose."""
    paths = []
    for i, doc in enumerate(docs):
        paths.append(tmp_path / f"doc{i}.json")
        paths[-1].write_text(json.dumps(doc))
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", KEEPER_SCRIPT, *map(str, paths)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def keeper_equals_full(ns: str, tmp_path: Path, docs: list[dict]) -> list[str]:
    """`docs` through the keeper (keeper_applies); the kernel then holds exactly what a
    full apply of the last one holds. The modes the keeper chose."""
    modes = keeper_applies(ns, tmp_path, docs)
    incremental, last = listing(ns), compiled(docs[-1])
    nft(ns, render_flush(last.owned), tmp_path)
    nft(ns, render_ruleset(last), tmp_path)
    assert incremental == listing(ns), modes
    nft(ns, render_flush(last.owned), tmp_path)
    return modes


@pytest.mark.parametrize("change", sorted(WEBSHOP_CHANGES))
def test_daemon_reconciler_leaves_what_a_full_apply_leaves(ns, tmp_path, change):
    """Old -> new, and old -> new -> old, through the keeper: the kernel then holds
    exactly what a full apply of the last document holds (the element path included)."""
    new = _mutated(WEBSHOP_CHANGES[change])
    for docs in ([WEBSHOP, new], [WEBSHOP, new, WEBSHOP]):
        modes = keeper_equals_full(ns, tmp_path, docs)
        assert modes[0] == "full" and set(modes[1:]) <= {"elements", "incremental", "incremental over netlink"}, modes
        if change == "remote joins":                 # a member: the shared sets only
            assert set(modes[1:]) == {"elements"}, modes
        if change == "rule port":       # small lists: plain rules, refilled over netlink
            assert set(modes[1:]) == {"incremental over netlink"}, modes
        if change in ("rule added", "policy flipped"):      # a new verdict chain: an nft script
            assert set(modes[1:]) == {"incremental"}, modes


@pytest.mark.skipif(not GEN.exists(), reason="gen-config not available")
def test_daemon_reconciler_on_generated_configs(ns, tmp_path):
    """Random rule edits and, in turn, memberships of remote instances (element changes of
    the shared group sets) through the keeper, compared with a full apply after each."""
    doc = json.loads(subprocess.run([str(GEN), "--interfaces", "20", "--rules", "10", "--remote", "10",
                                     "--seed", "11"], capture_output=True, text=True, check=True).stdout)
    rnd, docs = random.Random(11), [doc]
    for step in range(4):
        new = copy.deepcopy(docs[-1])
        if step % 2 == 0:
            rule = rnd.choice([r for g in new["security_groups"] for r in g["rules"]])
            rule["priority"] = rnd.randint(1, 100)
        else:
            remote = rnd.choice([i for i in new["instances"] if i.get("host") not in (None, new.get("host"))])
            remote["security_groups"] = [g["id"] for g in new["security_groups"]
                                         if g["id"] not in remote["security_groups"]][:1]
        docs.append(new)
    for end in range(2, len(docs) + 1):
        modes = keeper_equals_full(ns, tmp_path, docs[:end])
    assert modes[2] == modes[4] == "elements", modes          # the membership changes


def _region_doc(port: int) -> dict:
    """One local instance whose ingress list is 24 CIDR lines of one group and no group
    peer: a region verdict map (more than INLINE_MAX boxes), no member path."""
    rules = [{"id": f"r{i}", "direction": "ingress", "policy": "accept" if i % 3 else "drop", "priority": 1 + i,
              "protocol": "tcp", "port_range": f"{1000 + i}/{1000 + i}", "source_cidr": f"198.51.{i}.0/24"}
             for i in range(24)]
    rules[5]["port_range"] = f"{port}/{port}"
    return {"host": "hv-inc", "security_groups": [{"id": "sg-r", "type": "custom", "rules": rules}],
            "instances": [{"id": "i1", "host": "hv-inc", "security_groups": ["sg-r"],
                           "interfaces": [{"name": "tap-r1", "addresses": ["10.0.0.5"]}]}]}


def test_a_rule_edit_inside_a_region_map_is_an_element_change(ns, tmp_path):
    """Issue 13: a CIDR line moving port changes only `box : goto v_<n>` elements of the
    region map; the keeper commits them over netlink (goto verdicts encoded as libnftnl
    does), and the kernel then holds what a full apply holds."""
    docs = [_region_doc(2000), _region_doc(2001), _region_doc(2000)]
    for end in (2, 3):
        modes = keeper_equals_full(ns, tmp_path, docs[:end])
        assert modes[0] == "full" and set(modes[1:]) == {"elements"}, modes


def _member_doc(port: int) -> dict:
    """_region_doc plus a line naming a group (every protocol, after the edited line): the
    edited CIDR line is then also a plain rule of the member path."""
    doc = _region_doc(port)
    doc["security_groups"][0]["rules"].append({"id": "from-peers", "direction": "ingress", "policy": "drop",
                                               "priority": 7, "protocol": "all", "source_group": "sg-p"})
    doc["security_groups"].append({"id": "sg-p", "type": "custom", "rules": []})
    doc["instances"].append({"id": "remote", "host": "elsewhere", "security_groups": ["sg-p"],
                             "interfaces": [{"name": "r0", "addresses": ["198.51.5.9"]}]})
    return doc


def test_a_rule_edit_in_a_member_path_is_one_netlink_transaction(ns, tmp_path):
    """Issue 13: a CIDR line moving port changes region-map elements and refills the
    member path that holds it; the keeper commits both in ONE netlink batch (no nft
    script), and the kernel then holds what a full apply holds."""
    docs = [_member_doc(2000), _member_doc(2001), _member_doc(2000)]
    rs = compiled(docs[1])
    member_path = next(c for t in rs.tables for c in t.chains if c.name.endswith("_m4"))
    assert any("th dport 2001" in r for r in member_path.rules), member_path.rules
    for end in (2, 3):
        modes = keeper_equals_full(ns, tmp_path, docs[:end])
        assert modes[0] == "full" and set(modes[1:]) == {"incremental over netlink"}, modes
