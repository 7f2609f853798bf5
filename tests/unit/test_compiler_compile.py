"""The compiler: golden rulesets, compiled verdicts == semantics engine verdicts (the
main property), structural invariants of the blocks design, fail-closed compilation
(the kernel accepting every golden ruleset: tests/kernel/test_golden_rulesets.py).

The reference is `agent.policy.effective` (build_effective_list / evaluate); the compiled side
is judged by `tests/compile_sim.py`, a strict interpreter of the emitted nft rules.
Regenerate golden files with `UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_compiler_compile.py`
and read the diff before keeping it.
"""
from __future__ import annotations

import ipaddress
import itertools
import os
import re

import pytest
from compile_helpers import (
    by_key,
    GOLDEN,
    GOLDEN_NAMES,
    HOST,
    _chain,
    _variants,
    assert_block_structure,
    assert_sets_disjoint,
    decide_verdict,
    golden_state,
    interface_chain_name_of,
    policy_chain_of,
)
from compile_sim import Simulator, UnknownRule, parse_rule, parse_set
from profiles import share

import agent.compiler.compile as compile_mod
from agent.compiler.compile import build_ruleset
from agent.compiler.render import render_ruleset
from agent.model.objects import DIRECTIONS, EGRESS, INGRESS, DesiredState
from agent.model.validate import validate_document
from agent.policy.effective import (
    Packet,
    build_effective_list,
    evaluate,
)


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


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_verdicts_match_semantics(name):
    state = golden_state(name)
    rs = build_ruleset(state)
    assert rs.errors == ()
    sim = Simulator(rs)
    packets = share(_pool_packets(state))
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
    named = by_key(rs, chain.rules)
    assert any(re.fullmatch(r"ip6 saddr fd00::-fd00::ffff:ffff:ffff:ffff meta l4proto 17 th dport 53 "
                            r"=> ingress/user/sg/\S+/50/accept", r) for r in named), named
    assert named[-1] == "=> ingress/final/-/-/-/drop"
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

