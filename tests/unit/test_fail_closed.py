"""Unknown instance interfaces fail closed and conntrack quotas (docs/fail-closed.md):
the document fields and their errors, the --instance-interfaces option, the compiled
rules of both tables, the simulator's verdict for an unknown interface; and the
ctnetlink message parser and filter against hand-built messages."""
from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compile_sim import NotDispatched, Simulator  # noqa: E402
from compile_helpers import by_key  # noqa: E402

from agent.compiler.compile import build_ruleset  # noqa: E402
from agent.compiler.render import render_ruleset  # noqa: E402
from agent.errors import InvalidInput  # noqa: E402
from agent.kernel import ctnetlink  # noqa: E402
from agent.kernel.conntrack import build_flows, build_raw  # noqa: E402
from agent.model.objects import EGRESS, INGRESS, with_instance_interfaces  # noqa: E402
from agent.model.schema import parse_interface_patterns  # noqa: E402
from agent.model.validate import validate_document  # noqa: E402
from agent.policy.effective import Packet  # noqa: E402
from agent.policy.revocation import Flow  # noqa: E402


def doc(**top) -> dict:
    nic = {"name": "tap-a", "addresses": ["10.0.0.1"]}
    return {"host": "hv", "security_groups": [{"id": "sg", "rules": [
        {"direction": "ingress", "protocol": "all", "source_cidr": "0.0.0.0/0"}]}],
        "instances": [{"id": "a", "security_groups": ["sg"], "interfaces": [nic]},
                      {"id": "b", "security_groups": ["sg"], "interfaces": [
                          {"name": "vnet0", "addresses": ["10.1.0.2"], "attachment": "bridged"}]}], **top}


def errors(document: dict) -> list[str]:
    with pytest.raises(InvalidInput) as exc:
        validate_document(document, "hv")
    return [str(e) for e in exc.value.errors]


def test_default_patterns_and_their_rules():
    state = validate_document(doc(), "hv")
    assert state.instance_interfaces == ("tap*", "vnet*")
    rs = build_ruleset(state)
    text = "\n".join(by_key(rs, [r.strip() for r in render_ruleset(rs).splitlines()]))
    for rule in ('iifname "tap*" => egress/unknown-interface/-/-/-/drop',      # inet: counted per direction
                 'oifname "vnet*" => ingress/unknown-interface/-/-/-/drop',
                 'oifname "tap*" oifname != @instance_ports => ingress/unknown-interface/-/-/-/drop',
                 'iifname "vnet*" iifname != @ports counter drop'):           # bridge: its own counter
        assert rule in text, rule
    assert "type filter hook output priority 10;" in text and "type filter hook output priority -300;" in text


def test_no_patterns_no_rules():
    state = validate_document(doc(instance_interfaces=[]), "hv")
    text = render_ruleset(build_ruleset(state))
    assert '"tap*"' not in text and "instance_ports" not in text and "hook output" not in text
    assert validate_document(doc(instance_interfaces=None), "hv").instance_interfaces == ()


@pytest.mark.parametrize("bad, why", [("*", "not an interface name pattern"), ("l*", "loopback"),
                                      ("lo", "loopback"), ("tap*x", "not an interface name pattern"),
                                      ("a" * 16, "not an interface name pattern"), ("ta p*", "not an interface")])
def test_bad_patterns_name_path_and_value(bad, why):
    (err,) = errors(doc(instance_interfaces=["tap*", bad]))
    assert err.startswith(f"instance_interfaces[1]: {bad}") and why in err, err


def test_option_overrides_the_document():
    state = validate_document(doc(), "hv")
    assert parse_interface_patterns("tap*, vm-*,tap*") == ("tap*", "vm-*")
    assert parse_interface_patterns("") == ()
    with pytest.raises(ValueError, match="'x/y'"):
        parse_interface_patterns("tap*,x/y")
    other = with_instance_interfaces(state, ("vm-*",))
    assert other.instance_interfaces == ("vm-*",) and other.instances is state.instances
    assert with_instance_interfaces(state, None) is state
    rs = build_ruleset(other)
    assert 'iifname "vm-*" => egress/unknown-interface/-/-/-/drop' in by_key(
        rs, [r.strip() for r in render_ruleset(rs).splitlines()])


def test_max_connections_default_override_and_none():
    d = doc(max_connections=5000)
    d["instances"][1]["interfaces"][0]["max_connections"] = 0
    state = validate_document(d, "hv")
    assert state.local_interfaces["tap-a"].max_connections == 5000
    assert state.local_interfaces["vnet0"].max_connections is None
    d["instances"][0]["interfaces"][0]["max_connections"] = 1000
    rs = build_ruleset(validate_document(d, "hv"))
    (inet,) = [t for t in rs.tables if t.family == "inet"]
    chains = {c.name: c.rules for c in inet.chains}
    for name in ("eg_tap-a", "in_tap-a"):
        direction = "egress" if name.startswith("eg") else "ingress"
        assert by_key(rs, chains[name][-2:-1]) == [f"ct count over 1000 => {direction}/quota/-/-/-/drop"], chains[name]
    assert not any("ct count" in r for r in chains["eg_vnet0"])
    assert errors(doc(max_connections=-1)) == ["max_connections: -1: must be at least 0"]
    assert errors(doc(max_connections="many"))[0].startswith("max_connections: many:")


def test_simulator_drops_unknown_interfaces_only():
    state = validate_document(doc(), "hv")
    sim = Simulator(build_ruleset(state))
    p = Packet(ipaddress.ip_address("10.0.0.9"), ipaddress.ip_address("10.0.0.1"), 6, 40000, 80)
    for direction in (EGRESS, INGRESS):
        kind, verdict, how = sim.dispatch("tap-unknown", direction, p)
        assert (kind, verdict) == ("verdict", "drop"), how
        assert sim.judge("tap-a", direction, p).verdict in ("accept", "drop")   # dispatched as before
    with pytest.raises(NotDispatched):
        sim.dispatch("eth9", EGRESS, p)                  # no pattern: not dispatched, not dropped


# -- ctnetlink ---------------------------------------------------------------------------
def message(body: bytes, family: int) -> bytearray:
    """An IPCTNL_MSG_CT_NEW message as a dump sends it: the tuple, then other attributes."""
    extra = ctnetlink._nla(3, struct.pack("!I", 0x18))          # CTA_STATUS after the tuple
    payload = bytes((family, 0, 0, 0)) + body + extra
    return bytearray(ctnetlink.HDR.pack(16 + len(payload), 1 << 8, 2, 1, 0) + payload)


@pytest.mark.parametrize("flow", [
    Flow(ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2"), 6, 40000, 443),
    Flow(ipaddress.ip_address("fd00::1"), ipaddress.ip_address("fd00::2"), 17, 5353, 53),
    Flow(ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2"), 1, icmp_type=8, icmp_id=77),
    Flow(ipaddress.ip_address("fd00::1"), ipaddress.ip_address("fd00::2"), 58, icmp_type=128, icmp_id=9),
])
def test_parse_what_delete_encodes(flow):
    raw = build_raw(flow)
    family = socket.AF_INET if flow.src.version == 4 else socket.AF_INET6
    buf = message(ctnetlink.build_tuple_attr(raw), family)
    slow = ctnetlink.parse_entry(memoryview(buf))
    fast = ctnetlink.parse_fast(buf, 0, len(buf))
    assert build_flows([slow]) == [flow]
    assert fast == (slow if flow.protocol in (6, 17) else None)      # ICMP: the general parser


def test_filter_request_attributes():
    attrs = ctnetlink.build_filter("dst", ipaddress.ip_address("fd00::5").packed)
    # CTA_TUPLE_ORIG { CTA_TUPLE_IP { CTA_IP_V6_DST } }, CTA_FILTER { ORIG_FLAGS = IP_DST, REPLY_FLAGS = 0 }
    assert attrs[:12] == struct.pack("=HHHHHH", 28, 0x8001, 24, 0x8001, 20, 4)
    assert attrs[12:28] == ipaddress.ip_address("fd00::5").packed
    assert attrs[28:] == struct.pack("=HHHHIHHI", 20, 0x8000 | 25, 8, 1, 2, 8, 2, 0)
