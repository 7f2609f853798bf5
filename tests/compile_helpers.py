"""Shared by tests/unit/test_compiler_compile.py and test_compiler_properties.py: golden
states, the structural checks of a compiled ruleset, and the hypothesis strategies (documents,
rules, packets) with the equivalence check against the semantics engine."""
from __future__ import annotations

import ipaddress
import itertools
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from compile_sim import Simulator, parse_set
from hypothesis import strategies as st

import agent.compiler.paint as paint_mod
import agent.compiler.runs as compile_runs
from agent.compiler.boxes import intersect
from agent.compiler.compile import Ruleset, interface_chain_name
from agent.compiler.verdicts import verdict_of
from agent.model.objects import DIRECTIONS, EGRESS, INGRESS, DesiredState
from agent.model.validate import load_state
from agent.policy.effective import (
    Packet,
    build_effective_list,
    evaluate,
)
from agent.policy.guard import ETHER_ARP, ETHER_IP, ETHER_IP6, Frame

HOST = "hv-01"


GOLDEN = Path(__file__).resolve().parent / "golden"


GOLDEN_NAMES = sorted(p.stem for p in GOLDEN.glob("*.yaml"))


def golden_state(name: str) -> DesiredState:
    return load_state(GOLDEN / f"{name}.yaml", host=HOST)


def verdict_keys(rs: Ruleset) -> dict[str, str]:
    """verdict chain name -> its identity key (the comment of its one rule)."""
    (table,) = [t for t in rs.tables if t.family == "inet"]
    return {c.name: re.search(r'comment "([^"]+)"', c.rules[0])[1] for c in table.chains
            if re.fullmatch(r"v_\d+", c.name)}


def by_key(rs: Ruleset, texts) -> list[str]:
    """`texts` (rules or elements) with each `goto v_<n>` written `=> <identity key>`."""
    keys = verdict_keys(rs)
    return [re.sub(r"goto (v_\d+)", lambda m: "=> " + keys[m[1]], t) for t in texts]


def renumbered(rs: Ruleset) -> tuple:
    """`rs` with every verdict chain number replaced by its identity key: what a build
    must equal whatever numbers the memo kept (a fresh build numbers identities in the
    order it meets them, a memo build keeps the previous build's numbers)."""
    keys = verdict_keys(rs)

    def sub(text: str) -> str:
        return re.sub(r"\bv_\d+\b", lambda m: f"v<{keys.get(m[0], '?')}>", text)

    def chain_rules(c) -> tuple:
        if c.name not in keys:
            return tuple(sub(r) for r in c.rules)
        return tuple(re.sub(r'prefix "sg:\d+:"', 'prefix "sg:<n>:"',
                            re.sub(r"ct mark set ct mark and \S+ or \S+", "ct mark set <n>", r)) for r in c.rules)
    tables = tuple((t.family, t.name,
                    tuple(sorted((s.name, s.type, tuple(sorted(sub(e) for e in s.elements)), s.interval, s.map_to)
                                 for s in t.sets)),
                    tuple(sorted((sub(c.name), chain_rules(c), c.hook or "") for c in t.chains)))
                   for t in rs.tables)
    return tables, rs.errors


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


def assert_block_structure(state: DesiredState, rs: Ruleset) -> None:
    """Per policy chain: intra-group accepts (jumps to their verdict chain), then stages
    4-5 as a bounded number of lookups per IP version whatever the number of rules: the
    member path's `goto` (only when some line names a group or prefix list), the hashed
    points map, and ONE region lookup (a verdict map from each box to the verdict chain
    of the line deciding there; or, for a region of at most INLINE_MAX boxes, one plain
    rule per box), then the catch-all line where there is one (`meta nfproto ... goto
    v_<n>`, or a bare `goto v_<n>`); then the final drop's jump. The member path has at
    most one rule per line of its version and ends with a jump to a verdict chain."""
    for iface in sorted(state.local_interfaces):
        for direction in DIRECTIONS:
            elist = build_effective_list(state, iface, direction)
            chain = _chain(rs, policy_chain_of(rs, iface, direction))
            rules = list(chain.rules)
            assert re.fullmatch(r"goto v_\d+", rules[-1]), chain
            is_intra = [bool(re.fullmatch(r"ip6? [sd]addr @grp[46]_\S+ goto v_\d+", r)) for r in rules[:-1]]
            intra = sum(is_intra)
            assert is_intra == [True] * intra + [False] * (len(is_intra) - intra), chain.name
            assert intra == 2 * sum(e.stage == "intra-group" for e in elist.entries)
            body = rules[intra:-1]
            dynamic = [e for e in elist.entries if e.stage == "user" and e.peer.kind != "cidr"]
            kinds = []
            for r in body:
                m = re.fullmatch(r"(ip6?) [sd]addr @peers[46] jump (\S+_m[46])", r)
                if m:               # the member path returns to the static path (paint.member_lines)
                    assert dynamic, (chain.name, r)
                    kinds.append((m[1], "members"))
                    member = list(_chain(rs, m[2]).rules)
                    assert member and not member[-1].startswith("goto") and len(member) <= len(elist.entries), \
                        (m[2], member)
                    continue
                m = re.fullmatch(r"(ip6?) [sd]addr \. meta l4proto \. th dport vmap @\S+_p[46]", r)
                if m:
                    kinds.append((m[1], "points"))
                    continue
                m = re.fullmatch(r"(?:meta nfproto ipv(4|6) )?goto v_\d+", r)
                if m:
                    kinds.append(("ip" + ("6" if m[1] == "6" else "") if m[1] else "both", "catch-all"))
                    continue
                m = re.fullmatch(r"meta nfproto ipv(4|6) (?!goto ).* goto v_\d+", r)
                if m:       # a line for every address, after the region (paint.split_wide)
                    kinds.append(("ip" + ("6" if m[1] == "6" else ""), "wide"))
                    continue
                family = r.split()[0] if not r.startswith("meta") else "ip" + ("6" if "ipv6" in r else "")
                if r.endswith(" vmap @" + r.split("@")[-1]) and " . " in r:
                    kinds.append((family, "region"))
                    continue
                assert re.search(r" goto v_\d+$", r), (chain.name, body)
                kinds.append((family, "region (plain rules)"))
            plain = [k for k in kinds if k[1] == "region (plain rules)"]
            assert all(plain.count(k) <= compile_runs.INLINE_MAX for k in plain), (chain.name, body)
            assert all(kinds.count(k) <= paint_mod.WIDE_MAX + compile_runs.INLINE_MAX
                       for k in kinds if k[1] == "wide"), (chain.name, body)
            once = [k for k in kinds if k[1] not in ("region (plain rules)", "wide")]
            assert len(once) == len(set(once)), (chain.name, body)
            assert not any((f, "region") in once and (f, "region (plain rules)") in plain for f in ("ip", "ip6"))


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


# single addresses in and out of the group members: point lines (agent.compiler.runs.build_points)
HOST_CIDRS = ["10.0.0.5/32", "10.0.0.9/32", "10.0.1.0/32", "8.8.8.8/32", "fd00::5/128", "fd00::9/128",
              "fd00:1::/128"]


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
def rules(draw, network: str, basic_groups: list[str], prefix_lists: list[str], peer_heavy: bool = False,
          points_heavy: bool = False):
    direction = draw(st.sampled_from(["ingress", "egress"]))
    protocol = draw(st.sampled_from(["tcp", "udp", "icmp", "icmpv6", "gre", "all"] + ["tcp", "udp"] * 2 * points_heavy))
    side = "source" if direction == "ingress" else "dest"
    r = {"direction": direction, "protocol": protocol,
         "policy": draw(st.sampled_from(["accept", "drop"])),
         "priority": draw(st.sampled_from(PRIORITIES))}
    if protocol in ("tcp", "udp"):
        r["port_range"] = draw(st.sampled_from(PORT_RANGES + ["79/81", "21/36", "52/54"] * 2 * points_heavy))
        if draw(st.booleans()):
            r["source_port_range"] = draw(st.sampled_from(PORT_RANGES))
    kinds = ["cidr", "cidr"] + ["group"] * bool(basic_groups) * (1 + 2 * peer_heavy) + \
        ["prefix_list"] * bool(prefix_lists) * (1 + peer_heavy) + ["host"] * 6 * points_heavy
    kind = draw(st.sampled_from(kinds))
    if kind == "host" and protocol not in ("icmp", "icmpv6"):
        r[f"{side}_cidr"] = draw(st.sampled_from(HOST_CIDRS))
        r.pop("source_port_range", None)            # a point line (any source port)
    elif kind in ("cidr", "host"):
        r[f"{side}_cidr"] = draw(_cidr_for(protocol))
    elif kind == "group":
        r[f"{side}_group"] = draw(st.sampled_from(basic_groups))
    else:
        r[f"{side}_prefix_list"] = draw(st.sampled_from(prefix_lists))
    if network == "classic":
        r["nic_type"] = draw(st.sampled_from(["intranet", "internet"]))
    extra = draw(st.integers(0, 11))            # audit and log: the verdict chains change, the verdicts are explain's
    if extra == 0:
        r["mode"] = "audit"
    elif extra == 1:
        r["log"] = True
    return r


@st.composite
def documents(draw, peer_heavy: bool = False, points_heavy: bool = False):
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
             "rules": draw(st.lists(rules(network, basic, pl_ids, peer_heavy, points_heavy), min_size=6 * points_heavy,
                                   max_size=20 if peer_heavy or points_heavy else 8))}
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
                    want = evaluate(elist, q)           # what `explain` decides (agent.policy.explain.judge)
                    vid = verdict_of(want.entry, direction)
                    want_id = vid.key() if vid is not None else None
                    paths = ["bridge"]
                    if nic.attachment == "bridged" and direction == INGRESS and q.dst in nic.addresses:
                        paths.append("routed")      # routed by the host into the bridge
                    for via in paths:
                        got = sim.judge(iface, direction, q, via)
                        assert got.verdict == want.verdict, (
                            f"{iface} {direction} via {via} {q}\n  semantics: {want.verdict} by {want.entry}\n"
                            f"  compiled:  {got.verdict} by\n    " + "\n    ".join(got.trace))
                        assert got.identity == want_id, (        # the same line decides, and is counted
                            f"{iface} {direction} via {via} {q}\n  semantics: {want_id} ({want.entry})\n"
                            f"  compiled:  {got.identity} by\n    " + "\n    ".join(got.trace))
                        checked += 1
    return checked


@st.composite
def frames(draw):
    """A frame a bridged port sends: ethertype, source MAC, ARP sender addresses."""
    ethertype = draw(st.sampled_from([ETHER_ARP, ETHER_ARP, ETHER_IP, ETHER_IP6, 0x88CC, 0x8100]))
    macs = ["52:54:00:00:00:00", "52:54:00:00:01:00", "02:00:00:00:00:99", "52:54:00:00:02:01"]
    src_mac = draw(st.sampled_from(macs))
    sha = draw(st.sampled_from(macs + [src_mac] * 4))
    spa = draw(st.sampled_from(V4_MEMBERS + VIPS[:2] + ["0.0.0.0", "10.0.2.111", "8.8.8.8"]))
    return Frame(ethertype, src_mac, sha, ipaddress.IPv4Address(spa))


def decide_verdict(state: DesiredState, iface: str, direction: str, packet: Packet) -> str:
    return evaluate(build_effective_list(state, iface, direction), packet).verdict

