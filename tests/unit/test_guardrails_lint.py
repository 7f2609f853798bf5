"""`secgroup-agent lint`: one fixture per finding kind with its exact findings, the CLI
contract (exit codes, JSON, options), and property tests of the shadowing analysis
against the semantics engine (agent.policy.effective.evaluate)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from guardrail_helpers import (
    HOST,
    all_lists,
    boundary_points,
    documents,
    packet_at,
    region_points,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from profiles import examples

from agent.cli.main import main
from agent.compiler.boxes import volume
from agent.compiler.match_space import full_box, list_regions
from agent.errors import InvalidInput
from agent.guardrails.diff import diff_states
from agent.guardrails.lint import DEFAULT_EXPOSED_PORTS, LintOptions, lint, parse_ports
from agent.model.validate import load_state, validate_document
from agent.policy.effective import USER, evaluate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lint"
KINDS = ["shadowed", "duplicate", "exposed", "group-per-instance", "too-many-rules", "unused", "unguarded"]
PROPERTY = settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("kind", KINDS)
def test_fixture_gives_exactly_the_expected_findings(kind):
    expected = json.loads((FIXTURES / f"{kind}.expected.json").read_text())
    state = load_state(FIXTURES / f"{kind}.yaml", HOST)
    got = [f.to_json() for f in lint(state, LintOptions(**expected["options"]))]
    assert got == expected["findings"]
    assert {f["kind"] for f in got} == {kind}


@pytest.mark.parametrize("kind", KINDS)
def test_cli_json_matches_the_fixture(kind, capsys):
    expected = json.loads((FIXTURES / f"{kind}.expected.json").read_text())
    opts = [f"--{k.replace('_', '-')}={v}" for k, v in expected["options"].items()]
    rc = main(["lint", "-c", str(FIXTURES / f"{kind}.yaml"), "--json", "--fail-on", "info", *opts])
    got = json.loads(capsys.readouterr().out)
    assert got == expected["findings"]
    assert rc == (1 if got else 0)
    for finding in got:
        assert {"kind", "severity", "group", "rule", "interfaces", "covered_by", "message"} <= finding.keys()


def test_shadowed_names_covering_lines_and_anti_spoofing():
    state = load_state(FIXTURES / "shadowed.yaml", HOST)
    by_rule = {f.rule: f for f in lint(state) if f.kind == "shadowed"}
    assert by_rule["app-mid"].covered_by[-2:] == ("sg-app/app-hi", "sg-app/app-lo")
    assert by_rule["app-from-self"].covered_by == ("intra-group sg-app",)
    assert by_rule["v6-no-smtp4"].covered_by == ("anti-spoofing (no IPv4 address)",)
    assert "extra-ssh-lan" not in by_rule and "app-ntp" not in by_rule and "v6-no-smtp6" not in by_rule


def test_exit_codes_follow_fail_on(capsys):
    exposed = str(FIXTURES / "exposed.yaml")
    assert main(["lint", "-c", exposed]) == 1                       # errors, default --fail-on error
    unused = str(FIXTURES / "unused.yaml")
    assert main(["lint", "-c", unused]) == 0                        # info only
    assert main(["lint", "-c", unused, "--fail-on", "warning"]) == 0
    assert main(["lint", "-c", unused, "--fail-on", "info"]) == 1
    out = capsys.readouterr().out
    assert "4 finding(s): 4 info" in out


def test_invalid_input_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("security_groups:\n  - id: sg\n    rules:\n      - {direction: ingress, protocol: tcp, "
                   "port_range: 90/80, source_cidr: 0.0.0.0/0}\n")
    assert main(["lint", "-c", str(bad)]) == 2
    assert "security_groups[0].rules[0].port_range: 90/80" in capsys.readouterr().err


def test_bad_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["lint", "-c", str(FIXTURES / "exposed.yaml"), "--exposed-ports", "22,x"])
    assert exc.value.code == 2
    assert "x: not a port" in capsys.readouterr().err


def test_exposed_ports_option():
    assert parse_ports("22,8000-8002") == (22, 8000, 8001, 8002)
    assert parse_ports("+8080") == tuple(sorted(DEFAULT_EXPOSED_PORTS + (8080,)))
    for bad in ("", "0", "70000", "9-3", "a"):
        with pytest.raises(ValueError):
            parse_ports(bad)
    state = load_state(FIXTURES / "exposed.yaml", HOST)
    only_https = lint(state, LintOptions(exposed_ports=(443,)))
    exposed = sorted((f.group, f.rule, f.severity) for f in only_https if f.kind == "exposed")
    assert exposed == [("sg-pub", "https-world", "warning"), ("sg-world", "everything", "error")]


def test_text_output_one_line_per_finding(capsys):
    main(["lint", "-c", str(FIXTURES / "duplicate.yaml")])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "warning  duplicate          sg-dup/dup-b: same match and verdict as sg-dup/dup-a; remove one",
        "warning  duplicate          sg-dup/dup-c: same match and verdict as sg-dup/dup-a (priority 1 and 5); remove one",
        "2 finding(s): 2 warning"]


# --- properties -------------------------------------------------------------------

def _state(doc):
    try:
        return validate_document(doc, HOST)
    except InvalidInput:
        assume(False)


@PROPERTY
@given(documents(), st.data())
def test_a_shadowed_rule_never_decides_a_packet(doc, data):
    state = _state(doc)
    shadowed = {(f.group, f.rule) for f in lint(state) if f.kind in ("shadowed", "duplicate")}
    live = {(e.group_id, e.rule_id) for el in all_lists(state).values() for e in el.entries
            if e.stage == USER}
    decided = set()
    rnd = data.draw(st.randoms(use_true_random=False))
    for elist in all_lists(state).values():
        for v in (4, 6):
            assert sum(volume(box) for _, box in list_regions(elist, v)) == volume(full_box(v))
        points = list(region_points(elist))
        points += [(v, None, p) for v in (4, 6) for p in boundary_points(elist, v, rnd)]
        for v, line, point in points:
            d = evaluate(elist, packet_at(point, v, elist))
            assert line is None or d.index == line          # the regions agree with evaluate
            decided.add((d.entry.group_id, d.entry.rule_id))
            assert (d.entry.group_id, d.entry.rule_id) not in shadowed or d.entry.stage != USER
    # exactness the other way: a used rule that decides no region corner is reported
    silent = {k for k in live if k not in decided}
    empty = {(f.group, f.rule) for f in lint(state) if f.kind == "unused" and f.rule}
    assert silent <= shadowed | empty


@settings(PROPERTY, max_examples=examples(100))
@given(documents(), st.data())
def test_removing_shadowed_rules_changes_no_verdict(doc, data):
    state = _state(doc)
    shadowed = sorted({(f.group, f.rule) for f in lint(state) if f.kind in ("shadowed", "duplicate")})
    assume(shadowed)
    pick = data.draw(st.sampled_from([shadowed] + [[s] for s in shadowed]))
    smaller = json.loads(json.dumps(doc))
    for g in smaller["security_groups"]:
        g["rules"] = [r for r in g["rules"] if (g["id"], r["id"]) not in pick]
    after = validate_document(smaller, HOST)
    assert all(not d.directions or not any(dd.verdicts for dd in d.directions)
               for d in diff_states(state, after))
    old_lists, new_lists = all_lists(state), all_lists(after)
    rnd = data.draw(st.randoms(use_true_random=False))
    for key, elist in old_lists.items():
        points = list(region_points(elist)) + list(region_points(new_lists[key]))
        points += [(v, None, p) for v in (4, 6) for p in boundary_points(elist, v, rnd)]
        for v, _line, point in points:
            packet = packet_at(point, v, elist)
            assert evaluate(elist, packet).verdict == evaluate(new_lists[key], packet).verdict
