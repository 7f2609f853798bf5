"""Property tests of the semantics engine (SPEC §3) and of validation (SPEC §4).

Documents are drawn over a small universe (three instances, a handful of addresses,
CIDRs and ports) so that rules and packets actually meet. Every property is checked on
a fixed battery of new-connection packets: both local interfaces, both directions, IPv4
and IPv6, tcp/udp/icmp/icmpv6/gre, peers inside and outside the groups.
"""
from __future__ import annotations

import copy
import ipaddress
import random
import re
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from profiles import examples

from agent.errors import InvalidInput
from agent.model.objects import DesiredState
from agent.model.validate import validate_document
from agent.policy.effective import Decision, Packet, build_effective_list, evaluate
from agent.policy.explain import render_show

HOST = "hv-01"
SETTINGS = settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- the universe ---------------------------------------------------------------------------
INSTANCES = [                           # id, interface, addresses, host
    ("i0", "tap0", ("10.0.0.1", "fd00::1"), None),
    ("i1", "tap1", ("10.0.0.2", "fd00::2"), HOST),
    ("i2", "tap2", ("10.0.0.3", "fd00::3"), "hv-02"),      # remote: lends its addresses only
]
LOCAL = ("tap0", "tap1")
PEERS = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "192.0.2.1", "fd00::1", "fd00::2", "fd00::3", "2001:db8::1")
CIDR4 = ("0.0.0.0/0", "10.0.0.0/30", "10.0.0.2/31", "10.0.0.1/32", "192.0.2.0/24")
CIDR6 = ("::/0", "fd00::/126", "fd00::2/127", "fd00::3/128", "2001:db8::/32")
PREFIX_LISTS = [{"id": "pl0", "entries": ["10.0.0.0/31", "192.0.2.0/24", "fd00::3/128"]},
                {"id": "pl1", "entries": ["2001:db8::/32", "10.0.0.3/32"]}]
PORTS = ("22/22", "80/80", "1/1024", "80/443", "443/65535", "53/53")
SPORTS = ("1/1024", "1024/65535", "40000/40000")
PRIORITIES = (1, 2, 3, 50, 100)
PROBES = (("tcp", 22, 40000), ("tcp", 80, 40000), ("tcp", 443, 1000), ("udp", 53, 40000),
          ("udp", 80, 1000), ("icmp", None, None), ("icmpv6", None, None), ("gre", None, None))
NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "gre": 47}


def packets() -> list[tuple[str, str, Packet]]:
    """(interface, direction, packet) for every probe, peer and local interface."""
    own = {name: addrs for _, name, addrs, _ in INSTANCES}
    out = []
    for nic in LOCAL:
        for peer in PEERS:
            version = ipaddress.ip_address(peer).version
            local = next(a for a in own[nic] if ipaddress.ip_address(a).version == version)
            for proto, dport, sport in PROBES:
                if (proto, version) in (("icmp", 6), ("icmpv6", 4)):
                    continue
                icmp_type = {"icmp": 8, "icmpv6": 128}.get(proto)
                for direction, (src, dst) in (("ingress", (peer, local)), ("egress", (local, peer))):
                    out.append((nic, direction, Packet(ipaddress.ip_address(src), ipaddress.ip_address(dst),
                                                       NUMBERS[proto], sport, dport, icmp_type)))
    return out


PACKETS = packets()


def decisions(state: DesiredState) -> list[Decision]:
    lists = {(nic, d): build_effective_list(state, nic, d) for nic in LOCAL for d in ("ingress", "egress")}
    return [evaluate(lists[(nic, d)], p) for nic, d, p in PACKETS]


def who(decision: Decision) -> tuple:
    """What decided: the line of the effective list, independent of its position."""
    e = decision.entry
    return (e.stage, e.kind, e.group_id, e.rule_id, e.description)


def verdicts(state: DesiredState) -> list[tuple[str, str]]:
    return [(d.verdict, d.entry.stage) for d in decisions(state)]


# --- strategies -----------------------------------------------------------------------------
@st.composite
def rules(draw, groups: list[str], enterprise: bool, rid: str) -> dict:
    direction = draw(st.sampled_from(("ingress", "egress")))
    protocol = draw(st.sampled_from(("tcp", "udp", "icmp", "icmpv6", "gre", "all")))
    side = "source" if direction == "ingress" else "dest"
    rule: dict[str, Any] = {"id": rid, "direction": direction, "protocol": protocol,
                            "policy": draw(st.sampled_from(("accept", "drop"))),
                            "priority": draw(st.sampled_from(PRIORITIES))}
    if protocol in ("tcp", "udp"):
        rule["port_range"] = draw(st.sampled_from(PORTS))
        if draw(st.booleans()) and draw(st.booleans()):
            rule["source_port_range"] = draw(st.sampled_from(SPORTS))
    kinds = ["cidr", "prefix_list"] + ([] if enterprise else ["group"])
    kind = draw(st.sampled_from(kinds))
    if kind == "cidr":
        pool = {"icmp": CIDR4, "icmpv6": CIDR6}.get(protocol, CIDR4 + CIDR6)
        rule[f"{side}_cidr"] = draw(st.sampled_from(pool))
    elif kind == "group":
        rule[f"{side}_group"] = draw(st.sampled_from(groups))
    else:
        rule[f"{side}_prefix_list"] = draw(st.sampled_from(("pl0", "pl1")))
    return rule


@st.composite
def documents(draw) -> dict:
    enterprise = draw(st.integers(0, 4)) == 0          # now and then an enterprise world
    ids = [f"g{i}" for i in range(draw(st.integers(1, 3)))]
    groups = []
    for gid in ids:
        gtype = "enterprise" if enterprise else draw(st.sampled_from(("custom", "default")))
        group: dict[str, Any] = {"id": gid, "type": gtype}
        if not enterprise:
            inner = draw(st.sampled_from(("accept", "drop", None)))
            if inner:
                group["inner_access"] = inner
        if gtype == "default":
            group["allow_http"] = draw(st.booleans())
            group["allow_https"] = draw(st.booleans())
        count = draw(st.integers(0, 6))
        group["rules"] = [draw(rules(ids, enterprise, f"{gid}-r{i}")) for i in range(count)]
        groups.append(group)
    instances = []
    for iid, nic, addrs, host in INSTANCES:
        member_of = draw(st.lists(st.sampled_from(ids), min_size=1, max_size=len(ids), unique=True))
        inst: dict[str, Any] = {"id": iid, "security_groups": member_of,
                                "interfaces": [{"name": nic, "addresses": list(addrs)}]}
        if host:
            inst["host"] = host
        instances.append(inst)
    doc = {"host": HOST, "prefix_lists": copy.deepcopy(PREFIX_LISTS), "security_groups": groups,
           "instances": instances}
    if draw(st.integers(0, 5)) == 0:
        doc["anti_spoofing"] = False
    return doc


def load(doc: dict) -> DesiredState:
    """The generator only makes valid documents; a rejection is a bug (of either side)."""
    return validate_document(copy.deepcopy(doc), host=HOST)


def shuffled(doc: dict, rnd: random.Random) -> dict:
    out = copy.deepcopy(doc)
    for key in ("security_groups", "instances", "prefix_lists"):
        rnd.shuffle(out[key])
    for g in out["security_groups"]:
        rnd.shuffle(g["rules"])
    for i in out["instances"]:
        rnd.shuffle(i["security_groups"])
        for nic in i["interfaces"]:
            rnd.shuffle(nic["addresses"])
    for pl in out["prefix_lists"]:
        rnd.shuffle(pl["entries"])
    return out


# --- properties -----------------------------------------------------------------------------
@SETTINGS
@given(documents(), st.randoms(use_true_random=False))
def test_verdict_independent_of_listing_order(doc: dict, rnd: random.Random) -> None:
    """Shuffling groups, each group's rules, instances, each instance's group list, the
    addresses and prefix-list entries changes no verdict, no deciding stage, and (for user
    rules) not which rule decides."""
    before = decisions(load(doc))
    after = decisions(load(shuffled(doc, rnd)))
    for (nic, d, p), x, y in zip(PACKETS, before, after):
        assert (x.verdict, x.entry.stage) == (y.verdict, y.entry.stage), (nic, d, p)
        if x.entry.stage == "user":
            assert who(x) == who(y), (nic, d, p)


@st.composite
def doc_and_new_rule(draw, policy: str) -> tuple[dict, int, dict]:
    doc = draw(documents())
    groups = doc["security_groups"]
    enterprise = groups[0]["type"] == "enterprise"
    index = draw(st.integers(0, len(groups) - 1))
    new = draw(rules([g["id"] for g in groups], enterprise, "added"))
    new["policy"] = policy
    return doc, index, new


def with_rule(doc: dict, index: int, new: dict) -> dict:
    out = copy.deepcopy(doc)
    out["security_groups"][index]["rules"].append(new)
    return out


@SETTINGS
@given(doc_and_new_rule("drop"))
def test_adding_a_drop_rule_never_accepts_more(case: tuple[dict, int, dict]) -> None:
    """Adding a drop rule R: every packet dropped before is still dropped; every packet
    whose verdict changed is now decided by R (nothing else moves)."""
    doc, index, new = case
    gid = doc["security_groups"][index]["id"]
    before, after = decisions(load(doc)), decisions(load(with_rule(doc, index, new)))
    for (nic, d, p), x, y in zip(PACKETS, before, after):
        if x.verdict == "drop":
            assert y.verdict == "drop", (nic, d, p, who(y))
        assert who(y) == who(x) or (y.entry.group_id, y.entry.rule_id) == (gid, "added"), (nic, d, p)


@SETTINGS
@given(doc_and_new_rule("accept"))
def test_adding_an_accept_rule_never_drops_more(case: tuple[dict, int, dict]) -> None:
    """Adding an accept rule R: every packet accepted before is still accepted; every
    packet whose verdict changed is now decided by R."""
    doc, index, new = case
    gid = doc["security_groups"][index]["id"]
    before, after = decisions(load(doc)), decisions(load(with_rule(doc, index, new)))
    for (nic, d, p), x, y in zip(PACKETS, before, after):
        if x.verdict == "accept":
            assert y.verdict == "accept", (nic, d, p, who(y))
        assert who(y) == who(x) or (y.entry.group_id, y.entry.rule_id) == (gid, "added"), (nic, d, p)


@st.composite
def doc_and_rule_to_move(draw) -> tuple[dict, int, int, int]:
    doc = draw(documents())
    candidates = [(gi, ri) for gi, g in enumerate(doc["security_groups"]) for ri in range(len(g["rules"]))]
    assume(candidates)
    gi, ri = draw(st.sampled_from(candidates))
    priority = draw(st.integers(1, 100))
    assume(priority != doc["security_groups"][gi]["rules"][ri]["priority"])
    return doc, gi, ri, priority


@SETTINGS
@given(doc_and_rule_to_move())
def test_changing_a_rules_priority_moves_only_that_rule(case: tuple[dict, int, int, int]) -> None:
    """Let R be a user rule and P a packet, and change only R's priority number.

    Promotion (smaller number): if R decided P, R still decides P (it cannot lose to a
    rule it beat, whatever that rule's policy); if R did not, P is decided as before or
    by R.  Demotion (larger number): if R did not decide P, nothing changes for P; if it
    did, P is decided by R or by some other line.  In both cases P's decision is the old
    one or R's: moving one line of a first-match list only reorders that line."""
    doc, gi, ri, priority = case
    group = doc["security_groups"][gi]
    rule = group["rules"][ri]
    r_id = (group["id"], rule["id"])
    moved = copy.deepcopy(doc)
    moved["security_groups"][gi]["rules"][ri]["priority"] = priority
    promoted = priority < rule["priority"]
    before, after = decisions(load(doc)), decisions(load(moved))
    for (nic, d, p), x, y in zip(PACKETS, before, after):
        x_is_r = (x.entry.group_id, x.entry.rule_id) == r_id
        y_is_r = (y.entry.group_id, y.entry.rule_id) == r_id
        assert who(y) == who(x) or y_is_r or x_is_r, (nic, d, p)
        if promoted and x_is_r:
            assert y_is_r, (nic, d, p, who(y))
        if not promoted and not x_is_r:
            assert who(y) == who(x), (nic, d, p)


@SETTINGS
@given(documents())
def test_generated_documents_render(doc: dict) -> None:
    """Sanity of the generator and of `show`: every local interface renders, ending with
    the final drop, and every decision indexes the line that made it."""
    state = load(doc)
    for nic in LOCAL:
        text = render_show(state, nic)
        assert text.count("final       drop") == 2
    for nic, d, p in PACKETS[:40]:
        elist = build_effective_list(state, nic, d)
        decision = evaluate(elist, p)
        assert elist.entries[decision.index] is decision.entry


# --- validation never crashes ---------------------------------------------------------------
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(("", " ", "tcp", "ingress", "g0", "pl0", "10.0.0.1", "10.0.0.0/8", "::/0", "1/2",
                       "-1/-1", "80/22", "internet", "enterprise", "classic", "tap0", "hv-01", "x" * 20,
                       "a\nb", " g0 ", "TCP"))
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ("id", "rules", "direction", "protocol", "port_range", "source_cidr", "dest_group", "host",
         "security_groups", "interfaces", "name", "addresses", "nic_type", "type", "network")), inner,
        max_size=3),
    max_leaves=6)


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, prefix + (i,))
    return out


def replace(doc: dict, path: tuple, value: Any) -> dict:
    out = copy.deepcopy(doc)
    node = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


ERROR_LINE = re.compile(r"^(\S.*: )?\S.*: \S.*$")


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), st.data())
def test_validation_reports_never_crashes(doc: dict, data: st.DataObject) -> None:
    """Any value in any place: either InvalidInput with one `path: value: message` line
    per error, or a state that keeps the promises validation makes (unique ids and local
    interface names, every reference resolved); never another exception."""
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(paths(doc)))
        doc = replace(doc, where, data.draw(JUNK))
    try:
        state = validate_document(doc, host=HOST)
    except InvalidInput as exc:
        assert exc.errors
        for err in exc.errors:
            line = str(err)
            assert "\n" not in line and ERROR_LINE.match(line), line
        return
    assert len(state.group_by_id) == len(state.groups), "duplicate group ids passed validation"
    assert len(state.instance_by_id) == len(state.instances), "duplicate instance ids passed validation"
    local_names = [n.name for i in state.local_instances for n in i.interfaces]
    assert len(local_names) == len(set(local_names)), "duplicate local interface names passed validation"
    known = set(state.group_by_id)
    assert all(set(i.groups) <= known for i in state.instances)
    assert all(r.peer.value in known for g in state.groups for r in g.rules if r.peer.kind == "group")
    for nic in state.local_interfaces:
        for d in ("ingress", "egress"):
            build_effective_list(state, nic, d)
        render_show(state, nic)


@settings(max_examples=examples(60), deadline=None)
@given(JUNK)
def test_validation_of_any_top_level(value: Any) -> None:
    try:
        validate_document(value, host=HOST)
    except InvalidInput as exc:
        assert exc.errors
