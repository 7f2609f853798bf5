"""SPEC §3, clause by clause, with real crafted packets between containers.

Every probe is a TCP SYN, UDP datagram, ICMP or ICMPv6 echo crafted with scapy in the
sending container, carrying a unique marker; the verdict is read from what the
RECEIVING container captured (and, for delivered new flows, from the answer the sender
captured). States are in states.py (BASE: 5 local instances, 1 remote, 6 groups).
"""
import pytest

from states import BASE, set_groups, variant, without_rule
from topology import REMOTE4, REMOTE6, Hold, Probe as P, check


@pytest.fixture(autouse=True)
def base(hv):
    """Every test starts from BASE (applied by the daemon when it runs, else by
    `secgroup-agent apply`)."""
    hv.apply(BASE)
    yield


# -- 1. connection state -----------------------------------------------------------
def test_state_replies_pass_and_invalid_packets_drop(topo):
    check(topo, [
        # i3 may open flows outward (custom group: egress open), and their answers come
        # back although nothing in i3's ingress list accepts them
        (P("i3", "outside", "tcp", 80), True),
        (P("i3", "outside", "udp", 9999), True),
        (P("i3", "outside", "icmp", v6=True), True),
        (P("i3", "outside", "tcp", 80, v6=True), True),
        # ... whereas the same flows opened from outside are dropped
        (P("outside", "i3", "tcp", 80), False),
        (P("outside", "i3", "udp", 9999), False),
        (P("outside", "i3", "icmp", v6=True), False),
        # a TCP packet of no connection (ACK without SYN) is invalid: dropped even to
        # an open port, in both directions
        (P("outside", "i1", "tcp", 80, flags="A"), False),
        (P("outside", "i1", "tcp", 80, v6=True, flags="PA"), False),
        (P("i1", "outside", "tcp", 80, flags="A"), False),
        (P("outside", "i1", "tcp", 80), True),          # control: a SYN passes
    ])


# -- 2. essentials -------------------------------------------------------------------
def test_anti_spoofing_drops_foreign_source_addresses(topo):
    check(topo, [
        (P("i1", "i2", "tcp", 80), True),                                   # control
        (P("i1", "i2", "tcp", 80, src_addr="10.0.0.99"), False),            # made up
        (P("i1", "i2", "udp", 9999, src_addr="10.0.0.12"), False),          # the peer's own
        (P("i1", "outside", "icmp", src_addr="192.0.2.77"), False),
        (P("i1", "i2", "udp", 9999, v6=True, src_addr="fd00::99"), False),
        (P("i1", "outside", "tcp", 80, v6=True, src_addr="fd00::12"), False),
        (P("b1", "b2", "tcp", 22), True),                                   # bridged control
        (P("b1", "b2", "tcp", 22, src_addr="10.1.0.99"), False),
        (P("b1", "b2", "udp", 9999, v6=True, src_addr="fd01::99"), False),
    ])


def test_neighbour_discovery_passes_where_icmpv6_is_closed(topo, hv):
    # b1 and b2 only in sg-db (inner drop): no ICMPv6 between them, only udp/5433
    hv.apply(variant(**{"instance:b1": set_groups("sg-db"), "instance:b2": set_groups("sg-db")}))
    for b in ("b1", "b2"):
        topo.node(b).exec("ip", "-6", "neigh", "flush", "dev", "eth0")
    check(topo, [
        (P("b1", "b2", "udp", 5433, v6=True), True),      # needs NS/NA across the bridge
        (P("b2", "b1", "udp", 5433, v6=True), True),
        (P("b1", "b2", "icmp", v6=True), False),          # an echo request is not ND
        (P("b1", "b2", "tcp", 22, v6=True), False),
    ])


# -- 3. intra-group ------------------------------------------------------------------
def test_intra_group_overrides_user_drops_both_directions(topo):
    cases = []
    for v6 in (False, True):
        cases += [
            # sg-web drops all of 10/8 and fd00::/8 at priority 1, yet members meet
            (P("i1", "i2", "tcp", 9999, v6=v6), True),
            (P("i2", "i1", "udp", 9999, v6=v6), True),
            (P("i1", "i2", "icmp", v6=v6), True),
            # a non-member of 10/8 is caught by that drop — even for port 80, which
            # web-http accepts at the same priority (deny-first)
            (P("i3", "i1", "tcp", 80, v6=v6), False),
            (P("outside", "i1", "tcp", 80, v6=v6), True),
        ]
    check(topo, cases)


def test_inner_access_drop_and_mixed_membership(topo):
    check(topo, [
        # i3 and b1 share only sg-db (inner drop): user rules decide
        (P("i3", "b1", "tcp", 9999), False),
        (P("b1", "i3", "icmp", v6=True), False),
        (P("i3", "b1", "udp", 5433), True),                 # db-replication: from sg-db
        (P("b1", "i3", "udp", 5433, v6=True), True),
        # b1 and b2 share sg-db (drop) and sg-ops (accept): they reach each other
        (P("b1", "b2", "tcp", 9999), True),
        (P("b2", "b1", "udp", 9002, v6=True), True),
    ])


# -- 4. user rules -------------------------------------------------------------------
def test_priority_and_deny_first_across_groups(topo):
    cases = []
    for v6 in (False, True):
        cases += [
            (P("outside", "i3", "tcp", 9000, v6=v6), True),    # sg-edge-a accept, prio 5
            (P("outside", "i3", "tcp", 9001, v6=v6), False),   # sg-edge-b drop, prio 5: drop first
            (P("outside", "i3", "tcp", 9002, v6=v6), True),
            (P("outside", "i3", "udp", 7003, v6=v6), True),    # accept prio 1 beats drop prio 2
            (P("outside", "i3", "udp", 7002, v6=v6), False),
            (P("i1", "outside", "tcp", 25, v6=v6), False),     # egress user drop (no SMTP)
            (P("i1", "outside", "tcp", 80, v6=v6), True),
        ]
    check(topo, cases)


def test_both_ends_judge(topo, hv):
    # i1's egress may not reach the edge ports inside 10/8, although i3 accepts them
    def no_edge(group):
        group["rules"].append({"id": "web-no-edge", "direction": "egress", "policy": "drop",
                               "protocol": "tcp", "port_range": "9000/9002",
                               "dest_cidr": "10.0.0.0/8"})
    hv.apply(variant(**{"group:sg-web": no_edge}))
    check(topo, [
        (P("i1", "i3", "tcp", 9000), False),           # sender's egress drops it
        (P("outside", "i3", "tcp", 9000), True),       # receiver accepts it
        (P("i1", "i3", "tcp", 9000, v6=True), True),   # the drop is IPv4-only
        (P("i3", "i1", "tcp", 80), False),             # receiver's ingress drops it
    ])


# -- 5. default rules ----------------------------------------------------------------
def test_default_group_rules(topo, hv):
    cases = [
        (P("outside", "b1", "icmp"), True),
        (P("outside", "b1", "icmp", v6=True), True),
        (P("outside", "b1", "tcp", 22), True),
        (P("outside", "b1", "tcp", 3389, v6=True), True),
        (P("outside", "b1", "tcp", 80), False),           # allow_http: false
        (P("outside", "b1", "tcp", 443, v6=True), False),
        (P("outside", "b1", "udp", 9999), False),
        (P("b1", "outside", "udp", 9999, v6=True), True),  # egress open
        (P("outside", "i3", "tcp", 22), False),            # custom groups add no ingress
    ]
    check(topo, cases)

    def http(group):
        group["allow_http"] = True
    hv.apply(variant(**{"group:sg-ops": http}))
    check(topo, [(P("outside", "b1", "tcp", 80), True), (P("outside", "b1", "tcp", 443), False)])


# -- 6. final verdict / enterprise ---------------------------------------------------
def test_enterprise_instance_is_closed_until_a_rule_opens_it(topo, hv):
    hv.apply(variant(**{"instance:i2": set_groups("sg-locked")}))
    check(topo, [
        (P("i2", "outside", "tcp", 80), False),
        (P("i2", "outside", "udp", 9999, v6=True), False),
        (P("outside", "i2", "icmp"), False),
        (P("i1", "i2", "tcp", 9999), False),             # no longer a fellow member
    ])

    def open_web(group):
        group["rules"] = [{"id": "out-http", "direction": "egress", "protocol": "tcp",
                           "port_range": "80/80", "dest_cidr": "0.0.0.0/0"}]
    hv.apply(variant(**{"instance:i2": set_groups("sg-locked"), "group:sg-locked": open_web}))
    check(topo, [
        (P("i2", "outside", "tcp", 80), True),
        (P("i2", "outside", "tcp", 443), False),
        (P("i2", "outside", "tcp", 80, v6=True), False),   # an IPv4 CIDR
    ])


# -- peers: groups, remote members -------------------------------------------------
def test_group_peer_and_remote_member(topo, hv):
    cases = []
    for v6, remote in ((False, REMOTE4), (True, REMOTE6)):
        cases += [
            (P("i1", "i3", "tcp", 5432, v6=v6), True),                   # member of sg-web
            (P("b1", "i3", "tcp", 5432, v6=v6), False),                  # not a member
            (P("outside", "i3", "tcp", 5432, v6=v6, src_addr=remote), True),   # remote member
            (P("outside", "i3", "tcp", 5432, v6=v6), False),             # outside itself
            (P("outside", "i1", "udp", 9999, v6=v6, src_addr=remote), True),   # intra-group, remote
        ]
    check(topo, cases)
    # r1 leaves sg-web: its address stops being a peer (a set change)
    hv.apply(variant(**{"instance:r1": set_groups("sg-ops")}))
    check(topo, [
        (P("outside", "i3", "tcp", 5432, src_addr=REMOTE4), False),
        (P("outside", "i1", "udp", 9999, v6=True, src_addr=REMOTE6), False),
        (P("i1", "i3", "tcp", 5432), True),
    ])


# -- revocation ----------------------------------------------------------------------
def test_revocation_cuts_live_connections(topo, hv):
    by_rule = Hold(topo, "outside", "i1", 7001)                    # web-hold4
    by_member = Hold(topo, "outside", "i3", 5432, src=REMOTE4)      # db-from-web via r1
    kept = Hold(topo, "outside", "i1", 80)                          # web-http4 stays
    try:
        for h in (by_rule, by_member, kept):
            h.wait_up()
        hv.apply(variant(**{"group:sg-web": without_rule("web-hold4")}))
        assert "BROKEN" in by_rule.wait_broken()
        n = kept.assert_alive(0, "a connection the new state still allows")
        check(topo, [(P("outside", "i1", "tcp", 7001), False), (P("outside", "i1", "tcp", 7001, v6=True), True)])

        hv.apply(variant(**{"group:sg-web": without_rule("web-hold4"), "instance:r1": set_groups("sg-ops")}))
        assert "BROKEN" in by_member.wait_broken()
        kept.assert_alive(n, "a connection the new state still allows")
    finally:
        for h in (by_rule, by_member, kept):
            h.stop()
