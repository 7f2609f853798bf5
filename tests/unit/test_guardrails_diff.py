"""`secgroup-agent diff`: line changes, exact verdict changes (checked against
agent.policy.effective.evaluate), plain-words and JSON output, `--live` with a stand-in conntrack,
and the box arithmetic of agent.compiler.match_space against brute force."""
from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path

import pytest
from guardrail_helpers import (
    HOST,
    PORTS,
    all_lists,
    boundary_points,
    documents,
    packet_at,
    region_points,
    rule_docs,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from profiles import examples

from agent.cli.main import main
from agent.compiler.boxes import contains
from agent.compiler.match_space import Space, subtract
from agent.errors import InvalidInput
from agent.guardrails.diff import diff_states, render_text
from agent.kernel import conntrack
from agent.model.validate import load_state, validate_document
from agent.policy.effective import evaluate
from agent.policy.revocation import Flow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lint"
PROPERTY = settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])

OLD = """
host: hv-01
security_groups:
  - id: sg-web
    rules:
      - {id: web-http, direction: ingress, protocol: tcp, port_range: 80/80, source_cidr: 0.0.0.0/0}
      - {id: web-ssh, direction: ingress, protocol: tcp, port_range: 22/22, source_cidr: 10.0.0.0/8}
  - id: sg-db
    inner_access: drop
    rules:
      - {id: db-from-web, direction: ingress, protocol: tcp, port_range: 5432/5432, source_cidr: 10.0.1.0/24}
      - {id: db-no-smtp, direction: egress, policy: drop, protocol: tcp, port_range: 25/25, dest_cidr: 0.0.0.0/0}
      - {id: db-admin, direction: ingress, priority: 2, protocol: tcp, port_range: 22/22, source_cidr: 10.9.0.0/16}
instances:
  - {id: web-1, security_groups: [sg-web], interfaces: [{name: tap-web1, addresses: [10.0.1.11]}]}
  - {id: db-1, security_groups: [sg-db], interfaces: [{name: tap-db1, addresses: [10.0.2.21]}]}
"""


def _edit(text: str, *pairs: tuple[str, str]) -> str:
    for a, b in pairs:
        assert a in text
        text = text.replace(a, b)
    return text


NEW = _edit(OLD, ("      - {id: db-from-web, direction: ingress, protocol: tcp, port_range: 5432/5432, "
                  "source_cidr: 10.0.1.0/24}\n", ""),
            ("priority: 2, protocol: tcp, port_range: 22/22", "priority: 1, protocol: tcp, port_range: 22/22"),
            ("  - {id: db-1,", "  - {id: web-2, security_groups: [sg-web], interfaces: [{name: tap-web2, "
                              "addresses: [10.0.1.12]}]}\n  - {id: db-1,"))


@pytest.fixture
def docs(tmp_path):
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(OLD)
    new.write_text(NEW)
    return str(old), str(new)


def test_plain_words(docs, capsys):
    assert main(["diff", "-c", docs[0], "-c", docs[1]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "tap-db1 ingress: tcp 5432 from 10.0.1.0/24 was accepted by sg-db/db-from-web, now dropped (final)" in out
    assert "tap-db1 ingress: removed sg-db/db-from-web (line 4): accept priority 1: tcp dport 5432 " \
           "from 10.0.1.0/24" in out
    assert "tap-db1 ingress: changed sg-db/db-admin (line 5 -> 4): accept priority 2: tcp dport 22 from " \
           "10.9.0.0/16 -> accept priority 1: tcp dport 22 from 10.9.0.0/16" in out
    assert "tap-web1 ingress: tcp except ports 22, 80 from 10.0.1.12 was dropped (final), now accepted " \
           "by intra-group access of sg-web" in out
    assert "tap-web2: interface added (instance web-2, groups sg-web)" in out
    assert not any(line.startswith("tap-db1 egress") for line in out)


def test_moved_lines_are_reported():
    old = load_state_text(OLD)
    new = load_state_text(_edit(OLD, ("{id: web-http, direction: ingress, protocol: tcp",
                                      "{id: web-http, direction: ingress, priority: 50, protocol: tcp")))
    (web,) = [d for d in diff_states(old, new) if d.interface == "tap-web1"]
    changes = {(c.change, c.line) for dd in web.directions for c in dd.lines}
    assert ("changed", "sg-web/web-http") in changes
    assert {("moved", "sg-web/web-http"), ("moved", "sg-web/web-ssh")} & changes
    assert not any(dd.verdicts for dd in web.directions)            # order changed, verdicts did not


def test_json_output(docs, capsys):
    assert main(["diff", "-c", docs[0], "-c", docs[1], "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["old"] == docs[0] and out["new"] == docs[1]
    (db,) = [d for d in out["interfaces"] if d["interface"] == "tap-db1"]
    (ingress,) = db["directions"]
    assert ingress["direction"] == "ingress"
    assert {"traffic": "tcp 5432 from 10.0.1.0/24", "old": {"verdict": "accept", "line": "sg-db/db-from-web"},
            "new": {"verdict": "drop", "line": "final: nothing accepted it"},
            "text": "tcp 5432 from 10.0.1.0/24 was accepted by sg-db/db-from-web, now dropped (final)"} \
        in ingress["verdict_changes"]
    assert "live" not in out


def test_same_document_is_empty(docs, capsys):
    assert main(["diff", "-c", docs[0], "-c", docs[0]]) == 0
    assert capsys.readouterr().out == "no differences\n"
    for path in sorted(FIXTURES.glob("*.yaml")) + sorted(Path("examples").glob("*.yaml")):
        state = load_state(path, HOST)
        assert diff_states(state, state) == [], path


def test_needs_two_documents(docs, capsys):
    assert main(["diff", "-c", docs[0]]) == 2
    assert "-c OLD -c NEW" in capsys.readouterr().err


def test_live_lists_connections_the_new_state_cuts(docs, capsys, monkeypatch):
    ip = ipaddress.ip_address
    flows = [Flow(ip("10.0.1.11"), ip("10.0.2.21"), 6, 40000, 5432),      # web -> db: cut
             Flow(ip("10.9.0.5"), ip("10.0.2.21"), 6, 40001, 22),         # admin -> db: kept
             Flow(ip("10.0.2.21"), ip("192.0.2.1"), 6, 40002, 443)]       # db -> out: kept
    monkeypatch.setattr(conntrack, "list_flows", lambda: flows)
    assert main(["diff", "-c", docs[0], "-c", docs[1], "--live"]) == 0
    out = capsys.readouterr().out
    assert "live: would cut tcp 10.0.1.11:40000 -> 10.0.2.21:5432: ingress of tap-db1 no longer allows it\n" in out
    assert out.count("live:") == 1
    assert main(["diff", "-c", docs[0], "-c", docs[1], "--live", "--json"]) == 0
    live = json.loads(capsys.readouterr().out)["live"]
    assert live == [{"flow": "tcp 10.0.1.11:40000 -> 10.0.2.21:5432",
                     "reason": "ingress of tap-db1 no longer allows it"}]
    monkeypatch.setattr(conntrack, "list_flows", lambda: [])
    main(["diff", "-c", docs[0], "-c", docs[0], "--live"])
    assert "live: no established connection would be cut" in capsys.readouterr().out


def test_live_without_root_is_a_runtime_failure(docs, capsys, monkeypatch):
    from agent.errors import KernelError

    def refuse():
        raise KernelError("cannot read conntrack: Operation not permitted")
    monkeypatch.setattr(conntrack, "list_flows", refuse)
    assert main(["diff", "-c", docs[0], "-c", docs[1], "--live"]) == 1
    assert "cannot read conntrack" in capsys.readouterr().err


def load_state_text(text: str):
    import yaml
    return validate_document(yaml.safe_load(text), HOST)


# --- properties -------------------------------------------------------------------

@st.composite
def edited(draw, doc: dict) -> dict:
    """`doc` after a few edits of the kinds operators make."""
    new = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        groups = new["security_groups"]
        g = draw(st.sampled_from(groups))
        op = draw(st.sampled_from(["drop-rule", "add-rule", "ports", "policy", "priority",
                                   "membership", "addresses"]))
        if op == "drop-rule" and g["rules"]:
            g["rules"].pop(draw(st.integers(0, len(g["rules"]) - 1)))
        elif op == "add-rule":
            rule = draw(rule_docs([x["id"] for x in groups]))
            g["rules"].append({**rule, "id": f"{g['id']}-new{len(g['rules'])}"})
        elif op in ("ports", "policy", "priority") and g["rules"]:
            r = draw(st.sampled_from(g["rules"]))
            if op == "ports" and "port_range" in r:
                r["port_range"] = draw(st.sampled_from(PORTS))
            elif op == "policy":
                r["policy"] = "drop" if r["policy"] == "accept" else "accept"
            elif op == "priority":
                r["priority"] = draw(st.sampled_from([1, 2, 3]))
        elif op == "membership":
            inst = draw(st.sampled_from(new["instances"]))
            inst["security_groups"] = draw(st.lists(st.sampled_from([x["id"] for x in groups]),
                                                    min_size=1, max_size=2, unique=True))
        elif op == "addresses":
            inst = draw(st.sampled_from(new["instances"]))
            inst["interfaces"][0]["addresses"] = draw(st.lists(st.sampled_from(
                ["10.0.0.1", "10.0.0.3", "fd00::1", "192.0.2.9"]), max_size=2, unique=True))
    return new


def _valid(doc):
    try:
        return validate_document(doc, HOST)
    except InvalidInput:
        assume(False)


@PROPERTY
@given(st.data())
def test_verdict_changes_are_exact(data):
    doc = data.draw(documents())
    old, new = _valid(doc), _valid(data.draw(edited(doc)))
    rnd = data.draw(st.randoms(use_true_random=False))
    reported = {(d.interface, dd.direction): dd.verdicts for d in diff_states(old, new) for dd in d.directions}
    new_lists = all_lists(new)
    for key, a in all_lists(old).items():
        if key not in new_lists:
            continue
        b = new_lists[key]
        changes = reported.get(key, ())
        points = [(v, p) for v, _, p in list(region_points(a)) + list(region_points(b))]
        points += [(v, p) for v in (4, 6) for x in (a, b) for p in boundary_points(x, v, rnd, 20)]
        for v, p in points:
            flipped = evaluate(a, packet_at(p, v, a)).verdict != evaluate(b, packet_at(p, v, b)).verdict
            inside = [c for c in changes if c.version == v and any(contains(box, p) for box in c.boxes)]
            assert flipped == bool(inside), (key, v, p)
            for c in inside:
                assert (c.old_verdict, c.new_verdict) == (evaluate(a, packet_at(p, v, a)).verdict,
                                                          evaluate(b, packet_at(p, v, b)).verdict)


@PROPERTY
@given(documents())
def test_diff_of_a_document_with_itself_is_empty(doc):
    state = _valid(doc)
    assert diff_states(state, state) == []
    assert render_text([]) == "no differences\n"
    same = _valid(copy.deepcopy(doc))
    assert diff_states(state, same) == []


def small_box(draw) -> tuple:
    dims = [tuple(sorted(draw(st.tuples(st.integers(0, 6), st.integers(0, 6))))) for _ in range(4)]
    return tuple(dims)


@settings(max_examples=examples(200), deadline=None)
@given(st.data())
def test_space_and_subtract_against_brute_force(data):
    boxes = [small_box(data.draw) for _ in range(data.draw(st.integers(1, 6)))]
    space = Space(4, record=True)
    for i, b in enumerate(boxes):
        space.take(b, i)
    cube = [(a, p, s, d) for a in range(8) for p in range(8) for s in range(8) for d in range(8)]
    for point in cube[::7]:
        first = next((i for i, b in enumerate(boxes) if contains(b, point)), None)
        unit = tuple((x, x) for x in point)
        assert space.meets(unit) == (first is None)
        assert [line for line, _ in space.pieces(unit)] == ([] if first is None else [first])
    a, b = boxes[0], boxes[-1]
    parts = subtract(a, b)
    for point in cube[::5]:
        assert sum(contains(p, point) for p in parts) == (contains(a, point) and not contains(b, point))
