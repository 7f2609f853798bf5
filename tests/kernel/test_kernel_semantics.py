"""SPEC §3 through the real kernel, clause by clause, routed and bridged, IPv4 and IPv6,
TCP, UDP and ICMP/ICMPv6.

Every flow is checked three ways: the verdict the clause promises (written here), the
verdict of the semantics engine (agent.policy.effective: the sender's egress list, then the
receiver's ingress list), and what the kernel did (the receiver's probe responder got
the flow's unique marker, or not). All three must agree. One document per clause,
applied by `secgroup-agent apply` inside the hypervisor namespace; the flows of a clause
are sent at once (sandbox.probe.probe_many), so a clause costs about one drop timeout.

Every flow between two local instances is also put to `explain --from SRC --to DST`
(agent.policy.explain_flow, what the command prints; one per clause through the command itself):
its overall verdict must be what the kernel did.

Instances: i1..i4 (routed: 10.0.0.11-14, fd00::11-14; bridged: 10.1.0.11-14,
fd01::11-14), `out` (192.0.2.2, 2001:db8:f::2) and `remote` (the outside namespace
sending from 198.51.100.7 / 2001:db8:77::7, the addresses of an instance on another host).
"""
from __future__ import annotations

import json

import pytest

from agent.policy.explain_flow import explain_flow
from khelpers import (ANY, C, assert_connection, assert_no_connection, both, check_cases, group,
                      packet_for, policy_verdict, rule)

pytestmark = pytest.mark.kernel

ACCEPT, DROP = "accept", "drop"
L4 = [("tcp", 80), ("udp", 9999), ("icmp", 0)]


def every_proto(src: str, dst: str, want) -> list:
    return [C(src, dst, proto, port, want) for proto, port in L4]


def check_and_explain(topo, doc: dict, cases: list) -> int:
    """check_cases, then: for every flow it sent between two local instances (spoofed
    ones aside: explain sends from the instance's own address), `explain --from --to`'s
    overall verdict == what the kernel did. The first such flow also goes through the
    command line. Returns how many flows were compared."""
    observed = check_cases(topo, doc, cases)
    state = topo.state(doc)
    local = {i.id for i in state.local_instances}
    compared, bad = [], []
    for case, version, kernel in observed:
        if case.spoof or case.src_mac or not {case.src, case.dst} <= local:
            continue
        dport = case.port if case.proto in ("tcp", "udp") else None
        got = explain_flow(state, case.src, case.dst, case.proto, dport, version=version).verdict
        if not compared:
            proc = topo.cli("explain", "-c", str(topo.write(doc)), "--host", state.host, "--from", case.src,
                            "--to", case.dst, "--protocol", case.proto, "--ip-version", str(version),
                            *(["--dport", str(dport)] if dport else []), "--json")
            assert proc.returncode == 0, proc.stderr
            assert json.loads(proc.stdout)["verdict"] == got == kernel, (case, version, proc.stdout)
        compared.append(case)
        if got != kernel:
            bad.append(f"{case.src}->{case.dst} {case.proto}/{case.port} IPv{version}: explain={got} kernel={kernel}")
    assert not bad, f"explain --from/--to disagrees with the kernel ({topo.attachment}):\n" + "\n".join(bad)
    print(f"{topo.attachment}: explain --from/--to == kernel on {len(compared)} local-to-local flows")
    return len(compared)


# -- the clauses: (document builder, flows) ----------------------------------------------
def intra_group(t):
    """Stage 3: members of a group with inner_access accept reach each other before any
    user rule -- sg-a's drop-everything rules (both directions) do not separate i1 and i2."""
    doc = t.doc([group("sg-a", both("ingress", policy="drop"), both("egress", policy="drop"),
                       inner_access="accept"),
                 group("sg-b")],
                {"i1": ["sg-a"], "i2": ["sg-a"], "i3": ["sg-b"], "i4": ["sg-b"]})
    cases = (every_proto("i1", "i2", ACCEPT) + every_proto("i2", "i1", ACCEPT)
             + every_proto("i1", "out", DROP)        # the user egress drop applies to the rest
             + every_proto("out", "i1", DROP)
             + every_proto("i3", "i1", DROP)
             + every_proto("i1", "i3", DROP))
    return doc, cases


def inner_access_drop(t):
    """inner_access drop: no shortcut, user rules decide (sg-d admits its own members on
    5432 only); sharing one accepting group (sg-m) as well is enough to reach each other."""
    doc = t.doc([group("sg-d", rule("ingress", "tcp", ports="5432/5432", group="sg-d"), inner_access="drop"),
                 group("sg-m", inner_access="accept")],
                {"i1": ["sg-d"], "i2": ["sg-d"], "i3": ["sg-d", "sg-m"], "i4": ["sg-d", "sg-m"]})
    cases = (every_proto("i1", "i2", DROP) + every_proto("i2", "i1", DROP)
             + [C("i1", "i2", "tcp", 5432, ACCEPT), C("i2", "i1", "tcp", 5432, ACCEPT)]
             + every_proto("i3", "i4", ACCEPT) + every_proto("i4", "i3", ACCEPT)
             + every_proto("i1", "i3", DROP))
    return doc, cases


def deny_first_and_priority(t):
    """Stage 4 across two groups: at equal priority the drop wins (8080 in 8000-8100,
    egress tcp/80); a smaller priority number wins whatever its policy (udp/9999 accept
    at 2 over drop-all-udp at 3; tcp/7001 drop at 2 over accept 7000-7010 at 4)."""
    doc = t.doc([group("sg-x", both("ingress", "tcp", ports="8000/8100", priority=5),
                       both("ingress", "udp", ports="9999/9999", priority=2),
                       both("ingress", "tcp", "drop", priority=2, ports="7001/7001"),
                       both("egress", "tcp", ports="80/80", priority=5)),
                 group("sg-y", both("ingress", "tcp", "drop", priority=5, ports="8080/8080"),
                       both("ingress", "udp", "drop", priority=3, ports="1/65535"),
                       both("ingress", "tcp", priority=4, ports="7000/7010"),
                       both("egress", "tcp", "drop", priority=5, ports="80/80"))],
                {"i1": ["sg-x", "sg-y"]})
    cases = [C("out", "i1", "tcp", 8080, DROP), C("out", "i1", "tcp", 8081, ACCEPT),
             C("out", "i1", "udp", 9999, ACCEPT), C("out", "i1", "udp", 7002, DROP),
             C("out", "i1", "tcp", 7001, DROP), C("out", "i1", "tcp", 7002, ACCEPT),
             C("i1", "out", "tcp", 80, DROP), C("i1", "out", "tcp", 443, ACCEPT)]
    return doc, cases


def default_groups(t):
    """Stage 5: a `default` group opens ICMP, 22, 3389 (and 80/443 where allowed) at
    priority 110, after every user rule (a priority-100 drop of IPv4 RDP wins); a
    `custom` group is closed inbound and open outbound."""
    doc = t.doc([group("sg-def", type="default", allow_http=True),
                 group("sg-def2", rule("ingress", "tcp", "drop", priority=100, ports="3389/3389",
                                       cidr="0.0.0.0/0"), type="default", allow_https=True),
                 group("sg-cust")],
                {"i1": ["sg-def"], "i2": ["sg-def2"], "i3": ["sg-cust"]})
    cases = [C("out", "i1", "icmp", 0, ACCEPT), C("out", "i1", "tcp", 22, ACCEPT),
             C("out", "i1", "tcp", 3389, ACCEPT), C("out", "i1", "tcp", 80, ACCEPT),
             C("out", "i1", "tcp", 443, DROP), C("out", "i1", "tcp", 8080, DROP),
             C("out", "i1", "udp", 9999, DROP),
             C("out", "i2", "icmp", 0, ACCEPT), C("out", "i2", "tcp", 443, ACCEPT),
             C("out", "i2", "tcp", 80, DROP), C("out", "i2", "tcp", 3389, {4: DROP, 6: ACCEPT}),
             C("i3", "i1", "tcp", 22, ACCEPT), C("i3", "i1", "tcp", 9999, DROP),
             *every_proto("out", "i3", DROP), *every_proto("i3", "out", ACCEPT),
             *every_proto("i1", "out", ACCEPT)]
    return doc, cases


def enterprise(t):
    """Enterprise groups open nothing, either way; a rule opens egress (an IPv4 CIDR
    opens IPv4 only); members of an enterprise group do not reach each other."""
    doc = t.doc([group("sg-e", type="enterprise"),
                 group("sg-e2", rule("egress", "tcp", ports="80/80", cidr="0.0.0.0/0"), type="enterprise")],
                {"i1": ["sg-e"], "i2": ["sg-e2"], "i3": ["sg-e"]})
    cases = (every_proto("out", "i1", DROP) + every_proto("i1", "out", DROP)
             + [C("i2", "out", "tcp", 80, {4: ACCEPT, 6: DROP}), C("i2", "out", "udp", 9999, DROP),
                C("i2", "out", "icmp", 0, DROP), C("i2", "i1", "tcp", 80, DROP)]
             + every_proto("i1", "i3", DROP))
    return doc, cases


def group_peers(t):
    """source_group / dest_group: every address of every member, local or remote (the
    remote member's addresses are held by the outside namespace), IPv4 and IPv6."""
    doc = t.doc([group("sg-web", rule("ingress", "udp", ports="9999/9999", group="sg-out")),
                 group("sg-db", rule("ingress", "tcp", ports="5432/5432", group="sg-web"), inner_access="drop"),
                 group("sg-out", rule("egress", group="sg-web"), both("egress", policy="drop", priority=100))],
                {"i1": ["sg-web"], "i2": ["sg-db"], "i3": ["sg-db"], "i4": ["sg-out"]},
                remote={"r1": ["sg-web"]})
    cases = [C("i1", "i2", "tcp", 5432, ACCEPT), C("i1", "i2", "tcp", 80, DROP),
             C("i3", "i2", "tcp", 5432, DROP), C("out", "i2", "tcp", 5432, DROP),
             C("remote", "i2", "tcp", 5432, ACCEPT), C("remote", "i2", "udp", 5432, DROP),
             C("i4", "i1", "udp", 9999, ACCEPT), C("i4", "i1", "tcp", 80, DROP),   # i1's ingress
             C("i1", "i4", "udp", 9999, DROP),
             C("i4", "remote", "tcp", 80, ACCEPT), C("i4", "remote", "icmp", 0, ACCEPT),
             C("i4", "out", "tcp", 80, DROP)]
    return doc, cases


def prefix_lists_and_families(t):
    """A prefix list matches IPv4 and IPv6; an IPv4 CIDR matches IPv4 only, an IPv6
    CIDR IPv6 only."""
    pl = {"id": "pl-outside", "entries": ["192.0.2.0/24", "2001:db8:f::/64"]}
    doc = t.doc([group("sg-p", rule("ingress", "tcp", ports="80/80", pl="pl-outside"),
                       rule("ingress", "udp", ports="9999/9999", cidr="0.0.0.0/0"),
                       rule("ingress", "tcp", ports="8080/8080", cidr="::/0"),
                       rule("ingress", "icmpv6", cidr="::/0")),
                 group("sg-q")],
                {"i1": ["sg-p"], "i2": ["sg-q"]}, prefix_lists=[pl])
    cases = [C("out", "i1", "tcp", 80, ACCEPT), C("i2", "i1", "tcp", 80, DROP),
             C("out", "i1", "udp", 9999, {4: ACCEPT, 6: DROP}), C("i2", "i1", "udp", 9999, {4: ACCEPT, 6: DROP}),
             C("out", "i1", "tcp", 8080, {4: DROP, 6: ACCEPT}),
             C("out", "i1", "icmp", 0, {4: DROP, 6: ACCEPT})]
    return doc, cases


def both_ends_judge(t):
    """A packet between two local instances needs the sender's egress AND the receiver's
    ingress: a sender egress drop blocks what the receiver accepts, and vice versa."""
    doc = t.doc([group("sg-s", both("egress", "tcp", "drop", ports="80/80")),
                 group("sg-r", both("ingress", "tcp", ports="80/80"), both("ingress", "udp", ports="9999/9999")),
                 group("sg-n")],
                {"i1": ["sg-s"], "i2": ["sg-r"], "i3": ["sg-n"], "i4": ["sg-r"]})
    cases = [C("i1", "i2", "tcp", 80, DROP), C("i1", "i2", "udp", 9999, ACCEPT),
             C("out", "i2", "tcp", 80, ACCEPT), C("i3", "i2", "tcp", 80, ACCEPT),
             C("i2", "i3", "udp", 9999, DROP), C("i2", "i3", "tcp", 80, DROP),
             C("i1", "out", "tcp", 80, DROP), C("i1", "out", "udp", 9999, ACCEPT)]
    return doc, cases


CLAUSES = [intra_group, inner_access_drop, deny_first_and_priority, default_groups, enterprise,
           group_peers, prefix_lists_and_families, both_ends_judge]


@pytest.mark.parametrize("clause", CLAUSES, ids=[c.__name__ for c in CLAUSES])
def test_clause(topo, clause):
    doc, cases = clause(topo)
    local = sum(len(c.expand()) for c in cases if c.src not in ("out", "remote") and c.dst not in ("out", "remote"))
    assert check_and_explain(topo, doc, cases) == local


def test_remote_member_in_compiled_sets(topo):
    """The remote member of sg-web (not present on this host) is in the kernel's sets."""
    doc, _ = group_peers(topo)
    topo.apply(doc)
    text = topo.nft_list()
    assert "198.51.100.7" in text and "2001:db8:77::7" in text, text


def point_lines(t):
    """The hashed points map (agent.compiler.runs.build_points): 300 single-address lines
    per IP version with 1-3 tcp ports each are expanded into points. `out`'s own line
    (tcp 7001-7003, priority 5) is decided point by point: 7002 by an earlier drop of its
    /24 (/64), 7001 by the line itself, 7003 too but from the region (an earlier drop there
    restricted to source ports 1-1023, which the probe's port is not in, leaves that point
    and so the whole line to the region), 8080 by no line (the final drop)."""
    rules = []
    for v, net in ((4, "192.0.2.0/24"), (6, "2001:db8:f::/64")):
        out = t.addr("out", v)
        fill = [f"10.200.{i // 250}.{i % 250 + 1}/32" if v == 4 else f"fd99::{i + 1:x}/128" for i in range(300)]
        rules += [rule("ingress", "tcp", ports=f"6000/{6000 + i % 3}", priority=5, cidr=c) for i, c in enumerate(fill)]
        rules += [rule("ingress", "tcp", ports="7001/7003", priority=5, cidr=f"{out}/{32 if v == 4 else 128}"),
                  rule("ingress", "tcp", "drop", ports="7002/7002", cidr=net),
                  {**rule("ingress", "tcp", "drop", ports="7003/7003", cidr=net), "source_port_range": "1/1023"}]
    doc = t.doc([group("sg-pt", *rules)], {"i1": ["sg-pt"]})
    cases = [C("out", "i1", "tcp", 7001, ACCEPT), C("out", "i1", "tcp", 7002, DROP),
             C("out", "i1", "tcp", 7003, ACCEPT), C("out", "i1", "tcp", 8080, DROP)]
    return doc, cases


def test_point_lines_through_the_points_map(topo):
    doc, cases = point_lines(topo)
    check_and_explain(topo, doc, cases)
    text = topo.nft_list(stateless=True)
    assert text and "_p4 {" in text and "_p6 {" in text, text


# -- anti-spoofing -----------------------------------------------------------------------
def spoofing_doc(t, anti_spoofing: bool):
    """i4 sends; i1 accepts any UDP and ICMP. No shared group, so no intra-group shortcut."""
    return t.doc([group("sg-open", both("ingress", "udp", ports="1/65535"), rule("ingress", "icmp", cidr=ANY[0]),
                        rule("ingress", "icmpv6", cidr=ANY[1])),
                  group("sg-src")],
                 {"i1": ["sg-open"], "i4": ["sg-src"]}, anti_spoofing=anti_spoofing)


@pytest.mark.parametrize("anti_spoofing", [True, False], ids=["on", "off"])
def test_spoofed_source_address(topo, anti_spoofing):
    """Egress anti-spoofing drops a source address that is not the interface's (UDP and
    ICMP: one-way flows the receiver can confirm); `anti_spoofing: false` lets it pass.
    The instance's own address passes either way."""
    want = "drop" if anti_spoofing else "accept"
    cases = [C("i4", "i1", "udp", 9999, want, spoof=True), C("i4", "i1", "icmp", 0, want, spoof=True),
             C("i4", "i1", "udp", 9999, "accept"), C("i4", "i1", "icmp", 0, "accept")]
    assert check_and_explain(topo, spoofing_doc(topo, anti_spoofing), cases) == 4   # the 2 unspoofed, v4+v6


SPOOF_MAC = "52:54:00:00:00:99"


@pytest.mark.parametrize("anti_spoofing", [True, False], ids=["on", "off"])
def test_spoofed_mac(topo, anti_spoofing):
    """Frames from i4 whose source MAC is not the configured one are dropped (egress);
    `anti_spoofing: false` lets them pass. The MAC of i4's eth0 is changed for the test
    and restored afterwards, with the neighbour entries learnt meanwhile flushed."""
    node = topo.nodes["i4"]
    doc = spoofing_doc(topo, anti_spoofing)
    want = "drop" if anti_spoofing else "accept"
    cases = [C("i4", "i1", "udp", 9999, want, src_mac=SPOOF_MAC), C("i4", "i1", "icmp", 0, want, src_mac=SPOOF_MAC)]
    topo.apply(doc)
    topo.sb.ip(node.ns, "link", "set", "eth0", "address", SPOOF_MAC)
    try:
        check_cases(topo, doc, cases)
    finally:
        topo.sb.ip(node.ns, "link", "set", "eth0", "address", node.mac)
        for ns in [topo.hv] + [n.ns for n in topo.nodes.values()]:
            for addr in (node.v4, node.v6):
                topo.sb.ip(ns, "neigh", "flush", "to", addr)
    assert check_and_explain(topo, doc, [C("i4", "i1", "udp", 9999, "accept")]) == 2


def test_neutron_style_pair(topo):
    """assert_connection / assert_no_connection on one document, the reference agreeing."""
    doc, _ = both_ends_judge(topo)
    topo.apply(doc)
    state = topo.state(doc)
    for version in (4, 6):
        src, dst = topo.addr("i3", version), topo.addr("i2", version)
        assert policy_verdict(state, "i3", "i2", packet_for(src, dst, "tcp", 80))[0] == "accept"
        assert_connection(topo, "i3", "i2", "tcp", 80, version)
        assert policy_verdict(state, "i1", "i2", packet_for(topo.addr("i1", version), dst, "tcp", 80))[0] == "drop"
        assert_no_connection(topo, "i1", "i2", "tcp", 80, version)
