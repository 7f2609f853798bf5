"""`explain --from A --to B`, `explain --matrix`, near-miss hints and `show --addresses`
(issue 18): endpoints of every kind, both ends judged in order, the overall verdict, and
agreement with agent.policy.effective on random documents.
Through the `secgroup-agent` process; in process: tests/unit/test_policy_explain_flow.py."""
from __future__ import annotations

import json

import pytest
from cli_helpers import EXAMPLE, run_agent


def explain(*args: str):
    return run_agent("explain", "-c", str(EXAMPLE), *args)


def test_cli_from_to_text_and_json() -> None:
    r = explain("--from", "web-2", "--to", "db-1", "--protocol", "tcp", "--dport", "5432")
    assert r.code == 0, r.err
    assert r.lines[0] == "tcp web-2 (tap-web2) -> db-1 (tap-db1): 10.0.1.12 -> 10.0.2.21 40000 -> 5432"
    assert r.lines[1].startswith("1. tap-web2 egress: ACCEPT by line ")
    assert r.lines[2] == "2. tap-db1 ingress: DROP by line 4: rule db-block-web2 of group sg-db (priority 1)"
    assert r.lines[3].startswith("   near miss: sg-db/db-from-web (line 5) would accept")
    assert r.lines[-1] == "verdict: DROP"
    got = json.loads(explain("--from", "web-2", "--to", "db-1", "--protocol", "tcp", "--dport", "5432",
                             "--json").out)
    assert got["verdict"] == "drop"
    assert [(e["interface"], e["direction"], e["verdict"]) for e in got["ends"]] == [
        ("tap-web2", "egress", "accept"), ("tap-db1", "ingress", "drop")]
    assert got["ends"][1]["near_misses"][0]["field"] == "order"


def test_cli_matrix_text_and_json() -> None:
    r = explain("--matrix", "--protocol", "tcp", "--dport", "5432")
    assert r.code == 0, r.err
    rows = {line.split()[0]: line.split()[1:] for line in r.lines[2:]}
    assert r.lines[1].split() == ["db-1", "db-2", "web-1", "web-2"]
    assert rows["web-1"] == ["yes", "yes", ".", "yes"] and rows["web-2"][0] == "no"
    got = json.loads(explain("--matrix", "--protocol", "tcp", "--dport", "5432", "--json").out)
    assert got["matrix"]["web-1"]["db-1"] == {"ipv4": "accept"}


@pytest.mark.parametrize("args,message", [
    (["--from", "web-1", "--protocol", "tcp", "--dport", "1"], "error: --to: (missing): is required with --from/--to"),
    (["--from", "web-1", "--to", "db-1", "--iface", "tap-db1", "--protocol", "icmp"],
     "error: explain: --iface --from/--to: give exactly one of --iface/--direction, --from/--to or --matrix"),
    (["--from", "web-1", "--to", "db-1", "--protocol", "tcp"], "error: --dport: (missing): is required for tcp and udp"),
    (["--from", "web-1", "--to", "db-1", "--dport", "1"], "error: --protocol: (missing): is required"),
    (["--from", "web-1", "--to", "db-1", "--protocol", "icmp", "--src", "10.0.0.1"],
     "error: --src: 10.0.0.1: the ends' own addresses are used with --from/--to"),
    (["--from", "1.1.1.1", "--to", "2.2.2.2", "--protocol", "icmp"],
     "error: --from/--to: 1.1.1.1 -> 2.2.2.2: neither end is an instance interface of the document"),
], ids=["no-to", "two-modes", "no-dport", "no-protocol", "src-with-from", "outside-to-outside"])
def test_cli_flow_errors_exit_2(args: list[str], message: str) -> None:
    r = explain(*args)
    assert r.code == 2 and message in r.err.splitlines(), r.err


@pytest.mark.parametrize("flag", ["--dport", "--sport"])
def test_port_zero_is_refused_like_rules(flag: str) -> None:
    r = explain("--iface", "tap-db1", "--direction", "ingress", "--protocol", "tcp", "--src", "10.0.0.1",
                "--dport", "80", flag, "0")
    assert r.code == 2 and f"{flag}: 0: not a port (1-65535)" in r.err


def test_explain_and_show_accept_host_iface() -> None:
    r = explain("--iface", "hv-02:tap-db2", "--direction", "ingress", "--protocol", "tcp",
                "--src", "10.0.2.21", "--dport", "5433", "--json")
    got = json.loads(r.out)
    assert (got["interface"], got["verdict"], got["rule"]) == ("hv-02:tap-db2", "accept", "db-replication")
    own = run_agent("show", "-c", str(EXAMPLE), "hv-01:tap-db1")
    assert own.code == 0 and own.lines[0].startswith("interface tap-db1: instance db-1")
    remote = run_agent("show", "-c", str(EXAMPLE), "hv-02:tap-db2")
    assert remote.code == 0 and remote.lines[0].startswith("interface hv-02:tap-db2: instance db-2")


def test_show_addresses_expands_group_and_prefix_list_peers() -> None:
    counted = run_agent("show", "-c", str(EXAMPLE), "tap-db1").out
    assert "from group sg-web (3 networks)" in counted
    r = run_agent("show", "-c", str(EXAMPLE), "tap-db1", "--addresses")
    assert "tcp dport 5432 from group sg-web (10.0.1.11, 10.0.1.12, fd00:1::11)" in r.out
    assert "tcp dport 5433 from group sg-db (10.0.2.21, 10.0.2.22)" in r.out
    assert "all from 10.0.1.12\n" in r.out and "/32" not in r.out       # one address format
    web = run_agent("show", "-c", str(EXAMPLE), "tap-web1", "--addresses").out
    assert "tcp dport 22 from prefix-list pl-office (203.0.113.0/24, 2001:db8:1::/48)" in web


def test_explain_iface_shows_near_misses_on_a_drop_only() -> None:
    base = ("--iface", "tap-db1", "--direction", "ingress", "--protocol", "tcp", "--src", "10.0.2.22")
    drop = explain(*base, "--dport", "5432")
    assert drop.lines[3] == ("near miss: sg-db/db-replication (line 6) would accept: it opens port 5433, "
                             "the connection is to 5432")
    got = json.loads(explain(*base, "--dport", "5432", "--json").out)
    assert [(h["name"], h["field"]) for h in got["near_misses"]] == [
        ("sg-db/db-replication", "port"), ("sg-db/db-from-web", "peer")]
    assert "near_misses" not in json.loads(explain(*base, "--dport", "5433", "--json").out)
