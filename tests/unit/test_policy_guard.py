"""The first-hop spoofing guard and allowed address pairs (SPEC §2, §3 stage 2):
document checks, the semantics engine's verdicts on the guard's packets, and the same
verdicts from the compiled ruleset (tests/compile_sim.py, tests/bridge_sim.py)."""
from __future__ import annotations

import ipaddress

import pytest
from bridge_sim import BridgeGuardSim
from compile_sim import Simulator

from agent.compiler.compile import build_ruleset
from agent.errors import InvalidInput
from agent.model.objects import EGRESS, INGRESS
from agent.model.validate import validate_document
from agent.policy.effective import Packet, build_effective_list, evaluate
from agent.policy.guard import ETHER_ARP, ETHER_IP6, Frame, frame_verdict

HOST = "hv-01"
MAC1, MAC2, VIP_MAC = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:aa"
A = ipaddress.ip_address


def document(nic1: dict | None = None, nic2: dict | None = None, attachment: str = "bridged") -> dict:
    return {"host": HOST, "attachment": attachment, "security_groups": [{"id": "sg", "type": "default"}],
            "instances": [
                {"id": "i1", "security_groups": ["sg"], "interfaces": [
                    {"name": "tap1", "mac": MAC1, "addresses": ["10.0.0.1", "fd00::1"], **(nic1 or {})}]},
                {"id": "i2", "security_groups": ["sg"], "interfaces": [
                    {"name": "tap2", "mac": MAC2, "addresses": ["10.0.0.2", "fd00::2"], **(nic2 or {})}]}]}


def errors_of(doc: dict) -> list[str]:
    with pytest.raises(InvalidInput) as exc:
        validate_document(doc, HOST)
    return [f"{e.path}: {e.value}: {e.message}" for e in exc.value.errors]


# -- the document ------------------------------------------------------------------------
def test_allowed_addresses_plain_cidr_and_with_mac():
    state = validate_document(document({"allowed_addresses": [
        "10.0.0.100", {"address": "10.0.1.0/28", "mac": VIP_MAC.upper()}, "fd00::100"]}), HOST)
    nic = state.local_interfaces["tap1"]
    assert [str(p.network) for p in nic.allowed] == ["10.0.0.100/32", "10.0.1.0/28", "fd00::100/128"]
    assert nic.source_macs() == (MAC1, VIP_MAC)
    assert [str(n) for n in nic.source_networks(4)] == ["10.0.0.1/32", "10.0.0.100/32", "10.0.1.0/28"]
    assert nic.spoofing_guard is True


def test_bad_allowed_addresses_are_reported_with_paths():
    errs = errors_of(document({"allowed_addresses": ["10.0.0.300", {"address": "10.0.1.1/24"},
                                                     {"address": "10.0.0.9", "mac": "nope"}, 7],
                               "spoofing_guard": "maybe"}))
    text = "\n".join(errs)
    for path in ("allowed_addresses[0]", "allowed_addresses[1].address", "allowed_addresses[2].mac",
                 "allowed_addresses[3]", "spoofing_guard"):
        assert f"instances[0].interfaces[0].{path}" in text, text
    assert "host bits are set" in text and "not a MAC address" in text
    assert "allowed_addresses[3]: 7: must be an address or CIDR, or a mapping {address, mac}" in text


def test_allowed_address_of_another_instance_is_refused():
    errs = errors_of(document({"allowed_addresses": ["10.0.0.0/30"]}))
    assert errs == ["instances[0].interfaces[0].allowed_addresses[0]: 10.0.0.0/30: covers 10.0.0.2, an "
                    "address of another instance that does not list it in its allowed_addresses "
                    "(a shared VIP must be listed by both)"]


def test_shared_vip_listed_by_both_is_accepted():
    validate_document(document({"allowed_addresses": ["10.0.0.100"]}, {"allowed_addresses": ["10.0.0.100"]}), HOST)
    # one of them also holds it as its own address (the current master): both list it
    validate_document(document({"allowed_addresses": ["10.0.0.2"]}, {"allowed_addresses": ["10.0.0.2"]}), HOST)


# -- verdicts: semantics engine == compiled ruleset --------------------------------------
def egress_cases() -> list[tuple[str, Packet, str]]:
    ll, fl = A("fe80::5054:ff:fe00:1"), A("fe80::5054:ff:fe00:2")
    return [
        ("RA", Packet(ll, A("ff02::1"), 58, icmp_type=134), "drop"),
        ("redirect", Packet(ll, A("fd00::2"), 58, icmp_type=137), "drop"),
        ("RS", Packet(ll, A("ff02::2"), 58, icmp_type=133), "accept"),
        ("NA own", Packet(A("fd00::1"), A("fd00::2"), 58, icmp_type=136, nd_target=A("fd00::1")), "accept"),
        ("NA link-local", Packet(ll, fl, 58, icmp_type=136, nd_target=ll), "accept"),
        ("NA VIP", Packet(A("fd00::1"), A("ff02::1"), 58, icmp_type=136, nd_target=A("fd00::100")), "accept"),
        ("NA neighbour", Packet(A("fd00::1"), A("ff02::1"), 58, icmp_type=136, nd_target=A("fd00::2")), "drop"),
        ("NS", Packet(A("fd00::1"), A("ff02::1:ff00:2"), 58, icmp_type=135, nd_target=A("fd00::2")), "accept"),
        ("NS from VIP", Packet(A("fd00::100"), A("ff02::1:ff00:2"), 58, icmp_type=135, nd_target=A("fd00::2")),
         "accept"),
        ("NS forged source", Packet(A("fd00::2"), A("ff02::1:ff00:9"), 58, icmp_type=135, nd_target=A("fd00::9")),
         "drop"),
        ("RS forged source", Packet(A("fd00::2"), A("ff02::2"), 58, icmp_type=133), "drop"),
        ("NA own, forged source", Packet(A("fd00::2"), A("ff02::1"), 58, icmp_type=136, nd_target=A("fd00::1")),
         "drop"),
        ("DAD own", Packet(A("::"), A("ff02::1:ff00:1"), 58, icmp_type=135, nd_target=A("fd00::1")), "accept"),
        ("DAD foreign", Packet(A("::"), A("ff02::1:ff00:2"), 58, icmp_type=135, nd_target=A("fd00::2")), "drop"),
        ("DHCP offer", Packet(A("10.0.0.1"), A("255.255.255.255"), 17, 67, 68), "drop"),
        ("DHCPv6 reply", Packet(ll, fl, 17, 547, 546), "drop"),
        ("DHCP discover", Packet(A("0.0.0.0"), A("255.255.255.255"), 17, 68, 67), "accept"),
        ("DHCPv6 solicit", Packet(ll, A("ff02::1:2"), 17, 546, 547), "accept"),
        ("from VIP", Packet(A("10.0.0.100"), A("10.0.0.2"), 6, 40000, 80), "accept"),
        ("from VIP MAC", Packet(A("10.0.0.100"), A("10.0.0.2"), 6, 40000, 80, src_mac=VIP_MAC), "accept"),
        ("from foreign", Packet(A("10.0.0.2"), A("10.0.0.9"), 6, 40000, 80), "drop"),
        ("foreign MAC", Packet(A("10.0.0.1"), A("10.0.0.2"), 6, 40000, 80, src_mac=MAC2), "drop"),
    ]


@pytest.mark.parametrize("attachment", ["routed", "bridged"])
def test_guard_verdicts_semantics_equal_compiled(attachment):
    allowed = {"allowed_addresses": ["10.0.0.100", {"address": "fd00::100", "mac": VIP_MAC}]}
    state = validate_document(document(allowed, attachment=attachment), HOST)
    sim = Simulator(build_ruleset(state))
    elist = build_effective_list(state, "tap1", EGRESS)
    for label, packet, want in egress_cases():
        got = evaluate(elist, packet)
        assert got.verdict == want, (label, got.entry)
        assert sim.judge("tap1", EGRESS, packet).verdict == want, label


def test_guard_off_lets_everything_through_stage_2():
    state = validate_document(document({"spoofing_guard": False}), HOST)
    sim = Simulator(build_ruleset(state))
    elist = build_effective_list(state, "tap1", EGRESS)
    assert not [e for e in elist.entries if e.kind.startswith(("guard", "spoof"))]
    for label, packet, _ in egress_cases():
        assert evaluate(elist, packet).verdict == "accept", label
        assert sim.judge("tap1", EGRESS, packet).verdict == "accept", label


def test_ingress_keeps_router_advertisements_and_dhcp():
    state = validate_document(document(), HOST)
    sim = Simulator(build_ruleset(state))
    ra = Packet(A("fe80::1"), A("ff02::1"), 58, icmp_type=134)
    offer = Packet(A("10.0.0.254"), A("10.0.0.1"), 17, 67, 68)
    elist = build_effective_list(state, "tap1", INGRESS)
    assert evaluate(elist, ra).verdict == sim.judge("tap1", INGRESS, ra).verdict == "accept"
    assert evaluate(elist, offer).verdict == sim.judge("tap1", INGRESS, offer).verdict   # user rules decide


def test_bridge_guard_arp():
    state = validate_document(document({"allowed_addresses": ["10.0.0.100"]}), HOST)
    (bridge,) = [t for t in build_ruleset(state).tables if t.family == "bridge"]
    sim, nic = BridgeGuardSim(bridge), state.local_interfaces["tap1"]
    cases = [
        (Frame(ETHER_ARP, MAC1, MAC1, A("10.0.0.1")), "pass"),           # its own address
        (Frame(ETHER_ARP, MAC1, MAC1, A("10.0.0.100")), "pass"),         # gratuitous ARP for its VIP
        (Frame(ETHER_ARP, MAC1, MAC1, A("0.0.0.0")), "pass"),            # probe
        (Frame(ETHER_ARP, MAC1, MAC1, A("10.0.0.2")), "drop"),           # forged: the neighbour's
        (Frame(ETHER_ARP, MAC1, MAC2, A("10.0.0.1")), "drop"),           # sender MAC not its own
        (Frame(ETHER_ARP, MAC2, MAC2, A("10.0.0.1")), "drop"),           # frame from another MAC
        (Frame(ETHER_IP6, MAC1), "pass"),
        (Frame(0x88CC, MAC1), "drop"),                                   # LLDP: not IP or ARP
    ]
    for frame, want in cases:
        assert frame_verdict(nic, frame) == want, frame
        assert sim.judge("tap1", frame) == want, frame
    assert sim.judge("tap2", Frame(ETHER_ARP, MAC2, MAC2, A("10.0.0.100"))) == "drop"   # not its VIP


def test_routed_ports_have_no_bridge_guard():
    state = validate_document(document(attachment="routed"), HOST)
    tables = build_ruleset(state).tables
    assert [t.family for t in tables] == ["inet", "bridge"]       # unknown ports only (docs/fail-closed.md)
    assert not any(c.name.startswith("guard_") for c in tables[1].chains)
    state = validate_document({**document(attachment="routed"), "instance_interfaces": []}, HOST)
    assert [t.family for t in build_ruleset(state).tables] == ["inet"]


def test_incremental_validation_checks_allowed_overlaps():
    """The daemon's fast path: an instance that moves into another one's allowed network
    is refused with the full error list, as `check` refuses it."""
    from agent.model.validate_incremental import validate_update
    first = document({"allowed_addresses": ["10.0.0.96/28"]})
    prev = validate_update(first, HOST, None)
    moved = document({"allowed_addresses": ["10.0.0.96/28"]})
    moved["instances"][1]["interfaces"][0]["addresses"] = ["10.0.0.100", "fd00::2"]
    with pytest.raises(InvalidInput) as exc:
        validate_update(moved, HOST, prev)
    assert [e.path for e in exc.value.errors] == ["instances[0].interfaces[0].allowed_addresses[0]"]
    fine = document({"allowed_addresses": ["10.0.0.96/28"]})
    fine["instances"][1]["interfaces"][0]["addresses"] = ["10.0.0.3", "fd00::2"]
    assert validate_update(fine, HOST, prev).state == validate_document(fine, HOST)
