"""The compiler: golden rulesets, compiled verdicts == semantics engine verdicts (the
main property), structural invariants of the blocks design, fail-closed compilation,
and (root only) the kernel accepting every golden ruleset.

The reference is `agent.policy.effective` (build_effective_list / evaluate); the compiled side
is judged by `tests/compile_sim.py`, a strict interpreter of the emitted nft rules.
Regenerate golden files with `UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_compile.py`
and read the diff before keeping it.
"""
from __future__ import annotations

import ipaddress
import itertools
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agent.compiler.compile as compile_mod
import agent.compiler.runs as compile_runs
from agent.compiler.boxes import intersect
from agent.compiler.compile import Ruleset, build_ruleset, interface_chain_name
from agent.model.objects import DIRECTIONS, EGRESS, INGRESS, DesiredState
from agent.policy.effective import DEFAULTS, USER, Packet, build_effective_list, evaluate
from agent.policy.guard import ETHER_ARP, ETHER_IP, ETHER_IP6, Frame, frame_verdict
from agent.compiler.render import render_ruleset
from agent.model.validate import load_state, validate_document
from bridge_sim import BridgeGuardSim
from compile_sim import Simulator, UnknownRule, inet_table, parse_rule, parse_set

HOST = "hv-01"
GOLDEN = Path(__file__).parent / "golden"
GOLDEN_NAMES = sorted(p.stem for p in GOLDEN.glob("*.yaml"))


# ------------------------------------------------------------------ helpers

def golden_state(name: str) -> DesiredState:
    return load_state(GOLDEN / f"{name}.yaml", host=HOST)


def policy_chain_of(rs: Ruleset, iface: str, direction: str) -> str:
    chain = _chain(rs, interface_chain_name_of(iface, direction))
    last = chain.rules[-1]
    assert last.startswith("goto "), chain
    return last.split()[1]


def interface_chain_name_of(iface: str, direction: str) -> str:
    return interface_chain_name(SimpleNamespace(name=iface), direction)  # type: ignore[arg-type]


def _chain(rs: Ruleset, name: str):
    (table,) = [t for t in rs.tables if t.family == "inet"]
    (chain,) = [c for c in table.chains if c.name == name]
    return chain


def assert_sets_disjoint(rs: Ruleset) -> None:
    """The kernel rejects overlapping elements in an interval set: check every pair."""
    for table in rs.tables:
        for s in table.sets:
            if s.map_to is not None:
                continue
            parsed = parse_set(s)
            assert len(set(parsed.elements)) == len(parsed.elements), f"duplicates in {s.name}"
            if not s.interval:
                continue
            for a, b in itertools.combinations(parsed.elements, 2):
                assert intersect(a, b) is None, f"{s.name}: {a} overlaps {b}"


def _runs(items) -> int:
    return sum(1 for _ in itertools.groupby(items))


def assert_block_structure(state: DesiredState, rs: Ruleset) -> None:
    """Per policy chain: intra-group accepts, then stages 4-5 as a bounded number of
    lookups per IP version whatever the number of rules: the member path's `goto` (only
    when some line names a group or prefix list), the hashed points map, and ONE region
    lookup (the first-match accept region; or a bare `meta nfproto ... accept` / `accept`
    when the region is everything; or, for a region of at most INLINE_MAX boxes, one
    plain rule per box); then the final drop. The member path has at most one
    rule per line of its version and ends with the final drop."""
    for iface in sorted(state.local_interfaces):
        for direction in DIRECTIONS:
            elist = build_effective_list(state, iface, direction)
            chain = _chain(rs, policy_chain_of(rs, iface, direction))
            rules = list(chain.rules)
            assert rules[-1] == "drop"
            is_intra = [bool(re.fullmatch(r"ip6? [sd]addr @grp[46]_\S+ accept", r)) for r in rules[:-1]]
            intra = sum(is_intra)
            assert is_intra == [True] * intra + [False] * (len(is_intra) - intra), chain.name
            assert intra == 2 * sum(e.stage == "intra-group" for e in elist.entries)
            body = rules[intra:-1]
            dynamic = [e for e in elist.entries if e.stage == "user" and e.peer.kind != "cidr"]
            kinds = []
            for r in body:
                m = re.fullmatch(r"(ip6?) [sd]addr @peers[46] goto (\S+_m[46])", r)
                if m:
                    assert dynamic, (chain.name, r)
                    kinds.append((m[1], "members"))
                    member = list(_chain(rs, m[2]).rules)
                    assert member[-1] == "drop" and len(member) - 1 <= len(elist.entries), (m[2], member)
                    continue
                m = re.fullmatch(r"(ip6?) [sd]addr \. meta l4proto \. th dport vmap @\S+_p[46]", r)
                if m:
                    kinds.append((m[1], "points"))
                    continue
                assert r.split()[-1] == "accept", (chain.name, body)
                family = r.split()[0] if not r.startswith("meta") else "ip" + ("6" if "ipv6" in r else "")
                kinds.append((family, "region" if "@" in r else "region (plain rules)"))
            plain = [k for k in kinds if k[1] == "region (plain rules)"]
            assert all(plain.count(k) <= compile_runs.INLINE_MAX for k in plain), (chain.name, body)
            once = [k for k in kinds if k[1] != "region (plain rules)"]
            assert len(once) == len(set(once)), (chain.name, body)
            assert not any((f, "region") in once and (f, "region (plain rules)") in plain for f in ("ip", "ip6"))


# ------------------------------------------------------------------ (a) golden rulesets

@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_ruleset(name):
    text = render_ruleset(build_ruleset(golden_state(name)))
    path = GOLDEN / f"{name}.nft"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; run with UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"{name}: rendered ruleset differs from {path}"


def test_golden_files_are_complete():
    assert {"webshop", "classic", "enterprise", "deny_first", "prefix_lists", "bridged"} <= set(GOLDEN_NAMES)
    assert sorted(p.stem for p in GOLDEN.glob("*.nft")) == GOLDEN_NAMES


def _pool_packets(state: DesiredState) -> list[Packet]:
    """Every pair of interesting addresses x a few protocols/ports: small documents
    make this exhaustive enough to catch a wrong boundary."""
    addrs: set = set()
    for inst in state.instances:
        for nic in inst.interfaces:
            addrs |= set(nic.addresses)
    nets = [ipaddress.ip_network(r.peer.value) for g in state.groups for r in g.rules
            if r.peer.kind == "cidr"]
    nets += [n for _, entries in state.prefix_lists for n in entries]
    for n in nets:
        addrs |= {n.network_address, n.broadcast_address}
        cls = ipaddress.IPv4Address if n.version == 4 else ipaddress.IPv6Address
        for a in (int(n.network_address) - 1, int(n.broadcast_address) + 1):
            if 0 <= a < 2 ** n.max_prefixlen:
                addrs.add(cls(a))
    addrs |= {ipaddress.ip_address(a) for a in ("8.8.8.8", "2001:db8:ffff::1", "fe80::1")}
    ports = sorted({p for g in state.groups for r in g.rules for pr in (r.ports, r.sports) if pr
                    for p in (pr.lo - 1, pr.lo, pr.hi, pr.hi + 1)} | {22, 80, 443, 3389, 40000})
    ports = [p for p in ports if 0 <= p <= 65535]
    out = []
    for src, dst in itertools.product(sorted(addrs, key=lambda a: (a.version, a)), repeat=2):
        if src.version != dst.version:
            continue
        for proto in (6, 17):
            for dport in ports:
                out.append(Packet(src, dst, proto, 40000, dport))
            out.append(Packet(src, dst, proto, 1000, 80))
        out.append(Packet(src, dst, 1 if src.version == 4 else 58, icmp_type=8 if src.version == 4 else 128))
        out.append(Packet(src, dst, 47))
    return out


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_verdicts_match_semantics(name):
    state = golden_state(name)
    rs = build_ruleset(state)
    assert rs.errors == ()
    sim = Simulator(rs)
    packets = _pool_packets(state)
    checked = 0
    for iface, nic in sorted(state.local_interfaces.items()):
        for direction in DIRECTIONS:
            elist = build_effective_list(state, iface, direction)
            for p in packets:
                if direction == EGRESS:     # get past anti-spoofing too, where possible
                    own = [a for a in nic.addresses if a.version == p.src.version]
                    variants = [p] + ([Packet(own[0], p.dst, p.protocol, p.sport, p.dport,
                                              p.icmp_type)] if own else [])
                else:
                    variants = [p]
                for q in variants:
                    want = evaluate(elist, q).verdict
                    got = sim.judge(iface, direction, q)
                    assert got.verdict == want, (iface, direction, q, got.trace)
                    checked += 1
    assert checked > 100


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_structure(name):
    state = golden_state(name)
    rs = build_ruleset(state)
    assert_sets_disjoint(rs)
    assert_block_structure(state, rs)


# ------------------------------------------------------------------ (b) the main property

V4_MEMBERS = [f"10.0.0.{i}" for i in range(1, 9)] + ["10.0.1.1", "10.0.1.200", "192.168.1.1"]
V6_MEMBERS = [f"fd00::{i}" for i in range(1, 9)] + ["fd00:1::1", "fd00:1::ffff"]
V4_CIDRS = ["0.0.0.0/0", "10.0.0.0/8", "10.0.0.0/24", "10.0.0.0/30", "10.0.0.4/31",
            "10.0.0.5/32", "10.0.1.0/24", "10.0.0.8/29", "192.168.0.0/16", "11.0.0.0/8"]
V6_CIDRS = ["::/0", "fd00::/64", "fd00::/126", "fd00::4/127", "fd00::5/128", "fd00:1::/64",
            "fd00::/8", "2001:db8::/32"]
V4_EXTRA = ["0.0.0.0", "255.255.255.255", "9.255.255.255", "10.0.0.0", "10.0.0.3", "10.0.0.7",
            "10.0.0.255", "10.0.1.0", "10.255.255.255", "11.0.0.0", "8.8.8.8", "192.168.255.255"]
V6_EXTRA = ["::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fd00::", "fd00::3", "fd00::7",
            "fd00::ffff:ffff:ffff:ffff", "fd00:1::", "fe80::1", "2001:db8::1", "fcff:ffff::1"]
PORT_RANGES = ["1/65535", "80/80", "22/22", "79/81", "1/1023", "1024/65535", "443/443",
               "53/53", "80/443", "65535/65535", "1/1"]
PORT_EDGES = [0, 1, 2, 21, 22, 23, 52, 53, 54, 78, 79, 80, 81, 82, 442, 443, 444, 1022, 1023,
              1024, 1025, 3389, 40000, 65534, 65535]
PRIORITIES = [1, 1, 2, 5, 100]
VIPS = ["10.0.2.100", "10.0.2.97", "fd00:2::100", "fd00:2::7"]     # allowed addresses, not members
ALLOWED = ["10.0.2.100", "10.0.2.96/28", {"address": "10.0.2.100", "mac": "02:00:00:00:00:99"},
           "fd00:2::100", "fd00:2::/124", {"address": "fd00:2::100/128", "mac": "52:54:00:00:00:00"}]
DHCP_PORTS = [67, 68, 546, 547]


def _cidr_for(protocol: str):
    pool = V4_CIDRS if protocol == "icmp" else V6_CIDRS if protocol == "icmpv6" else V4_CIDRS + V6_CIDRS
    return st.sampled_from(pool)


@st.composite
def rules(draw, network: str, basic_groups: list[str], prefix_lists: list[str], peer_heavy: bool = False):
    direction = draw(st.sampled_from(["ingress", "egress"]))
    protocol = draw(st.sampled_from(["tcp", "udp", "icmp", "icmpv6", "gre", "all"]))
    side = "source" if direction == "ingress" else "dest"
    r = {"direction": direction, "protocol": protocol,
         "policy": draw(st.sampled_from(["accept", "drop"])),
         "priority": draw(st.sampled_from(PRIORITIES))}
    if protocol in ("tcp", "udp"):
        r["port_range"] = draw(st.sampled_from(PORT_RANGES))
        if draw(st.booleans()):
            r["source_port_range"] = draw(st.sampled_from(PORT_RANGES))
    kinds = ["cidr", "cidr"] + ["group"] * bool(basic_groups) * (1 + 2 * peer_heavy) + \
        ["prefix_list"] * bool(prefix_lists) * (1 + peer_heavy)
    kind = draw(st.sampled_from(kinds))
    if kind == "cidr":
        r[f"{side}_cidr"] = draw(_cidr_for(protocol))
    elif kind == "group":
        r[f"{side}_group"] = draw(st.sampled_from(basic_groups))
    else:
        r[f"{side}_prefix_list"] = draw(st.sampled_from(prefix_lists))
    if network == "classic":
        r["nic_type"] = draw(st.sampled_from(["intranet", "internet"]))
    return r


@st.composite
def documents(draw, peer_heavy: bool = False):
    network = draw(st.sampled_from(["vpc", "vpc", "classic"]))
    n_pl = draw(st.integers(0, 2))
    prefix_lists = [{"id": f"pl{i}", "entries": draw(st.lists(
        st.sampled_from(V4_CIDRS + V6_CIDRS), max_size=4, unique=True))} for i in range(n_pl)]
    pl_ids = [p["id"] for p in prefix_lists]
    n_groups = draw(st.integers(2, 4))
    types = draw(st.lists(st.sampled_from(["default", "custom", "enterprise"]),
                          min_size=n_groups, max_size=n_groups))
    # plain ids, or ids whose policy-chain names look alike (groups [a, b] and the
    # single group 'a+b' share the key text 'a+b'; 'x y' is hashed by safe_name)
    ids = draw(st.sampled_from([[f"sg{i}" for i in range(4)], ["a", "b", "a+b", "x y"]]))[:n_groups]
    basic = [g for g, t in zip(ids, types) if t != "enterprise"]
    groups = []
    for gid, gtype in zip(ids, types):
        g = {"id": gid, "type": gtype, "network": network,
             "rules": draw(st.lists(rules(network, basic, pl_ids, peer_heavy), max_size=20 if peer_heavy else 8))}
        if gtype == "enterprise":
            if draw(st.booleans()):
                g["inner_access"] = "drop"
        else:
            inner = draw(st.sampled_from([None, "accept", "drop"]))
            if inner:
                g["inner_access"] = inner
        if gtype == "default":
            g["allow_http"] = draw(st.booleans())
            g["allow_https"] = draw(st.booleans())
        groups.append(g)
    enterprise = [g for g, t in zip(ids, types) if t == "enterprise"]
    n_local = draw(st.integers(2, 4))
    addr_pool = draw(st.permutations(V4_MEMBERS + V6_MEMBERS))
    instances = []
    for i in range(n_local + 1):
        kind_pool = draw(st.sampled_from([p for p in (basic, enterprise) if p]))
        sgs = draw(st.lists(st.sampled_from(kind_pool), min_size=1, max_size=3, unique=True))
        nic_types = ["intranet"] * draw(st.integers(1, 2)) if network == "vpc" else \
            ["intranet"] + ["internet"] * draw(st.booleans())
        nics = []
        for k, nic_type in enumerate(nic_types):
            n_addr = draw(st.integers(0, 2))
            addrs, addr_pool = addr_pool[:n_addr], addr_pool[n_addr:]
            nic = {"name": f"tap{i}{k}", "nic_type": nic_type, "addresses": addrs}
            if draw(st.integers(0, 3)) == 0:
                nic["attachment"] = draw(st.sampled_from(["routed", "bridged"]))
            if draw(st.booleans()):
                nic["mac"] = f"52:54:00:00:0{i}:0{k}"
            if draw(st.integers(0, 2)) == 0:        # allowed address pairs (VIPs, shared or not)
                nic["allowed_addresses"] = draw(st.lists(st.sampled_from(ALLOWED), max_size=3))
            if draw(st.integers(0, 5)) == 0:
                nic["spoofing_guard"] = False
            nics.append(nic)
        inst = {"id": f"i{i}", "network": network, "security_groups": sgs, "interfaces": nics}
        if i == n_local:
            inst["host"] = "hv-02"           # remote: lends its addresses to its groups
        elif draw(st.booleans()):
            inst["host"] = HOST
        instances.append(inst)
    return {"host": HOST, "anti_spoofing": draw(st.booleans()), "prefix_lists": prefix_lists,
            "attachment": draw(st.sampled_from(["routed", "bridged"])),
            "security_groups": groups, "instances": instances}


PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "gre": 47, "sctp": 132, "esp": 50,
             "zero": 0, "max": 255}


def _edges(cidr: str) -> list[str]:
    """Addresses at and just outside the edges of a CIDR."""
    net = ipaddress.ip_network(cidr)
    cls = ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address
    lo, hi = int(net.network_address), int(net.broadcast_address)
    return [str(cls(a)) for a in (lo - 1, lo, lo + 1, hi - 1, hi, hi + 1) if 0 <= a < 2 ** net.max_prefixlen]


def _range_edges(text: str) -> list[int]:
    lo, hi = (int(x) for x in text.split("/"))
    return [p for p in (lo - 1, lo, hi, hi + 1) if 0 <= p <= 65535]


@st.composite
def packets(draw, document=None):
    """A first packet. Given the document, half of the packets are aimed at one of its
    rules: that rule's protocol, ports at the edges of its ranges, the peer address at
    the edges of its CIDR or one of its group's / prefix list's addresses."""
    aim = None
    all_rules = [r for g in (document or {}).get("security_groups", []) for r in g["rules"]]
    if all_rules and draw(st.booleans()):
        aim = draw(st.sampled_from(all_rules))
    version = draw(st.sampled_from([4, 6]))
    if aim and aim["protocol"] in ("icmp", "icmpv6"):
        version = 4 if aim["protocol"] == "icmp" else 6
    pool = (V4_MEMBERS + V4_EXTRA + VIPS[:2]) if version == 4 else (V6_MEMBERS + V6_EXTRA + VIPS[2:])
    src = ipaddress.ip_address(draw(st.sampled_from(pool)))
    dst = ipaddress.ip_address(draw(st.sampled_from(pool)))
    if aim:
        side = "source" if aim["direction"] == "ingress" else "dest"
        candidates = []
        if f"{side}_cidr" in aim:
            candidates = _edges(aim[f"{side}_cidr"])
        elif f"{side}_prefix_list" in aim:
            (pl,) = [p for p in document["prefix_lists"] if p["id"] == aim[f"{side}_prefix_list"]]
            candidates = [a for e in pl["entries"] for a in _edges(e)]
        else:
            gid = aim[f"{side}_group"]
            candidates = [a for i in document["instances"] if gid in i["security_groups"]
                          for n in i["interfaces"] for a in n["addresses"]]
        candidates = [a for a in candidates if ipaddress.ip_address(a).version == version]
        if candidates:
            peer = ipaddress.ip_address(draw(st.sampled_from(candidates)))
            if aim["direction"] == "ingress":
                src = peer
            else:
                dst = peer
    names = ["tcp", "tcp", "udp", "udp", "icmp", "icmpv6", "gre", "sctp", "esp", "zero", "max"]
    if aim and aim["protocol"] != "all":
        names = [aim["protocol"]] * 4 + names
    name = draw(st.sampled_from(names))
    proto = PROTOCOLS[name]
    sport = dport = icmp_type = None
    if name in ("tcp", "udp", "sctp"):
        dports, sports = PORT_EDGES, PORT_EDGES
        if aim and "port_range" in aim:
            dports = _range_edges(aim["port_range"]) * 3 + PORT_EDGES
        if aim and "source_port_range" in aim:
            sports = _range_edges(aim["source_port_range"]) * 3 + PORT_EDGES
        sport = draw(st.sampled_from(sports + DHCP_PORTS * 3))
        dport = draw(st.sampled_from(dports + DHCP_PORTS * 3))
    elif draw(st.integers(0, 3)) == 0:
        # what the kernel's `th dport` reads for a portless protocol: anything
        sport, dport = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
    if name in ("icmp", "icmpv6"):
        icmp_type = draw(st.sampled_from([0, 8, 128, 129, 133, 134, 135, 136, 137]))
    mac = draw(st.sampled_from([None, None, "52:54:00:00:01:00", "52:54:00:00:00:00",
                                "02:00:00:00:00:99"]))
    state = draw(st.sampled_from(["new"] * 17 + ["established", "related", "invalid"]))
    target = None
    if icmp_type in (135, 136):      # ND: a target (own, allowed, link-local or foreign)
        target = draw(st.sampled_from([None, "fe80::1", "fd00::1", "fd00::5", "fd00:2::100", "fd00:2::8",
                                       "2001:db8::1"]))
        target = ipaddress.ip_address(target) if target else None
    return Packet(src, dst, proto, sport, dport, icmp_type, mac, state, target)


def _variants(packet: Packet, nic, direction: str) -> list[Packet]:
    """The packet as drawn and, aimed at this interface (egress: from its own address, so
    that anti-spoofing lets it through; ingress: to its own address)."""
    out = [packet]
    own = [a for a in nic.addresses if a.version == packet.src.version]
    if own:
        if direction == EGRESS:
            out.append(replace(packet, src=own[-1], src_mac=nic.mac if packet.src_mac else None))
        else:
            out.append(replace(packet, dst=own[0]))
    return out


def check_equivalence(state: DesiredState, rs: Ruleset, pkts: list[Packet]) -> int:
    sim = Simulator(rs)
    checked = 0
    for iface, nic in sorted(state.local_interfaces.items()):
        for direction in DIRECTIONS:
            elist = build_effective_list(state, iface, direction)
            for p in pkts:
                for q in _variants(p, nic, direction):
                    want = evaluate(elist, q)
                    paths = ["bridge"]
                    if nic.attachment == "bridged" and direction == INGRESS and q.dst in nic.addresses:
                        paths.append("routed")      # routed by the host into the bridge
                    for via in paths:
                        got = sim.judge(iface, direction, q, via)
                        assert got.verdict == want.verdict, (
                            f"{iface} {direction} via {via} {q}\n  semantics: {want.verdict} by {want.entry}\n"
                            f"  compiled:  {got.verdict} by\n    " + "\n    ".join(got.trace))
                        checked += 1
    return checked


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(st.data())
def test_compiled_verdict_equals_semantics(data):
    document = data.draw(documents(), label="document")
    pkts = data.draw(st.lists(packets(document), min_size=10, max_size=30), label="packets")
    state = validate_document(document, host=HOST)
    rs = build_ruleset(state)
    assert rs.errors == ()
    assert check_equivalence(state, rs, pkts) > 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
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


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
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
    with mock.patch.object(compile_runs, "INLINE_MAX", inline), mock.patch.object(compile_runs, "POINTS_MIN", points):
        rs = build_ruleset(state)
    assert rs.errors == ()
    assert check_equivalence(state, rs, pkts) > 0


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
    document = {"host": HOST, "security_groups": [{"id": "sg", "rules": rules}],
                "instances": [{"id": "x", "security_groups": ["sg"],
                               "interfaces": [{"name": "tap-x", "addresses": ["10.0.0.1"]}]}]}
    state = validate_document(document, host=HOST)
    rs = build_ruleset(state)
    sets = {s.name: s for s in inet_table(rs).sets}
    (points,) = [s for name, s in sets.items() if name.endswith("_p4")]
    assert len(points.elements) == 300 and "10.1.0.7 . 17 . 9 : drop" in points.elements
    assert not [name for name in sets if name.startswith("pin_") and name.endswith("_4")]   # no region set:
    chain = _chain(rs, policy_chain_of(rs, "tap-x", INGRESS))                     # one box, one plain rule
    assert "meta nfproto ipv4 meta l4proto 17 th dport 1-65535 accept" in chain.rules
    pkts = [Packet(ipaddress.ip_address(src), ipaddress.ip_address("10.0.0.1"), 17, 40000, port)
            for src in ("10.1.0.7", "10.1.1.50", "10.1.1.51", "10.9.9.9") for port in (8, 9, 10)]
    assert check_equivalence(state, rs, pkts) > 0


@st.composite
def frames(draw):
    """A frame a bridged port sends: ethertype, source MAC, ARP sender addresses."""
    ethertype = draw(st.sampled_from([ETHER_ARP, ETHER_ARP, ETHER_IP, ETHER_IP6, 0x88CC, 0x8100]))
    macs = ["52:54:00:00:00:00", "52:54:00:00:01:00", "02:00:00:00:00:99", "52:54:00:00:02:01"]
    src_mac = draw(st.sampled_from(macs))
    sha = draw(st.sampled_from(macs + [src_mac] * 4))
    spa = draw(st.sampled_from(V4_MEMBERS + VIPS[:2] + ["0.0.0.0", "10.0.2.111", "8.8.8.8"]))
    return Frame(ethertype, src_mac, sha, ipaddress.IPv4Address(spa))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
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


def test_group_named_like_a_group_combination_gets_its_own_chain():
    """Regression: groups [a, b] and the single group 'a+b' had the same policy key text
    and so one policy chain: tap-y (group 'a+b', no rules) got a's SSH accept and the
    intra-group accepts of a and b."""
    document = {"host": HOST, "security_groups": [
        {"id": "a", "rules": [{"direction": "ingress", "protocol": "tcp", "port_range": "22/22",
                               "source_cidr": "0.0.0.0/0"}]},
        {"id": "b", "rules": []}, {"id": "a+b", "rules": []}],
        "instances": [
            {"id": "x", "security_groups": ["a", "b"],
             "interfaces": [{"name": "tap-x", "addresses": ["10.0.0.1"]}]},
            {"id": "y", "security_groups": ["a+b"],
             "interfaces": [{"name": "tap-y", "addresses": ["10.0.0.2"]}]}]}
    state = validate_document(document, host=HOST)
    rs = build_ruleset(state)
    for direction in DIRECTIONS:
        assert policy_chain_of(rs, "tap-x", direction) != policy_chain_of(rs, "tap-y", direction)
    ssh = Packet(ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.2"), 6, 40000, 22)
    sim = Simulator(rs)
    assert decide_verdict(state, "tap-y", INGRESS, ssh) == "drop"
    assert sim.judge("tap-y", INGRESS, ssh).verdict == "drop"
    assert sim.judge("tap-x", INGRESS, ssh).verdict == "accept"
    from_x = Packet(ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2"), 17, 1, 2)
    assert sim.judge("tap-y", INGRESS, from_x).verdict == "drop"
    assert_sets_disjoint(rs)


def decide_verdict(state: DesiredState, iface: str, direction: str, packet: Packet) -> str:
    return evaluate(build_effective_list(state, iface, direction), packet).verdict


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(documents())
def test_generated_rulesets_are_well_formed(document):
    state = validate_document(document, host=HOST)
    rs = build_ruleset(state)
    assert_sets_disjoint(rs)
    assert_block_structure(state, rs)
    # deterministic: compiling twice renders the same bytes
    assert render_ruleset(build_ruleset(validate_document(document, host=HOST))) == render_ruleset(rs)


# ------------------------------------------------------------------ (c) structure

def test_policy_chain_shared_by_interfaces_with_same_groups():
    state = golden_state("enterprise")
    rs = build_ruleset(state)
    for direction in DIRECTIONS:
        # app-1 lists [ent-app, ent-mon], app-2 [ent-mon, ent-app]: same set of groups
        assert policy_chain_of(rs, "tap-app1", direction) == policy_chain_of(rs, "tap-app2", direction)
        assert policy_chain_of(rs, "tap-app1", direction) != policy_chain_of(rs, "tap-mon1", direction)
    # and the two interface chains themselves differ (anti-spoofing is per interface)
    assert _chain(rs, "eg_tap-app1").rules != _chain(rs, "eg_tap-app2").rules
    policy = [c for c in rs.tables[0].chains if c.name.startswith(("pin_", "peg_"))]
    assert len(policy) == 4            # {app, mon} x {ingress, egress}


def test_classic_interfaces_of_one_instance_do_not_share_policy_chains():
    state = golden_state("classic")
    rs = build_ruleset(state)
    for direction in DIRECTIONS:
        assert policy_chain_of(rs, "eth-f1-int", direction) != policy_chain_of(rs, "eth-f1-pub", direction)


def test_many_rules_few_lookups():
    """200 accept rules at distinct priorities and ports: still one block, one lookup
    per IP version."""
    rules_ = [{"direction": "ingress", "protocol": "tcp", "priority": 1 + i % 100,
               "port_range": f"{1000 + i}/{1000 + i}", "source_cidr": f"10.{i}.0.0/16"}
              for i in range(200)]
    rules_ += [{"direction": "ingress", "protocol": "udp", "priority": 50,
                "port_range": "53/53", "source_cidr": "fd00::/64"}]
    document = {"host": HOST, "security_groups": [{"id": "sg", "rules": rules_}],
                "instances": [{"id": "i", "security_groups": ["sg"],
                               "interfaces": [{"name": "tap-i", "addresses": ["10.9.9.9"]}]}]}
    state = validate_document(document, host=HOST)
    rs = build_ruleset(state)
    chain = _chain(rs, policy_chain_of(rs, "tap-i", INGRESS))
    lookups = [r for r in chain.rules if "@pin_" in r]
    assert len(lookups) == 1 and lookups[0].startswith("ip saddr"), chain.rules     # 200 lines: one lookup
    assert "ip6 saddr fd00::-fd00::ffff:ffff:ffff:ffff meta l4proto 17 th dport 53 accept" in chain.rules
    assert len(chain.rules) == 5, chain.rules          # intra-group 2, IPv4 lookup, IPv6 plain rule, drop
    assert_sets_disjoint(rs)
    sim = Simulator(rs)
    ok = Packet(ipaddress.ip_address("10.7.1.1"), ipaddress.ip_address("10.9.9.9"), 6, 5, 1007)
    bad = Packet(ipaddress.ip_address("10.7.1.1"), ipaddress.ip_address("10.9.9.9"), 6, 5, 1008)
    assert sim.judge("tap-i", INGRESS, ok).verdict == "accept"
    assert sim.judge("tap-i", INGRESS, bad).verdict == "drop"


def test_failing_interface_compiles_closed(monkeypatch):
    state = golden_state("webshop")
    before = build_ruleset(state)
    real = compile_mod.build_effective_list

    def broken(st_, nic_name, direction, **kw):
        if nic_name == "tap-web2":
            raise RuntimeError("boom")
        return real(st_, nic_name, direction, **kw)

    monkeypatch.setattr(compile_mod, "build_effective_list", broken)
    rs = build_ruleset(state)
    assert len(rs.errors) == 2
    assert all("tap-web2" in e and "boom" in e for e in rs.errors)
    for direction in DIRECTIONS:
        assert _chain(rs, interface_chain_name_of("tap-web2", direction)).rules == ("counter drop",)
    sim, sim_before = Simulator(rs), Simulator(before)
    pkts = _pool_packets(state)
    web2 = state.local_interfaces["tap-web2"]
    for p in pkts:
        for direction in DIRECTIONS:
            for q in _variants(p, web2, direction):
                assert sim.judge("tap-web2", direction, q).verdict == "drop"
    # every other interface compiles as before, chain for chain, verdict for verdict
    for iface in ("tap-web1", "tap-db1"):
        for direction in DIRECTIONS:
            name = interface_chain_name_of(iface, direction)
            assert _chain(rs, name) == _chain(before, name)
            pchain = policy_chain_of(before, iface, direction)
            assert _chain(rs, pchain) == _chain(before, pchain)
            for p in pkts[:400]:
                assert sim.judge(iface, direction, p).verdict == sim_before.judge(iface, direction, p).verdict
    # the failure does not leak a policy chain that nothing uses
    assert not any("sg-ops" in c.name for c in rs.tables[0].chains)


# ------------------------------------------------------------------ the simulator is strict

@pytest.mark.parametrize("text", [
    "ip saddr 10.0.0.1 log accept",
    "tcp dport 22 accept",
    "ip saddr @nosuchset accept",
    "goto nosuchchain",
    "ct state vmap { new : accept, bogus : drop }",
    "icmpv6 type { echo-request } accept",
    "ip saddr . th dport @s4 accept",
    "ip6 saddr . meta l4proto @s4 accept",       # set type does not fit the key
    "reject",
    "ip saddr @g4 reject",
    "",
])
def test_simulator_rejects_unknown_rules(text):
    from agent.compiler.compile import NftSet
    sets = {"s4": parse_set(NftSet("s4", "ipv4_addr . inet_proto", ("10.0.0.0-10.0.0.255 . 6",))),
            "g4": parse_set(NftSet("g4", "ipv4_addr", ("10.0.0.1",)))}
    with pytest.raises(UnknownRule):
        parse_rule(text, sets, {"known"})


def test_simulator_rejects_bad_set_elements():
    from agent.compiler.compile import NftSet
    for s in (NftSet("x", "ipv4_addr . inet_proto", ("10.0.0.1",)),
              NftSet("x", "ipv4_addr", ("fd00::1",)),
              NftSet("x", "ipv4_addr . inet_service", ("10.0.0.1 . 70000",)),
              NftSet("x", "ipv4_addr . inet_service", ("10.0.0.1 . 9-8",)),
              NftSet("x", "ipv4_addr", ("10.0.0.1-10.0.0.2",), interval=False),
              NftSet("x", "mystery_type", ("1",))):
        with pytest.raises(UnknownRule):
            parse_set(s)


# ------------------------------------------------------------------ (4) the kernel

def _can_use_kernel() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("nft", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


@pytest.fixture
def netns():
    reason = _can_use_kernel()
    if reason:
        pytest.skip(reason)
    name = f"sgtest-{uuid.uuid4().hex[:10]}"
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {proc.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, text=True)


@pytest.mark.kernel
@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_kernel_accepts_golden_ruleset(netns, name, tmp_path):
    """nft parses and the kernel validates each golden ruleset (overlapping interval
    elements, types, chain references) inside a throwaway namespace; the root
    namespace's ruleset is never touched."""
    path = GOLDEN / f"{name}.nft"

    def nft(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", netns, "nft", *args],
                              capture_output=True, text=True, timeout=60)

    check = nft("-c", "-f", str(path))
    assert check.returncode == 0, check.stderr
    # and load it for real, twice (the script replaces its own tables atomically),
    # still inside the throwaway namespace
    for _ in range(2):
        load = nft("-f", str(path))
        assert load.returncode == 0, load.stderr
    listed = nft("list", "ruleset")
    assert listed.returncode == 0, listed.stderr
    for chain in _chains_in(path.read_text()):
        assert f"chain {chain} {{" in listed.stdout


def _chains_in(text: str) -> list[str]:
    return re.findall(r"^\tchain (\S+) \{", text, flags=re.M)
