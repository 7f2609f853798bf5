"""SPEC §5 for the commands that need no root: show and explain (check: test_validation)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cli_helpers import run_agent

SHOP = Path(__file__).resolve().parents[1] / "fixtures" / "valid" / "shop.yaml"
STAGES = ["state", "essentials", "intra-group", "user", "default", "final"]
ROW = re.compile(r"^\s+(\d+)\s+(state|essentials|intra-group|user|default|final)\s+(accept|drop)\s+(\S+)\s+(\S+)\s+(.*)$")


def show(iface: str, *extra: str):
    return run_agent("show", "-c", str(SHOP), *extra, iface)


def sections(out: str) -> dict[str, list[tuple]]:
    """direction -> rows (number, stage, verdict, priority, group/rule, match)."""
    parts: dict[str, list[tuple]] = {}
    current = None
    for line in out.splitlines():
        head = re.match(r"^(ingress|egress) \(", line)
        if head:
            current = head.group(1)
            parts[current] = []
        elif current and ROW.match(line):
            parts[current].append(ROW.match(line).groups())
    return parts


def test_show_lists_every_stage_in_order() -> None:
    result = show("tap-web2")
    assert result.code == 0, result.err
    assert result.out.startswith("interface tap-web2: instance web-2 (vpc), intranet, routed, "
                                 "groups sg-web, sg-ops, addresses 10.0.1.12")
    assert result.out.index("\ningress (") < result.out.index("\negress (")
    parts = sections(result.out)
    assert set(parts) == {"ingress", "egress"}
    ingress_stages = [row[1] for row in parts["ingress"]]
    assert list(dict.fromkeys(ingress_stages)) == STAGES          # every stage, in order
    assert ingress_stages == sorted(ingress_stages, key=STAGES.index)
    egress_stages = [row[1] for row in parts["egress"]]
    assert list(dict.fromkeys(egress_stages)) == STAGES
    for rows in parts.values():
        assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1))


def test_show_rows_say_who_and_what() -> None:
    out = show("tap-web2").out
    ingress, egress = sections(out)["ingress"], sections(out)["egress"]
    user = [r for r in ingress if r[1] == "user"]
    assert ("sg-web/web-http" in [r[4] for r in user])
    assert any(r[4] == "sg-web/web-ssh-office" and "prefix-list pl-office (2 networks)" in r[5] for r in user)
    defaults = [r for r in ingress if r[1] == "default"]
    assert {r[3] for r in defaults} == {"110"} and {r[4] for r in defaults} == {"sg-ops"}
    assert any("dport 443" in r[5] and "HTTPS" in r[5] for r in defaults)
    assert not any("dport 80 " in r[5] for r in defaults)          # allow_http is off
    assert any("anti-spoofing" in r[5] for r in egress if r[1] == "essentials")
    assert any(r[4] == "sg-web/web-no-smtp" and r[2] == "drop" for r in egress)
    assert ingress[-1][1:3] == ("final", "drop") and egress[-1][1:3] == ("final", "drop")


def test_show_group_peer_counts_remote_member() -> None:
    rows = sections(show("tap-db1").out)["ingress"]
    replication = next(r for r in rows if r[4] == "sg-db/db-replication")
    assert "group sg-db (2 networks)" in replication[5]        # db-1 and remote db-2


def test_show_mac_and_anti_spoofing() -> None:
    out = show("tap-web1").out
    assert "mac 52:54:00:00:01:11" in out.splitlines()[0]
    egress = sections(out)["egress"]
    kinds = [r[5] for r in egress if r[1] == "essentials"]
    assert any("source MAC is not 52:54:00:00:01:11" in k for k in kinds)


EXPLAIN_DB = ["explain", "-c", str(SHOP), "--iface", "tap-db1", "--direction", "ingress",
              "--protocol", "tcp", "--src", "10.0.1.11", "--dport", "5432"]


def test_explain_text() -> None:
    result = run_agent(*EXPLAIN_DB)
    assert result.code == 0, result.err
    assert result.lines == ["tap-db1 ingress: tcp 10.0.1.11 -> 10.0.2.21 40000 -> 5432",
                            "verdict: ACCEPT",
                            "decided by line 5: rule db-from-web of group sg-db (priority 1)"]


def test_explain_text_names_the_stage() -> None:
    final = run_agent(*EXPLAIN_DB[:-1], "5999")
    assert "verdict: DROP" in final.lines
    assert final.lines[2].endswith("final: nothing accepted it")
    intra = run_agent("explain", "-c", str(SHOP), "--iface", "tap-web1", "--direction", "ingress",
                      "--protocol", "udp", "--src", "10.0.1.12", "--dport", "53")
    assert intra.lines[-1].endswith("intra-group access: both are members of sg-web")
    default = run_agent("explain", "-c", str(SHOP), "--iface", "tap-web2", "--direction", "ingress",
                        "--protocol", "tcp", "--src", "198.51.100.1", "--dport", "3389")
    assert default.lines[-1].endswith("default rule of group sg-ops (priority 110): default: RDP")


def test_explain_json() -> None:
    result = run_agent(*EXPLAIN_DB, "--json")
    assert result.code == 0
    got = json.loads(result.out)
    assert got == {
        "verdict": "accept", "stage": "user", "rule": "db-from-web", "group": "sg-db",
        "priority": 1, "line": 5, "reason": None, "audit": False, "log": False,
        "interface": "tap-db1", "direction": "ingress",
        "packet": {"src": "10.0.1.11", "dst": "10.0.2.21", "protocol": "tcp", "sport": 40000,
                   "dport": 5432, "icmp_type": None},
    }


def test_explain_json_egress_defaults_source_to_interface() -> None:
    result = run_agent("explain", "-c", str(SHOP), "--iface", "tap-web1", "--direction", "egress",
                       "--protocol", "tcp", "--dst", "2001:db8::9", "--dport", "443", "--sport", "1234", "--json")
    got = json.loads(result.out)
    assert (got["verdict"], got["stage"]) == ("accept", "default")
    assert got["packet"]["src"] == "fd00:1::11" and got["packet"]["sport"] == 1234


def test_explain_protocol_by_number() -> None:
    result = run_agent("explain", "-c", str(SHOP), "--iface", "tap-web1", "--direction", "ingress",
                       "--protocol", "132", "--src", "10.0.1.12", "--json")
    got = json.loads(result.out)
    assert got["verdict"] == "accept" and got["packet"]["protocol"] == 132


@pytest.mark.parametrize("command", ["show", "explain"])
@pytest.mark.parametrize("iface,hint", [("tap-nope", ""), ("tap-db2", "; it belongs to instance db-2 on host hv-02 (name it hv-02:tap-db2)")])
def test_unknown_interface(command: str, iface: str, hint: str) -> None:
    args = (["show", "-c", str(SHOP), iface] if command == "show" else
            ["explain", "-c", str(SHOP), "--iface", iface, "--direction", "ingress", "--protocol", "tcp",
             "--src", "10.0.0.1", "--dport", "80"])
    result = run_agent(*args)
    assert result.code == 2
    assert result.out == ""
    assert (f"error: interface: {iface}: not a local interface on host hv-01{hint} "
            "(known: tap-db1, tap-web1, tap-web2)") in result.err.splitlines()


@pytest.mark.parametrize("args,message", [
    (["--direction", "ingress", "--protocol", "tcp", "--dport", "80"],
     "error: --src: (missing): is required: the peer's address"),
    (["--direction", "egress", "--protocol", "tcp", "--dport", "80"],
     "error: --dst: (missing): is required: the peer's address"),
    (["--direction", "ingress", "--protocol", "tcp", "--src", "10.0.0.1"],
     "error: --dport: (missing): is required for tcp and udp"),
    (["--direction", "ingress", "--protocol", "tcp", "--src", "10.0.0.999", "--dport", "80"],
     "error: --src: 10.0.0.999: not an IPv4 or IPv6 address"),
    (["--direction", "ingress", "--protocol", "tcp", "--src", "fd00::1", "--dport", "80"],
     "error: --dst: (missing): tap-db1 has no IPv6 address; give one"),
    (["--direction", "ingress", "--protocol", "tcp", "--src", "10.0.0.1", "--dst", "fd00::1", "--dport", "80"],
     "error: --dst: fd00::1: IPv4 and IPv6 mixed in one packet"),
    (["--direction", "ingress", "--protocol", "sctp", "--src", "10.0.0.1"],
     "error: --protocol: sctp: must be tcp, udp, icmp, icmpv6, gre or a number 0-255"),
], ids=["no-src-ingress", "no-dst-egress", "no-dport", "bad-src", "no-v6-address", "mixed-versions",
        "bad-protocol"])
def test_explain_bad_packet(args: list[str], message: str) -> None:
    result = run_agent("explain", "-c", str(SHOP), "--iface", "tap-db1", *args)
    assert result.code == 2
    assert message in result.err.splitlines(), result.err


def test_explain_lists_every_packet_error_at_once() -> None:
    result = run_agent("explain", "-c", str(SHOP), "--iface", "tap-db1", "--direction", "ingress",
                       "--protocol", "udp")
    assert result.code == 2
    assert "error: --src: (missing): is required: the peer's address" in result.err
    assert "error: --dport: (missing): is required for tcp and udp" in result.err


@pytest.mark.parametrize("args,fragment", [
    ([], "the following arguments are required: COMMAND"),
    (["show", "tap-db1"], "the following arguments are required: -c/--config"),
    (["explain", "-c", str(SHOP), "--iface", "tap-db1", "--direction", "up", "--protocol", "tcp"],
     "invalid choice: 'up'"),
    (["explain", "-c", str(SHOP), "--iface", "tap-db1", "--direction", "ingress", "--protocol", "tcp",
      "--src", "10.0.0.1", "--dport", "99999"], "--dport: 99999: not a port (1-65535)"),
    (["explain", "-c", str(SHOP), "--iface", "tap-db1", "--direction", "ingress", "--protocol", "tcp",
      "--src", "10.0.0.1", "--dport", "http"], "--dport: http: not a port (1-65535)"),
    (["explain", "-c", str(SHOP), "--iface", "tap-db1", "--direction", "ingress", "--protocol", "icmp",
      "--src", "10.0.0.1", "--icmp-type", "300"], "--icmp-type: 300: not an ICMP type (0-255)"),
], ids=["no-command", "no-config", "bad-direction", "port-too-big", "port-not-number", "icmp-type"])
def test_usage_errors_exit_2(args: list[str], fragment: str) -> None:
    result = run_agent(*args)
    assert result.code == 2
    assert fragment in result.err


def test_show_on_invalid_config_lists_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("security_groups: [{id: sg, rules: [{direction: in}]}]\n")
    result = run_agent("show", "-c", "bad.yaml", "tap-x", cwd=tmp_path)
    assert result.code == 2
    assert "error: security_groups[0].rules[0].direction: in: must be ingress or egress" in result.err
