"""Revocation (SPEC §3) through the real kernel: an established TCP connection that a
new state no longer allows is cut within about a second of the apply, while one the new
state still allows survives; `revoke_connections: false` leaves it alone. The
connections are `python -m sandbox.probe hold` clients exchanging a line with the
receiver's responder every 100 ms, IPv4 and IPv6 at once; the conntrack entries are
read with agent.kernel.conntrack.list_flows inside the hypervisor namespace.

Base state: i1 (sg-srv, inner_access accept) admits tcp/7001 and tcp/7002 from
anywhere; i2 is in sg-srv too, so i2 -> i1:7003 passes only by the intra-group stage;
i3 (sg-cli) reaches i1:7001 by the rule. The survivor is always out -> i1:7002.
"""
from __future__ import annotations

import time

import pytest

from khelpers import group, rule

pytestmark = pytest.mark.kernel

CUT_WITHIN = 1.0       # seconds after the apply returns
WATCH = 1.3            # how long the survivors are watched after the apply


def rev_doc(t, allow_7001: bool = True, i2_in_srv: bool = True, with_i3: bool = True,
            revoke: bool = True, i3_in_peer: bool = False) -> dict:
    """i1 also admits tcp/8081 from the members of sg-peer (a peer group: its members are
    the shared set grp4/grp6_sg-peer), which i3 joins with `i3_in_peer`."""
    rules = [rule("ingress", "tcp", ports=f"{p}/{p}", rid=f"allow-{p}-v{v}", cidr=c)
             for p in ((7001, 7002) if allow_7001 else (7002,)) for v, c in ((4, "0.0.0.0/0"), (6, "::/0"))]
    rules.append({"id": "from-peer", "direction": "ingress", "protocol": "tcp", "port_range": "8081/8081",
                  "source_group": "sg-peer"})
    members = {"i1": ["sg-srv"], "i2": ["sg-srv", "sg-cli"] if i2_in_srv else ["sg-cli"],
               "i3": ["sg-cli"] + ["sg-peer"] * i3_in_peer}
    if not with_i3:
        del members["i3"]
    return t.doc([group("sg-srv", *rules, inner_access="accept"), group("sg-cli"),
                  group("sg-peer", inner_access="drop")], members, revoke_connections=revoke)


def run_change(topo, victims: list[tuple], new_doc: dict, expect_cut: bool, base: dict | None = None) -> None:
    """Hold every victim (src, dst, port) and the survivor out -> i1:7002 over IPv4 and
    IPv6 under `base`, apply `new_doc`, then check the holds and the conntrack entries."""
    topo.apply(base or rev_doc(topo))
    holds = {}
    try:
        for version in (4, 6):
            for src, dst, port in victims:
                holds[("victim", src, port, version)] = topo.hold(src, dst, port, version)
            holds[("survivor", "out", 7002, version)] = topo.hold("out", "i1", 7002, version)
        for h in holds.values():
            h.wait_up()
        before = set(topo.flows())
        for key, h in holds.items():
            assert h.flow() in before, f"{key}: no conntrack entry {h.flow()} in {sorted(before, key=str)}"
        start = time.monotonic()
        topo.apply(new_doc)
        end = time.monotonic()
        time.sleep(WATCH)
        after = set(topo.flows())
        problems = []
        for key, h in holds.items():
            cut = key[0] == "victim" and expect_cut
            if cut:
                if h.broken_at is None:
                    problems.append(f"{key}: still alive {WATCH}s after the apply")
                elif not start <= h.broken_at <= end + CUT_WITHIN:
                    problems.append(f"{key}: broke at apply{h.broken_at - end:+.2f}s ({h.broken_why})")
                if h.flow() in after:
                    problems.append(f"{key}: conntrack entry {h.flow()} still there")
            else:
                if not h.alive_after(end + WATCH - 0.3):
                    problems.append(f"{key}: should survive, broke at apply{(h.broken_at or 0) - end:+.2f}s "
                                    f"({h.broken_why})")
                if h.flow() not in after:
                    problems.append(f"{key}: conntrack entry {h.flow()} is gone")
        assert not problems, f"({topo.attachment}, apply took {end - start:.2f}s)\n" + "\n".join(problems)
    finally:
        for h in holds.values():
            h.close()


def test_rule_removed(topo):
    """The rule admitting out -> i1:7001 is removed: that connection is cut."""
    run_change(topo, [("out", "i1", 7001)], rev_doc(topo, allow_7001=False), expect_cut=True)


def test_instance_left_group(topo):
    """i2 leaves sg-srv: i2 -> i1:7003 (admitted only as a fellow member) is cut."""
    run_change(topo, [("i2", "i1", 7003)], rev_doc(topo, i2_in_srv=False), expect_cut=True)


def test_interface_removed(topo):
    """i3 (and so its interface) leaves the config: i3 -> i1:7001 is cut. The peer is a
    managed instance on purpose: an interface the agent no longer manages is not
    filtered at all (the agent owns only its tables), so a flow between it and an
    unmanaged peer would be picked up again by conntrack's loose TCP tracking; the tap
    of a removed instance normally disappears with it."""
    run_change(topo, [("i3", "i1", 7001)], rev_doc(topo, with_i3=False), expect_cut=True)


def test_member_left_peer_group(topo):
    """i3 joins sg-peer (only the shared set changes) and opens i3 -> i1:8081, admitted by
    the group-peer rule; i3 leaves sg-peer: that connection is cut, the others stay."""
    run_change(topo, [("i3", "i1", 8081)], rev_doc(topo), expect_cut=True,
               base=rev_doc(topo, i3_in_peer=True))


def test_member_still_in_peer_group_keeps_its_connection(topo):
    """The same connection survives a change that keeps i3 in sg-peer (another rule goes)."""
    run_change(topo, [("i3", "i1", 8081)], rev_doc(topo, allow_7001=False, i3_in_peer=True), expect_cut=False,
               base=rev_doc(topo, i3_in_peer=True))


def test_revocation_off(topo):
    """revoke_connections: false -- the rule goes, the established connection stays."""
    run_change(topo, [("out", "i1", 7001)], rev_doc(topo, allow_7001=False, revoke=False), expect_cut=False)
