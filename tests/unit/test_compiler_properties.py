"""The compiler's main property: on random documents, packets and frames, the compiled
ruleset (judged by tests/compile_sim.py) gives the verdict of the semantics engine
(agent.policy.effective / agent.policy.guard); generated rulesets are well formed.
Golden rulesets and structure: tests/unit/test_compiler_compile.py."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import replace
from unittest import mock

from bridge_sim import BridgeGuardSim
from compile_helpers import (
    by_key,
    HOST,
    _chain,
    assert_block_structure,
    assert_sets_disjoint,
    check_equivalence,
    documents,
    frames,
    packets,
    policy_chain_of,
)
from compile_sim import inet_table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from profiles import examples

import agent.compiler.compile as compile_mod
import agent.compiler.paint as paint_mod
import agent.compiler.runs as compile_runs
from agent.compiler.compile import build_ruleset
from agent.compiler.render import render_ruleset
from agent.model.objects import INGRESS
from agent.model.validate import validate_document
from agent.policy.effective import (
    Packet,
)
from agent.policy.guard import frame_verdict


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(st.data())
def test_compiled_verdict_equals_semantics(data):
    document = data.draw(documents(), label="document")
    pkts = data.draw(st.lists(packets(document), min_size=10, max_size=30), label="packets")
    state = validate_document(document, host=HOST)
    rs = build_ruleset(state)
    assert rs.errors == ()
    assert check_equivalence(state, rs, pkts) > 0


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(st.data())
def test_verdicts_survive_colliding_names(data):
    """Make names collide: `safe_name` cut to 5 characters. The compiler must still
    give each interface, policy and group its own chain or set (and the same verdicts)."""
    document = data.draw(documents(), label="document")
    pkts = data.draw(st.lists(packets(document), min_size=5, max_size=20), label="packets")
    state = validate_document(document, host=HOST)
    with mock.patch.object(compile_mod, "safe_name",
                           lambda text: re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:5]):
        rs = build_ruleset(state)
    assert rs.errors == ()
    assert check_equivalence(state, rs, pkts) > 0


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(st.data())
def test_peer_heavy_lists_judge_like_explain(data):
    """Long lists where group and prefix-list peers (shared sets: the member path) are
    interleaved with CIDR lines of either verdict at every priority, with the member
    path's plain-rule / map threshold and the hashed points map forced small, so that
    every form the compiler has (runs as maps and as plain rules, points, regions) is
    judged against the semantics engine."""
    document = data.draw(documents(peer_heavy=True), label="document")
    pkts = data.draw(st.lists(packets(document), min_size=10, max_size=30), label="packets")
    state = validate_document(document, host=HOST)
    inline = data.draw(st.sampled_from([0, 1, 3]), label="INLINE_MAX")
    points = data.draw(st.sampled_from([1, 2, 256]), label="POINTS_MIN")
    span = data.draw(st.sampled_from([1, 3, 16]), label="POINTS_SPAN")     # 3: "79/81" just fits
    wide = data.draw(st.sampled_from([0, 1, 8]), label="WIDE_MAX")
    with mock.patch.object(compile_runs, "INLINE_MAX", inline), mock.patch.object(compile_runs, "POINTS_MIN", points), \
            mock.patch.object(compile_runs, "POINTS_SPAN", span), mock.patch.object(paint_mod, "WIDE_MAX", wide):
        rs = build_ruleset(state)
    assert rs.errors == ()
    assert check_equivalence(state, rs, pkts) > 0


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(st.data())
def test_point_heavy_lists_judge_like_explain(data):
    """Lists dense in point lines (one address, tcp/udp, a few destination ports) among
    wide CIDR lines of either verdict, some restricted to source ports, and peers: with
    the hashed points map forced on (POINTS_MIN 1-2) and POINTS_SPAN at 1, 3 ("79/81"
    just fits) or 16, every point's verdict and deciding line are the semantics engine's."""
    document = data.draw(documents(peer_heavy=data.draw(st.booleans()), points_heavy=True), label="document")
    pkts = data.draw(st.lists(packets(document), min_size=10, max_size=30), label="packets")
    state = validate_document(document, host=HOST)
    points = data.draw(st.sampled_from([1, 2]), label="POINTS_MIN")
    span = data.draw(st.sampled_from([1, 3, 16]), label="POINTS_SPAN")
    inline = data.draw(st.sampled_from([0, 16]), label="INLINE_MAX")
    with mock.patch.object(compile_runs, "INLINE_MAX", inline), mock.patch.object(compile_runs, "POINTS_MIN", points), \
            mock.patch.object(compile_runs, "POINTS_SPAN", span):
        rs = build_ruleset(state)
    assert rs.errors == ()
    assert check_equivalence(state, rs, pkts) > 0


_ADDRS = [(0, 0), (3, 3), (5, 5), (0, 3), (2, 7), (0, 8)]
_SPORTS = [(0, 65535), (0, 9), (10, 20)]
_DPORTS = [(0, 65535), (5, 5), (4, 6), (3, 10), (0, 3), (6, 6), (2, 2)]


@st.composite
def _point_items(draw):
    """Lines as boxes, half of them point lines or nearly (one address, tcp/udp, a few ports)."""
    with_sport = draw(st.booleans())
    items = []
    for label in range(draw(st.integers(1, 12))):
        if draw(st.booleans()):
            box = (draw(st.sampled_from(_ADDRS[:3])), draw(st.sampled_from([(6, 6), (17, 17)])))
            box += ((0, 65535),) * with_sport + (draw(st.sampled_from(_DPORTS[1:])),)
        else:
            box = (draw(st.sampled_from(_ADDRS)), draw(st.sampled_from([(6, 6), (17, 17), (1, 1), (0, 255)])))
            box += (draw(st.sampled_from(_SPORTS)),) * with_sport + (draw(st.sampled_from(_DPORTS)),)
        items.append((box, label))
    return items, with_sport


@settings(max_examples=examples(300), deadline=None)
@given(_point_items(), st.sampled_from([1, 3, 8]))
def test_build_points_keeps_the_first_match(case, span):
    """build_points alone, on every packet of a small space: the hashed map (looked up
    first, keyed by address, protocol and destination port) and then the first match
    among the lines it leaves decide what the first match of the whole list decides."""
    items, with_sport = case
    with mock.patch.object(compile_runs, "POINTS_MIN", 1), mock.patch.object(compile_runs, "POINTS_SPAN", span):
        hashed, left = compile_runs.build_points(items, with_sport, True)
    def first(lines, pkt):
        return next((label for bx, label in lines if all(lo <= x <= hi for (lo, hi), x in zip(bx, pkt))), None)
    for addr in range(10):
        for proto in (1, 6, 17):
            for sport in ((0, 9, 10, 21) if with_sport else (None,)):
                for dport in range(12):
                    pkt = (addr, proto) + (sport,) * with_sport + (dport,)
                    got = hashed.get((addr, proto, dport)) if proto != 1 else None
                    assert (got if got is not None else first(left, pkt)) == first(items, pkt), (pkt, hashed, left)


def _one_list(rules: list[dict]) -> tuple:
    """`rules` as one group's ingress list on one interface: the state, the ruleset, its
    sets by name and the policy chain's points map."""
    document = {"host": HOST, "security_groups": [{"id": "sg", "rules": rules}],
                "instances": [{"id": "x", "security_groups": ["sg"],
                               "interfaces": [{"name": "tap-x", "addresses": ["10.0.0.1"]}]}]}
    state = validate_document(document, host=HOST)
    rs = build_ruleset(state)
    sets = {s.name: s for s in inet_table(rs).sets}
    (points,) = [s for name, s in sets.items() if name.endswith("_p4")]
    return state, rs, sets, points


def test_points_map_decides_single_points_before_the_region():
    """A blocklist of single points (one address, udp, one port) before a wide accept:
    the points go into the hashed map with their first-match verdicts, and the region
    keeps only what the wide line accepts; verdicts are the semantics engine's."""
    rules = [{"direction": "ingress", "protocol": "udp", "port_range": "9/9", "policy": "drop",
              "priority": 1, "source_cidr": f"10.1.{i // 250}.{i % 250 + 1}/32"} for i in range(300)]
    rules += [{"direction": "ingress", "protocol": "udp", "port_range": "9/9", "policy": "accept",
               "priority": 1, "source_cidr": "10.1.0.7/32"},                  # shadowed by a drop
              {"direction": "ingress", "protocol": "udp", "port_range": "1/65535", "policy": "accept",
               "priority": 2, "source_cidr": "0.0.0.0/0"}]
    state, rs, sets, points = _one_list(rules)
    named = by_key(rs, points.elements)
    assert len(points.elements) == 300 and any(re.fullmatch(r"10\.1\.0\.7 \. 17 \. 9 : => ingress/user/sg/\S+/1/drop", e)
                                               for e in named), named
    assert not [name for name in sets if name.startswith("pin_") and name.endswith("_4")]   # no region set:
    chain = _chain(rs, policy_chain_of(rs, "tap-x", INGRESS))                     # one box, one plain rule
    assert any(re.fullmatch(r"meta nfproto ipv4 meta l4proto 17 th dport 1-65535 => ingress/user/sg/\S+/2/accept", r)
               for r in by_key(rs, chain.rules)), chain.rules
    pkts = [Packet(ipaddress.ip_address(src), ipaddress.ip_address("10.0.0.1"), 17, 40000, port)
            for src in ("10.1.0.7", "10.1.1.50", "10.1.1.51", "10.9.9.9") for port in (8, 9, 10)]
    assert check_equivalence(state, rs, pkts) > 0


def test_points_map_expands_small_port_ranges():
    """Point lines with a destination port range of at most POINTS_SPAN ports are expanded
    into their points; each point takes the verdict of the list's first match there: an
    earlier wide drop of the other verdict wins where it covers a point, an earlier wide
    line restricted to some source ports leaves its points to the region (the point line
    stays there whole), a range one port longer than POINTS_SPAN is not expanded."""
    rules = [{"direction": "ingress", "protocol": "udp", "port_range": f"100/{100 + i % 3}", "policy": "accept",
              "priority": 5, "source_cidr": f"10.1.{i // 250}.{i % 250 + 1}/32"} for i in range(300)]
    rules += [{"direction": "ingress", "protocol": "udp", "port_range": "101/101", "policy": "drop",
               "priority": 1, "source_cidr": "10.1.0.0/28"},                 # 10.1.0.1-15 at 101: drop
              {"direction": "ingress", "protocol": "udp", "port_range": "102/102", "policy": "drop",
               "priority": 1, "source_port_range": "1000/2000", "source_cidr": "10.1.0.16/28"},
              {"direction": "ingress", "protocol": "udp", "port_range": f"100/{100 + compile_runs.POINTS_SPAN}",
               "policy": "accept", "priority": 5, "source_cidr": "10.2.0.1/32"},   # one port too many
              {"direction": "ingress", "protocol": "udp", "port_range": "1/65535", "policy": "drop",
               "priority": 10, "source_cidr": "0.0.0.0/0"}]
    state, rs, sets, points = _one_list(rules)
    named = set(by_key(rs, points.elements))
    keys = {e.split(" : ")[0]: e.split(" : ")[1] for e in named}
    assert keys["10.1.0.2 . 17 . 100"].endswith("/5/accept") and keys["10.1.0.2 . 17 . 101"].endswith("/1/drop")
    assert keys["10.1.0.18 . 17 . 100"].endswith("/5/accept") and "10.1.0.18 . 17 . 102" not in keys
    assert keys["10.1.1.50 . 17 . 102"].endswith("/5/accept") and not [k for k in keys if k.startswith("10.2.")]
    # 300 lines, 1-3 ports each: 600 points, less those at 102 behind the sport-restricted drop
    assert len(points.elements) == 600 - sum(1 for i in range(15, 31) if i % 3 == 2)
    (region,) = [s for name, s in sets.items() if name.endswith("_4") and not name.endswith("_p4")]
    accepts = [e.split(" . ")[0] for e in by_key(rs, region.elements) if e.endswith("/5/accept")]
    assert "10.1.0.18" in accepts and not [a for a in accepts if a.startswith("10.1.0.1") and a != "10.1.0.18"]
    pkts = [Packet(ipaddress.ip_address(src), ipaddress.ip_address("10.0.0.1"), 17, sport, port)
            for src in ("10.1.0.2", "10.1.0.3", "10.1.0.18", "10.1.0.19", "10.1.1.50", "10.2.0.1", "10.9.9.9")
            for sport in (500, 1500) for port in (99, 100, 101, 102, 103, 116, 117)]
    assert check_equivalence(state, rs, pkts) > 0


def test_member_path_keeps_only_lines_that_can_decide_and_returns_to_the_region():
    """A member address matched by CIDR lines before, between and after the set lines:
    the member path (entered by `jump`) keeps the set lines and the CIDR line that
    overlaps a later set line; the others (a port no set line has, the lines after the
    last set line) are decided by the static path after the path returns. Verdicts and
    deciding lines are the semantics engine's."""
    def rule(prio: int, policy: str, ports: str, **peer: str) -> dict:
        return {"direction": "ingress", "protocol": "tcp", "port_range": ports, "policy": policy,
                "priority": prio, **peer}
    rules = [rule(1, "drop", "22/22", source_cidr="10.0.0.0/8"),          # no set line has port 22: left out
             rule(1, "accept", "70/90", source_cidr="10.5.0.0/16"),       # overlaps the set line: kept
             rule(2, "drop", "80/80", source_group="sg-peer"),
             rule(3, "accept", "80/80", source_cidr="10.5.0.0/16"),       # after the last set line: left out
             rule(3, "accept", "443/443", source_cidr="0.0.0.0/0")]       # after it too, and a wide line
    document = {"host": HOST, "security_groups": [{"id": "sg", "rules": rules}, {"id": "sg-peer", "rules": []}],
                "instances": [{"id": "x", "security_groups": ["sg"],
                               "interfaces": [{"name": "tap-x", "addresses": ["10.0.0.1"]}]},
                              {"id": "y", "host": "hv-02", "security_groups": ["sg-peer"],
                               "interfaces": [{"name": "tap-y", "addresses": ["10.5.0.5"]}]}]}
    state = validate_document(document, host=HOST)
    rs = build_ruleset(state)
    chain = _chain(rs, policy_chain_of(rs, "tap-x", INGRESS))
    (enter,) = [r for r in chain.rules if "@peers4" in r]
    member = _chain(rs, enter.split(" jump ")[1])
    assert len(member.rules) == 2 and "th dport 70-90" in member.rules[0] and "@grp4_sg-peer" in member.rules[1], \
        member.rules
    pkts = [Packet(ipaddress.ip_address(src), ipaddress.ip_address("10.0.0.1"), 6, 40000, port)
            for src in ("10.5.0.5", "10.5.0.6", "10.6.0.1", "192.0.2.1") for port in (22, 75, 80, 443, 444)]
    assert check_equivalence(state, rs, pkts) > 0


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(st.data())
def test_bridge_guard_equals_semantics(data):
    """The bridge table's first-hop guard (ARP, ethertypes, source MACs), compiled and
    simulated, == agent.policy.guard.frame_verdict, for every bridged port."""
    document = data.draw(documents(), label="document")
    state = validate_document(document, host=HOST)
    bridge = [t for t in build_ruleset(state).tables if t.family == "bridge"]
    ports = {n: nic for n, nic in state.local_interfaces.items() if nic.attachment == "bridged"}
    assert bool(bridge) == bool(ports or state.instance_interfaces)     # unknown ports: docs/fail-closed.md
    if not ports:
        return
    sim = BridgeGuardSim(bridge[0])
    for frame in data.draw(st.lists(frames(), min_size=5, max_size=20), label="frames"):
        for name, nic in sorted(ports.items()):
            # a frame from another MAC than the port's: the guard's MAC lines judge it
            frame_own = replace(frame, src_mac=nic.mac, arp_sha=nic.mac) if nic.mac else frame
            for f in (frame, frame_own):
                want = frame_verdict(nic, f, state.anti_spoofing) if nic.spoofing_guard else "pass"
                assert sim.judge(name, f) == want, (name, f, nic)


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(documents())
def test_generated_rulesets_are_well_formed(document):
    state = validate_document(document, host=HOST)
    rs = build_ruleset(state)
    assert_sets_disjoint(rs)
    assert_block_structure(state, rs)
    # deterministic: compiling twice renders the same bytes
    assert render_ruleset(build_ruleset(validate_document(document, host=HOST))) == render_ruleset(rs)

