"""SPEC §3, clause by clause: small in-memory documents, one packet each, the expected
verdict and what decides it (stage of §3, group, rule). Table-driven: add a row per case."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Optional

import pytest
from semantics_helpers import (
    decide,
    doc,
    egress,
    group,
    ingress,
    inst,
    nic,
    pkt,
    state_of,
)

from agent.errors import InvalidInput
from agent.model.objects import DEFAULT_PRIORITY
from agent.model.validate import validate_document
from agent.policy.effective import Packet, build_effective_list, evaluate
from agent.policy.explain import explain, local_interface

# Addresses used throughout. A, B, C are local VPC instances; R lives on another host.
A4, A6, A_MAC = "10.0.0.1", "fd00::1", "52:54:00:00:00:0a"
B4, B6 = "10.0.0.2", "fd00::2"
C4, C6 = "10.0.0.3", "fd00::3"
R4, R6 = "10.0.0.9", "fd00::9"
OUT4, OUT6 = "192.0.2.1", "2001:db8::1"


def nic_a(**kw) -> dict:
    return nic("tap-a", A4, A6, mac=A_MAC, **kw)


def a_alone(*groups: dict, **top) -> dict:
    """Instance A (tap-a) in every given group."""
    return doc(list(groups), [inst("i-a", [g["id"] for g in groups], nic_a())], **top)


def a_and_b(groups: list[dict], a_groups: list[str], b_groups: list[str], **top) -> dict:
    return doc(groups, [inst("i-a", a_groups, nic_a()), inst("i-b", b_groups, nic("tap-b", B4, B6))],
               **top)


@dataclass(frozen=True)
class Case:
    id: str
    doc: dict
    iface: str
    direction: str
    packet: Packet
    expect: str                      # "verdict@stage"
    by: Optional[str] = None         # "group" or "group/rule" that decides


CASES: list[Case] = []


def case(id: str, document: dict, iface: str, direction: str, packet: Packet, expect: str,
         by: Optional[str] = None) -> None:
    CASES.append(Case(id, document, iface, direction, packet, expect, by))


def ing(src: str, dst: str = A4, **kw) -> Packet:
    return pkt(src, dst, **kw)


def eg(dst: str, src: str = A4, **kw) -> Packet:
    return pkt(src, dst, **kw)


# --- §3.1 connection state ----------------------------------------------------------------
ENT_EMPTY = a_alone(group("sg-ent", type="enterprise"))
DENY_ALL = a_alone(group("sg-deny", ingress(policy="drop"), egress(policy="drop"),
                         ingress(policy="drop", src="::/0"), egress(policy="drop", dst="::/0")))
OPEN_ALL = a_alone(group("sg-open", ingress(), egress(), ingress(src="::/0"), egress(dst="::/0")))
case("established-ingress-despite-closed", ENT_EMPTY, "tap-a", "ingress",
     ing(OUT4, dport=5000, state="established"), "accept@state")
case("established-egress-despite-drop-rules", DENY_ALL, "tap-a", "egress",
     eg(OUT4, dport=443, state="established"), "accept@state")
case("related-ingress-despite-drop-rules", DENY_ALL, "tap-a", "ingress",
     ing(OUT6, A6, protocol="icmpv6", icmp_type=1, state="related"), "accept@state")
case("invalid-dropped-despite-accept-all", OPEN_ALL, "tap-a", "ingress",
     ing(OUT4, dport=80, state="invalid"), "drop@state")
case("invalid-dropped-egress", OPEN_ALL, "tap-a", "egress",
     eg(OUT4, dport=80, state="invalid"), "drop@state")

# --- §3.2 essentials: IPv6 neighbour discovery ----------------------------------------------
def nd(packet: Packet, target: str) -> Packet:
    return replace(packet, nd_target=ipaddress.ip_address(target))


for nd_type in (133, 134, 135, 136):
    case(f"nd-{nd_type}-ingress-enterprise", ENT_EMPTY, "tap-a", "ingress",
         ing("fe80::2", "ff02::1", protocol="icmpv6", icmp_type=nd_type), "accept@essentials")
for nd_type in (133, 135):
    case(f"nd-{nd_type}-egress-enterprise", ENT_EMPTY, "tap-a", "egress",
         eg("ff02::2", "fe80::1", protocol="icmpv6", icmp_type=nd_type), "accept@essentials")
case("nd-despite-user-drop", DENY_ALL, "tap-a", "ingress",
     ing(B6, A6, protocol="icmpv6", icmp_type=135), "accept@essentials")
case("nd-dad-from-unspecified-source", ENT_EMPTY, "tap-a", "egress",
     nd(eg("ff02::1:ff00:1", "::", protocol="icmpv6", icmp_type=135), A6), "accept@essentials")
case("nd-136-egress-own-target", ENT_EMPTY, "tap-a", "egress",
     nd(eg("ff02::1", A6, protocol="icmpv6", icmp_type=136), A6), "accept@essentials")
case("nd-136-egress-link-local-target", ENT_EMPTY, "tap-a", "egress",
     nd(eg("fe80::2", "fe80::1", protocol="icmpv6", icmp_type=136), "fe80::1"), "accept@essentials")

# --- §3.2 essentials: first-hop spoofing guard (egress) -----------------------------------
for nd_type in (134, 137):      # router advertisement, redirect: even where rules open all
    case(f"guard-{nd_type}-egress-dropped", OPEN_ALL, "tap-a", "egress",
         eg("ff02::1", "fe80::1", protocol="icmpv6", icmp_type=nd_type), "drop@essentials")
case("guard-na-for-a-neighbours-address", OPEN_ALL, "tap-a", "egress",
     nd(eg("ff02::1", A6, protocol="icmpv6", icmp_type=136), B6), "drop@essentials")
case("guard-dad-for-a-neighbours-address", OPEN_ALL, "tap-a", "egress",
     nd(eg("ff02::1:ff00:2", "::", protocol="icmpv6", icmp_type=135), B6), "drop@essentials")
case("guard-ns-from-a-neighbours-address", OPEN_ALL, "tap-a", "egress",
     nd(eg("ff02::1:ff00:3", B6, protocol="icmpv6", icmp_type=135), C6), "drop@essentials")
case("guard-dhcp-offer", OPEN_ALL, "tap-a", "egress",
     eg("255.255.255.255", A4, protocol="udp", sport=67, dport=68), "drop@essentials")
case("guard-dhcpv6-reply", OPEN_ALL, "tap-a", "egress",
     eg("fe80::2", "fe80::1", protocol="udp", sport=547, dport=546), "drop@essentials")
case("guard-dhcp-discover-passes", ENT_EMPTY, "tap-a", "egress",
     eg("255.255.255.255", "0.0.0.0", protocol="udp", sport=68, dport=67), "accept@essentials")
case("guard-dhcpv6-solicit-passes", ENT_EMPTY, "tap-a", "egress",
     eg("ff02::1:2", "fe80::1", protocol="udp", sport=546, dport=547), "accept@essentials")
case("guard-dhcp-offer-ingress-from-the-host", OPEN_ALL, "tap-a", "ingress",
     ing("10.0.0.254", A4, protocol="udp", sport=67, dport=68), "accept@user")
case("guard-off-passes-an-ra", a_alone(group("sg-c")) | {"instances": [
     inst("i-a", ["sg-c"], nic_a(spoofing_guard=False))]}, "tap-a", "egress",
     eg("ff02::1", "fe80::1", protocol="icmpv6", icmp_type=134), "accept@essentials")
case("guard-off-no-anti-spoofing", a_alone(group("sg-c")) | {"instances": [
     inst("i-a", ["sg-c"], nic_a(spoofing_guard=False))]}, "tap-a", "egress",
     eg(OUT4, src=B4, dport=80), "accept@default")
ALLOWED = a_alone(group("sg-c")) | {"instances": [
    inst("i-a", ["sg-c"], nic_a(allowed_addresses=["10.0.0.100", {"address": "fd00::100", "mac": "52:54:00:00:00:aa"}]))]}
case("allowed-address-source", ALLOWED, "tap-a", "egress", eg(OUT4, src="10.0.0.100", dport=80), "accept@default")
case("allowed-address-mac", ALLOWED, "tap-a", "egress",
     eg(OUT6, src="fd00::100", dport=80, mac="52:54:00:00:00:aa"), "accept@default")
case("allowed-address-na", ALLOWED, "tap-a", "egress",
     nd(eg("ff02::1", A6, protocol="icmpv6", icmp_type=136), "fd00::100"), "accept@essentials")
case("not-allowed-source", ALLOWED, "tap-a", "egress", eg(OUT4, src="10.0.0.101", dport=80), "drop@essentials")
case("icmpv6-137-is-not-nd", ENT_EMPTY, "tap-a", "ingress",
     ing("fe80::2", A6, protocol="icmpv6", icmp_type=137), "drop@final")
case("icmpv6-echo-is-not-nd", ENT_EMPTY, "tap-a", "ingress",
     ing(OUT6, A6, protocol="icmpv6", icmp_type=128), "drop@final")

# --- §3.2 essentials: anti-spoofing (egress) ------------------------------------------------
CUSTOM_EMPTY = a_alone(group("sg-c"))
case("spoof-wrong-ipv4-source", CUSTOM_EMPTY, "tap-a", "egress", eg(OUT4, src=B4, dport=80),
     "drop@essentials")
case("spoof-wrong-ipv6-source", CUSTOM_EMPTY, "tap-a", "egress", eg(OUT6, src=B6, dport=80),
     "drop@essentials")
case("spoof-own-ipv4-source", CUSTOM_EMPTY, "tap-a", "egress", eg(OUT4, dport=80), "accept@default")
case("spoof-own-ipv6-source", CUSTOM_EMPTY, "tap-a", "egress", eg(OUT6, src=A6, dport=80),
     "accept@default")
case("spoof-link-local-source-allowed", CUSTOM_EMPTY, "tap-a", "egress",
     eg("fe80::2", src="fe80::1234", dport=80), "accept@default")
case("spoof-wrong-mac", CUSTOM_EMPTY, "tap-a", "egress",
     eg(OUT4, dport=80, mac="52:54:00:00:00:0b"), "drop@essentials")
case("spoof-right-mac-any-case", CUSTOM_EMPTY, "tap-a", "egress",
     eg(OUT4, dport=80, mac=A_MAC.upper()), "accept@default")
case("spoof-no-mac-configured-any-mac-passes",
     doc([group("sg-c")], [inst("i-a", ["sg-c"], nic("tap-a", A4))]), "tap-a", "egress",
     eg(OUT4, dport=80, mac="52:54:00:00:00:0b"), "accept@default")
case("spoof-not-on-ingress", CUSTOM_EMPTY | {"security_groups": [group("sg-c", ingress())]},
     "tap-a", "ingress", ing(OUT4, dst="10.9.9.9", dport=80), "accept@user")
case("anti-spoofing-off-wrong-ip", CUSTOM_EMPTY | {"anti_spoofing": False}, "tap-a", "egress",
     eg(OUT4, src=B4, dport=80), "accept@default")
case("anti-spoofing-off-wrong-mac", CUSTOM_EMPTY | {"anti_spoofing": False}, "tap-a", "egress",
     eg(OUT4, dport=80, mac="52:54:00:00:00:0b"), "accept@default")

# --- §3.3 intra-group ---------------------------------------------------------------------
APP_DENY = group("sg-app", ingress(policy="drop"), egress(policy="drop"),
                 ingress(policy="drop", src="::/0"), egress(policy="drop", dst="::/0"))
INTRA = a_and_b([APP_DENY], ["sg-app"], ["sg-app"])
case("intra-overrides-user-drop-ingress", INTRA, "tap-a", "ingress", ing(B4, dport=5432),
     "accept@intra-group", "sg-app")
case("intra-overrides-user-drop-ingress-v6", INTRA, "tap-a", "ingress", ing(B6, A6, protocol="udp", dport=53),
     "accept@intra-group", "sg-app")
case("intra-overrides-user-drop-egress", INTRA, "tap-a", "egress", eg(B4, protocol="gre"),
     "accept@intra-group", "sg-app")
case("intra-overrides-user-drop-b-side", INTRA, "tap-b", "ingress", ing(A4, B4, dport=22),
     "accept@intra-group", "sg-app")
case("intra-not-for-outsiders", INTRA, "tap-a", "ingress", ing(OUT4, dport=5432), "drop@user")
case("intra-includes-own-addresses", INTRA, "tap-a", "egress", eg(A4, dport=80),
     "accept@intra-group", "sg-app")

DB_DROP = group("sg-db", ingress("tcp", ports="5433/5433", src_group="sg-db"), inner_access="drop")
INNER_DROP = a_and_b([DB_DROP], ["sg-db"], ["sg-db"])
case("inner-drop-user-rule-accepts", INNER_DROP, "tap-a", "ingress", ing(B4, dport=5433),
     "accept@user", "sg-db")
case("inner-drop-nothing-accepts", INNER_DROP, "tap-a", "ingress", ing(B4, dport=22), "drop@final")
case("inner-drop-egress-still-open-by-default", INNER_DROP, "tap-a", "egress", eg(B4, dport=22),
     "accept@default")
MIXED = a_and_b([group("sg-x"), group("sg-y", ingress(policy="drop", src="10.0.0.0/8"),
                                       inner_access="drop")],
                ["sg-x", "sg-y"], ["sg-y", "sg-x"])
case("shared-accept-and-drop-groups-reach", MIXED, "tap-a", "ingress", ing(B4, dport=22),
     "accept@intra-group", "sg-x")
case("shared-accept-and-drop-groups-others-dropped", MIXED, "tap-a", "ingress", ing("10.0.0.7", dport=22),
     "drop@user", "sg-y")
ENT_PAIR = a_and_b([group("sg-ent", type="enterprise")], ["sg-ent"], ["sg-ent"])
case("enterprise-members-isolated", ENT_PAIR, "tap-a", "ingress", ing(B4, dport=22), "drop@final")
case("enterprise-members-isolated-egress", ENT_PAIR, "tap-a", "egress", eg(B4, dport=22), "drop@final")

# --- §3.4 user rules: order ----------------------------------------------------------------
TCP80 = dict(protocol="tcp", ports="80/80")
case("equal-priority-drop-wins-in-group",
     a_alone(group("sg-a", ingress(**TCP80, priority=5), ingress(**TCP80, priority=5, policy="drop"))),
     "tap-a", "ingress", ing(OUT4, dport=80), "drop@user", "sg-a")
case("equal-priority-drop-wins-across-groups",
     a_alone(group("a-accepts", ingress(**TCP80, priority=5)),
             group("z-drops", ingress(**TCP80, priority=5, policy="drop", src="192.0.2.0/24"))),
     "tap-a", "ingress", ing(OUT4, dport=80), "drop@user", "z-drops")
case("smaller-number-accept-beats-drop",
     a_alone(group("sg-a", ingress(**TCP80, priority=2, policy="drop"), ingress(**TCP80, priority=1))),
     "tap-a", "ingress", ing(OUT4, dport=80), "accept@user", "sg-a")
case("smaller-number-drop-beats-accept",
     a_alone(group("sg-a", ingress(**TCP80, priority=1, policy="drop"), ingress(**TCP80, priority=2))),
     "tap-a", "ingress", ing(OUT4, dport=80), "drop@user", "sg-a")
case("smaller-number-accept-beats-drop-across-groups",
     a_alone(group("a-drops", ingress(**TCP80, priority=100, policy="drop")),
             group("z-accepts", ingress(**TCP80, priority=99))),
     "tap-a", "ingress", ing(OUT4, dport=80), "accept@user", "z-accepts")
POOLED = a_alone(group("g1", {**ingress(**TCP80, priority=10), "id": "g1-wide"},
                       {**ingress(**TCP80, priority=1, src="10.1.0.0/16"), "id": "g1-narrow"}),
                 group("g2", {**ingress(**TCP80, priority=5, policy="drop", src="10.0.0.0/8"), "id": "g2-ten"}))
case("pooled-priority-1-first", POOLED, "tap-a", "ingress", ing("10.1.2.3", dport=80), "accept@user", "g1/g1-narrow")
case("pooled-priority-5-second", POOLED, "tap-a", "ingress", ing("10.2.0.1", dport=80), "drop@user", "g2/g2-ten")
case("pooled-priority-10-third", POOLED, "tap-a", "ingress", ing(OUT4, dport=80), "accept@user", "g1/g1-wide")
case("user-drop-at-100-beats-default-110",
     a_alone(group("sg-d", ingress("tcp", ports="22/22", policy="drop", priority=100), type="default")),
     "tap-a", "ingress", ing(OUT4, dport=22), "drop@user", "sg-d")

# --- §3.5 default rules, §3.6 final --------------------------------------------------------
DEFAULT = a_alone(group("sg-def", type="default"))
HTTP = a_alone(group("sg-def", type="default", allow_http=True))
HTTPS = a_alone(group("sg-def", type="default", allow_https=True))
case("default-icmp", DEFAULT, "tap-a", "ingress", ing(OUT4, protocol="icmp", icmp_type=8), "accept@default", "sg-def")
case("default-icmpv6", DEFAULT, "tap-a", "ingress", ing(OUT6, A6, protocol="icmpv6", icmp_type=128),
     "accept@default", "sg-def")
case("default-ssh", DEFAULT, "tap-a", "ingress", ing(OUT4, dport=22), "accept@default", "sg-def")
case("default-ssh-v6", DEFAULT, "tap-a", "ingress", ing(OUT6, A6, dport=22), "accept@default", "sg-def")
case("default-rdp", DEFAULT, "tap-a", "ingress", ing(OUT4, dport=3389), "accept@default", "sg-def")
case("default-udp-22-closed", DEFAULT, "tap-a", "ingress", ing(OUT4, protocol="udp", dport=22), "drop@final")
case("default-no-http", DEFAULT, "tap-a", "ingress", ing(OUT4, dport=80), "drop@final")
case("default-no-https", DEFAULT, "tap-a", "ingress", ing(OUT4, dport=443), "drop@final")
case("default-gre-closed", DEFAULT, "tap-a", "ingress", ing(OUT4, protocol="gre"), "drop@final")
case("default-egress-open", DEFAULT, "tap-a", "egress", eg(OUT4, protocol="udp", dport=53), "accept@default")
case("allow-http", HTTP, "tap-a", "ingress", ing(OUT4, dport=80), "accept@default", "sg-def")
case("allow-http-not-https", HTTP, "tap-a", "ingress", ing(OUT4, dport=443), "drop@final")
case("allow-https", HTTPS, "tap-a", "ingress", ing(OUT6, A6, dport=443), "accept@default", "sg-def")
case("allow-https-not-http", HTTPS, "tap-a", "ingress", ing(OUT4, dport=80), "drop@final")
case("custom-empty-denies-ssh", CUSTOM_EMPTY, "tap-a", "ingress", ing(OUT4, dport=22), "drop@final")
case("custom-empty-denies-icmp", CUSTOM_EMPTY, "tap-a", "ingress", ing(OUT4, protocol="icmp", icmp_type=8),
     "drop@final")
case("custom-empty-allows-egress-v4", CUSTOM_EMPTY, "tap-a", "egress", eg(OUT4, dport=443), "accept@default", "sg-c")
case("custom-empty-allows-egress-v6-gre", CUSTOM_EMPTY, "tap-a", "egress", eg(OUT6, src=A6, protocol="gre"),
     "accept@default", "sg-c")
case("enterprise-empty-denies-ingress", ENT_EMPTY, "tap-a", "ingress", ing(OUT4, dport=22), "drop@final")
case("enterprise-empty-denies-egress", ENT_EMPTY, "tap-a", "egress", eg(OUT4, dport=443), "drop@final")
case("enterprise-egress-rule-opens",
     a_alone(group("sg-ent", egress("tcp", ports="443/443"), type="enterprise")),
     "tap-a", "egress", eg(OUT4, dport=443), "accept@user", "sg-ent")
case("enterprise-egress-rule-opens-only-that",
     a_alone(group("sg-ent", egress("tcp", ports="443/443"), type="enterprise")),
     "tap-a", "egress", eg(OUT4, dport=80), "drop@final")
case("explicit-egress-drop-before-default-open",
     a_alone(group("sg-c", egress("tcp", ports="25/25", policy="drop", priority=100))),
     "tap-a", "egress", eg(OUT4, dport=25), "drop@user", "sg-c")

# --- peers: groups, remote members, prefix lists -------------------------------------------
PEERS = doc([group("sg-a", {**ingress("tcp", ports="5432/5432", src_group="sg-c"), "id": "from-c"},
                   {**egress("udp", ports="53/53", dst_group="sg-c", policy="drop"), "id": "no-dns-to-c"}),
             group("sg-c")],
            [inst("i-a", ["sg-a"], nic_a()), inst("i-c", ["sg-c"], nic("tap-c", C4, C6)),
             inst("i-r", ["sg-c"], nic("tap-r", R4, R6), host="hv-02")])
case("other-group-isolated", PEERS, "tap-a", "ingress", ing(C4, dport=22), "drop@final")
case("other-group-isolated-reverse", PEERS, "tap-c", "ingress", ing(A4, C4, dport=5432), "drop@final")
case("source-group-authorizes", PEERS, "tap-a", "ingress", ing(C4, dport=5432), "accept@user", "sg-a/from-c")
case("source-group-both-versions", PEERS, "tap-a", "ingress", ing(C6, A6, dport=5432), "accept@user",
     "sg-a/from-c")
case("source-group-includes-remote-member", PEERS, "tap-a", "ingress", ing(R4, dport=5432), "accept@user",
     "sg-a/from-c")
case("source-group-includes-remote-member-v6", PEERS, "tap-a", "ingress", ing(R6, A6, dport=5432),
     "accept@user", "sg-a/from-c")
case("source-group-not-outsiders", PEERS, "tap-a", "ingress", ing(OUT4, dport=5432), "drop@final")
case("dest-group-matches", PEERS, "tap-a", "egress", eg(R4, protocol="udp", dport=53), "drop@user",
     "sg-a/no-dns-to-c")
case("dest-group-not-others", PEERS, "tap-a", "egress", eg(OUT4, protocol="udp", dport=53), "accept@default")
PL = a_alone(group("sg-a", ingress("tcp", ports="22/22", src_pl="pl-office")),
             prefix_lists=[{"id": "pl-office", "entries": ["203.0.113.0/24", "2001:db8:1::/48"]}])
case("prefix-list-v4", PL, "tap-a", "ingress", ing("203.0.113.7", dport=22), "accept@user", "sg-a")
case("prefix-list-v6", PL, "tap-a", "ingress", ing("2001:db8:1::9", A6, dport=22), "accept@user", "sg-a")
case("prefix-list-outsider", PL, "tap-a", "ingress", ing("198.51.100.1", dport=22), "drop@final")
case("prefix-list-outsider-v6", PL, "tap-a", "ingress", ing("2001:db8:2::1", A6, dport=22), "drop@final")
ANY4_ONLY = a_alone(group("sg-a", ingress("tcp", ports="80/80", src="0.0.0.0/0")))
ANY6_ONLY = a_alone(group("sg-a", ingress("tcp", ports="80/80", src="::/0")))
case("ipv4-cidr-matches-ipv4", ANY4_ONLY, "tap-a", "ingress", ing(OUT4, dport=80), "accept@user")
case("ipv4-cidr-never-ipv6", ANY4_ONLY, "tap-a", "ingress", ing(OUT6, A6, dport=80), "drop@final")
case("ipv4-cidr-never-mapped-ipv6", ANY4_ONLY, "tap-a", "ingress", ing("::ffff:192.0.2.1", A6, dport=80),
     "drop@final")
case("ipv6-cidr-matches-ipv6", ANY6_ONLY, "tap-a", "ingress", ing(OUT6, A6, dport=80), "accept@user")
case("ipv6-cidr-never-ipv4", ANY6_ONLY, "tap-a", "ingress", ing(OUT4, dport=80), "drop@final")
case("ipv4-cidr-egress-never-ipv6",
     a_alone(group("sg-e", egress(dst="0.0.0.0/0"), type="enterprise")), "tap-a", "egress",
     eg(OUT6, src=A6, dport=80), "drop@final")

# --- protocols and ports ------------------------------------------------------------------
ALL = a_alone(group("sg-a", ingress("all", src="0.0.0.0/0"), ingress("all", src="::/0")))
for proto, extra in (("tcp", {"dport": 1}), ("udp", {"dport": 65535}), ("icmp", {"icmp_type": 8}),
                     ("gre", {}), ("132", {})):      # 132: SCTP, not in the protocol list
    case(f"all-matches-{proto}", ALL, "tap-a", "ingress", ing(OUT4, protocol=proto, **extra), "accept@user")
case("all-matches-icmpv6", ALL, "tap-a", "ingress", ing(OUT6, A6, protocol="icmpv6", icmp_type=128),
     "accept@user")
GRE = a_alone(group("sg-a", ingress("gre")))
case("gre-matches-gre", GRE, "tap-a", "ingress", ing(OUT4, protocol="gre"), "accept@user")
case("gre-not-tcp", GRE, "tap-a", "ingress", ing(OUT4, dport=80), "drop@final")
ICMP_GROUP = a_and_b([group("sg-a", ingress("icmp", src_group="sg-b")), group("sg-b")],
                     ["sg-a"], ["sg-b"])
case("icmp-group-peer-matches-icmp-v4", ICMP_GROUP, "tap-a", "ingress", ing(B4, protocol="icmp", icmp_type=8),
     "accept@user")
case("icmp-never-matches-icmpv6", ICMP_GROUP, "tap-a", "ingress",
     ing(B6, A6, protocol="icmpv6", icmp_type=128), "drop@final")
case("icmp-not-ipv4-protocol-1-over-ipv6", ICMP_GROUP, "tap-a", "ingress",
     ing(B6, A6, protocol="icmp", icmp_type=8), "drop@final")
ICMP6_GROUP = a_and_b([group("sg-a", ingress("icmpv6", src_group="sg-b")), group("sg-b")],
                      ["sg-a"], ["sg-b"])
case("icmpv6-group-peer-matches-icmpv6", ICMP6_GROUP, "tap-a", "ingress",
     ing(B6, A6, protocol="icmpv6", icmp_type=128), "accept@user")
case("icmpv6-never-matches-icmp", ICMP6_GROUP, "tap-a", "ingress", ing(B4, protocol="icmp", icmp_type=8),
     "drop@final")
RANGE = a_alone(group("sg-a", ingress("tcp", ports="1000/2000"),
                      ingress("udp", ports="1/65535", sports="1024/65535")))
for port, verdict in ((999, "drop@final"), (1000, "accept@user"), (1500, "accept@user"),
                      (2000, "accept@user"), (2001, "drop@final")):
    case(f"port-range-tcp-{port}", RANGE, "tap-a", "ingress", ing(OUT4, dport=port), verdict)
case("port-range-wrong-protocol", RANGE, "tap-a", "ingress", ing(OUT4, protocol="udp", dport=1500, sport=1),
     "drop@final")
for sport, verdict in ((1, "drop@final"), (1023, "drop@final"), (1024, "accept@user"),
                       (65535, "accept@user")):
    case(f"source-port-range-{sport}", RANGE, "tap-a", "ingress",
         ing(OUT4, protocol="udp", dport=53, sport=sport), verdict)
case("udp-full-range-low-edge", RANGE, "tap-a", "ingress", ing(OUT4, protocol="udp", dport=1, sport=5000),
     "accept@user")

# --- classic network ----------------------------------------------------------------------
K_IN, K_OUT, K2_IN, K2_OUT, M_IN = "10.1.0.1", "198.51.100.10", "10.1.0.2", "198.51.100.11", "10.1.0.5"
CLASSIC = doc(
    [group("sg-cl", {**ingress("tcp", ports="80/80", nic_type="internet"), "id": "web-internet"},
           {**ingress("tcp", ports="22/22"), "id": "ssh-intranet"}, network="classic"),
     group("sg-m", {**ingress("tcp", ports="443/443", src_group="sg-cl"), "id": "from-cl"},
           network="classic")],
    [inst("i-k", ["sg-cl"], nic("tap-k-in", K_IN), nic("tap-k-out", K_OUT, nic_type="internet"),
          network="classic"),
     inst("i-k2", ["sg-cl"], nic("tap-k2-in", K2_IN), nic("tap-k2-out", K2_OUT, nic_type="internet"),
          network="classic", host="hv-02"),
     inst("i-m", ["sg-m"], nic("tap-m-in", M_IN), network="classic")])
case("classic-internet-rule-on-internet", CLASSIC, "tap-k-out", "ingress", ing(OUT4, K_OUT, dport=80),
     "accept@user", "sg-cl/web-internet")
case("classic-internet-rule-not-on-intranet", CLASSIC, "tap-k-in", "ingress", ing(OUT4, K_IN, dport=80),
     "drop@final")
case("classic-intranet-rule-on-intranet", CLASSIC, "tap-k-in", "ingress", ing(OUT4, K_IN, dport=22),
     "accept@user", "sg-cl/ssh-intranet")
case("classic-intranet-rule-not-on-internet", CLASSIC, "tap-k-out", "ingress", ing(OUT4, K_OUT, dport=22),
     "drop@final")
case("classic-intra-group-on-intranet", CLASSIC, "tap-k-in", "ingress",
     ing(K2_IN, K_IN, protocol="udp", dport=53), "accept@intra-group", "sg-cl")
case("classic-no-intra-group-on-internet", CLASSIC, "tap-k-out", "ingress",
     ing(K2_IN, K_OUT, protocol="udp", dport=53), "drop@final")
case("classic-internet-address-not-a-member-address", CLASSIC, "tap-k-in", "ingress",
     ing(K2_OUT, K_IN, protocol="udp", dport=53), "drop@final")
case("classic-group-peer-intranet-address", CLASSIC, "tap-m-in", "ingress", ing(K2_IN, M_IN, dport=443),
     "accept@user", "sg-m/from-cl")
case("classic-group-peer-not-internet-address", CLASSIC, "tap-m-in", "ingress", ing(K_OUT, M_IN, dport=443),
     "drop@final")
case("classic-internet-egress-default-open", CLASSIC, "tap-k-out", "egress", eg(OUT4, K_OUT, dport=443),
     "accept@default")

VPC2 = doc([group("sg-v", {**ingress("tcp", ports="8080/8080"), "id": "alt-http"}),
            group("sg-w", ingress("tcp", ports="9000/9000", src_group="sg-v"))],
           [inst("i-v", ["sg-v"], nic("tap-v1", "10.2.0.1"), nic("tap-v2", "10.3.0.1", "fd02::1")),
            inst("i-w", ["sg-w"], nic("tap-w", "10.2.0.9"))])
case("vpc-rule-on-first-interface", VPC2, "tap-v1", "ingress", ing(OUT4, "10.2.0.1", dport=8080),
     "accept@user", "sg-v/alt-http")
case("vpc-rule-on-second-interface", VPC2, "tap-v2", "ingress", ing(OUT4, "10.3.0.1", dport=8080),
     "accept@user", "sg-v/alt-http")
case("vpc-intra-group-on-every-interface", VPC2, "tap-v2", "ingress", ing("10.2.0.1", "10.3.0.1", dport=1),
     "accept@intra-group", "sg-v")
case("vpc-group-peer-every-interface-first", VPC2, "tap-w", "ingress", ing("10.2.0.1", "10.2.0.9", dport=9000),
     "accept@user", "sg-w")
case("vpc-group-peer-every-interface-second", VPC2, "tap-w", "ingress", ing("fd02::1", "10.2.0.9", dport=9000),
     "accept@user", "sg-w")


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_clause(c: Case) -> None:
    decision = decide(state_of(c.doc), c.iface, c.direction, c.packet)
    verdict, stage = c.expect.split("@")
    got = (decision.verdict, decision.entry.stage)
    assert got == (verdict, stage), f"{c.id}: decided by {decision.entry}"
    if c.by:
        group_id, _, rule_id = c.by.partition("/")
        assert decision.entry.group_id == group_id, decision.entry
        if rule_id:
            assert decision.entry.rule_id == rule_id, decision.entry


def test_case_ids_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


# --- properties of the effective list itself ----------------------------------------------
def user_entries(state, iface: str, direction: str):
    return [e for e in build_effective_list(state, iface, direction).entries if e.stage == "user"]


def test_stages_in_spec_order() -> None:
    state = state_of(a_and_b([group("sg-d", ingress("tcp", ports="80/80"), type="default")],
                             ["sg-d"], ["sg-d"]))
    for direction in ("ingress", "egress"):
        stages = [e.stage for e in build_effective_list(state, "tap-a", direction).entries]
        order = ["state", "essentials", "intra-group", "user", "default", "final"]
        assert stages == sorted(stages, key=order.index)
        assert stages[-1] == "final" and stages.count("final") == 1


def test_anti_spoofing_entries_only_on_egress() -> None:
    state = state_of(CUSTOM_EMPTY)
    kinds_in = [e.kind for e in build_effective_list(state, "tap-a", "ingress").entries]
    kinds_out = [e.kind for e in build_effective_list(state, "tap-a", "egress").entries]
    assert "spoof-ip" not in kinds_in and "spoof-mac" not in kinds_in
    assert "spoof-ip" in kinds_out and "spoof-mac" in kinds_out
    off = state_of(CUSTOM_EMPTY | {"anti_spoofing": False})
    assert not {"spoof-ip", "spoof-mac"} & {e.kind for e in build_effective_list(off, "tap-a", "egress").entries}


def test_pooled_order_is_priority_then_drop_first() -> None:
    state = state_of(a_alone(
        group("g1", ingress(priority=7), ingress("tcp", ports="1/2", priority=3, policy="drop"),
              ingress("udp", ports="5/5", priority=7, policy="drop")),
        group("g2", ingress("icmp", priority=3), ingress("gre", priority=7, policy="drop"),
              ingress("tcp", ports="9/9", priority=1))))
    keys = [(e.priority, e.verdict) for e in user_entries(state, "tap-a", "ingress")]
    assert keys == [(1, "accept"), (3, "drop"), (3, "accept"), (7, "drop"), (7, "drop"), (7, "accept")]


def test_default_rules_at_110_and_egress_open() -> None:
    state = state_of(a_alone(group("sg-def", type="default", allow_http=True, allow_https=True)))
    defaults = [e for e in build_effective_list(state, "tap-a", "ingress").entries if e.stage == "default"]
    assert {e.priority for e in defaults} == {DEFAULT_PRIORITY} == {110}
    tcp_ports = sorted(e.match.ports.lo for e in defaults if e.match.protocol == "tcp")
    assert tcp_ports == [22, 80, 443, 3389]
    assert {e.match.protocol for e in defaults} == {"icmp", "icmpv6", "tcp"}
    out = [e for e in build_effective_list(state, "tap-a", "egress").entries if e.stage == "default"]
    assert len(out) == 1 and out[0].match.protocol == "all" and out[0].match.ports is None


def test_default_rules_deduplicated_across_default_groups() -> None:
    state = state_of(a_alone(group("d1", type="default"), group("d2", type="default"), group("c")))
    ing_defaults = [e for e in build_effective_list(state, "tap-a", "ingress").entries if e.stage == "default"]
    eg_defaults = [e for e in build_effective_list(state, "tap-a", "egress").entries if e.stage == "default"]
    assert len(ing_defaults) == 4 and len(eg_defaults) == 1


@pytest.mark.parametrize("variant", [
    pytest.param(lambda r: [r, dict(r)], id="same-rule-twice-no-id"),
    pytest.param(lambda r: [{**r, "id": "x"}, {**r, "id": "x"}], id="same-rule-twice-same-id"),
    pytest.param(lambda r: [r, {**r, "description": "again"}], id="differs-only-in-description"),
    pytest.param(lambda r: [r, {**r, "protocol": "TCP", "direction": "Ingress"}], id="differs-in-case"),
    pytest.param(lambda r: [r, {**r, "port_range": 80}], id="port-as-number"),
    pytest.param(lambda r: [{**r, "priority": 1}, {k: v for k, v in r.items() if k != "priority"}],
                 id="default-priority-spelled-out"),
])
def test_duplicate_identical_rules_merged(variant) -> None:
    base = ingress("tcp", ports="80/80", src="10.0.0.0/8")
    state = state_of(a_alone(group("sg-a", *variant(base))))
    assert len(user_entries(state, "tap-a", "ingress")) == 1
    assert len(state.group_by_id["sg-a"].rules) == 1


def test_same_rule_in_two_groups_kept_per_group() -> None:
    r = ingress("tcp", ports="80/80")
    state = state_of(a_alone(group("g1", r), group("g2", r)))
    assert {e.group_id for e in user_entries(state, "tap-a", "ingress")} == {"g1", "g2"}


def test_derived_rule_ids_stable_and_distinct() -> None:
    rules = [ingress("tcp", ports="80/80"), ingress("tcp", ports="81/81"), egress("tcp", ports="80/80")]
    one = state_of(a_alone(group("sg-a", *rules)))
    two = state_of(a_alone(group("sg-a", *reversed(rules))))
    ids = sorted(r.id for r in one.group_by_id["sg-a"].rules)
    assert ids == sorted(r.id for r in two.group_by_id["sg-a"].rules)
    assert len(set(ids)) == 3


def test_non_local_instance_has_no_effective_list() -> None:
    state = state_of(PEERS)
    assert "tap-r" not in state.local_interfaces
    assert {"tap-a", "tap-c"} <= set(state.local_interfaces)
    with pytest.raises(KeyError):
        build_effective_list(state, "tap-r", "ingress")
    with pytest.raises(InvalidInput, match="tap-r: not a local interface on host hv-01"):
        local_interface(state, "tap-r")


def test_instance_without_host_is_local_and_named_host_is_not() -> None:
    d = doc([group("g")], [inst("i-1", ["g"], nic("tap-1", "10.0.0.1")),
                           inst("i-2", ["g"], nic("tap-2", "10.0.0.2"), host="hv-01"),
                           inst("i-3", ["g"], nic("tap-3", "10.0.0.3"), host="hv-03")])
    assert set(state_of(d).local_interfaces) == {"tap-1", "tap-2"}
    assert set(validate_document(d, host="hv-03").local_interfaces) == {"tap-1", "tap-3"}


def test_remote_member_addresses_lent_to_group() -> None:
    state = state_of(PEERS)
    addrs = {str(a) for a in state.group_addresses["sg-c"]}
    assert addrs == {C4, C6, R4, R6}


def test_classic_group_addresses_are_intranet_only() -> None:
    state = state_of(CLASSIC)
    assert {str(a) for a in state.group_addresses["sg-cl"]} == {K_IN, K2_IN}


def test_local_to_local_crosses_egress_then_ingress() -> None:
    """Both lists must accept: A may send (egress open) but B's ingress drops; and
    A's egress drop stops a packet B's ingress would accept."""
    d = a_and_b([group("sg-a", egress("tcp", ports="25/25", policy="drop")),
                 group("sg-b", ingress("tcp", ports="25/25", src="10.0.0.0/8"))],
                ["sg-a"], ["sg-b"])
    state = state_of(d)

    def path(packet: Packet) -> str:
        out = decide(state, "tap-a", "egress", packet).verdict
        return "drop" if out == "drop" else decide(state, "tap-b", "ingress", packet).verdict

    assert path(pkt(A4, B4, dport=25)) == "drop"       # sender's egress drops
    assert path(pkt(A4, B4, dport=80)) == "drop"       # receiver's ingress drops
    assert decide(state, "tap-b", "ingress", pkt(A4, B4, dport=25)).verdict == "accept"


def test_explain_goes_through_the_same_engine() -> None:
    state = state_of(POOLED)
    packet = ing("10.2.0.1", dport=80)
    decision, elist = explain(state, "tap-a", "ingress", packet)
    assert decision == evaluate(elist, packet)
    assert (decision.verdict, decision.entry.rule_id) == ("drop", "g2-ten")


def test_group_addresses_are_exactly_its_members_addresses() -> None:
    """sg-a's only member is A: its peer set is A's addresses (as /32 and /128)."""
    state = state_of(PEERS)
    nets = {str(ipaddress.ip_network(a)) for a in state.group_addresses["sg-a"]}
    assert nets == {f"{A4}/32", f"{A6}/128"}


def test_matches_over_one_group_share_its_hashed_members_until_forgotten():
    """Every Match over a group's networks tuple (every list naming the group) shares one
    hashed set of its members (a revocation plan judged 1,000 flows against 200 lists at
    100,000 members); the plan forgets them when it ends."""
    from agent.policy.effective import Match, forget_hosts, split_hosts
    members = tuple(ipaddress.ip_network(f"10.9.{i // 250}.{i % 250 + 1}/32") for i in range(600)) + \
        (ipaddress.ip_network("10.8.0.0/16"),)
    a, b = Match(members, "tcp"), Match(members, "udp")
    pkt = Packet(ipaddress.ip_address("10.9.1.7"), ipaddress.ip_address("10.0.0.1"), 6, 4000, 80)
    assert a.matches(pkt.src, pkt) and not b.matches(pkt.src, pkt)
    assert a.matches(ipaddress.ip_address("10.8.3.3"), pkt) and not a.matches(ipaddress.ip_address("10.7.0.1"), pkt)
    first = split_hosts(members)
    assert b.matches(ipaddress.ip_address("10.9.1.7"), replace(pkt, protocol=17)) and split_hosts(members) is first
    forget_hosts()
    again = split_hosts(members)
    assert again is not first and again == first
