"""Issue 18's guard rails: `diff` summary, `--exit-code`, `--iface`, one address format;
`lint`'s one-family finding; help text on every argument and exit codes in `--help`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from agent.cli.main import build_parser
from agent.guardrails.diff import diff_states
from agent.guardrails.diff_summary import newly_dropped, summarize
from agent.guardrails.lint import lint
from agent.model.validate import load_state, validate_document
from cli_helpers import ROOT, run_agent
from guardrail_helpers import HOST

GUARD, NEXT = ROOT / "examples" / "guardrails.yaml", ROOT / "examples" / "guardrails-next.yaml"


def diff(*args: str):
    return run_agent("diff", "-c", str(GUARD), "-c", str(NEXT), *args)


def test_summary_groups_changes_per_interface_with_both_families() -> None:
    summary = {s.interface: s for s in summarize(diff_states(load_state(str(GUARD), None),
                                                             load_state(str(NEXT), None)))}
    db = summary["tap-db1"]
    assert [c.text for c in db.dropped][0] == "ingress tcp 5432 from 10.0.1.12, fd00:1::11"
    assert not db.accepted and summary["tap-cache1"].accepted and not summary["tap-cache1"].dropped
    assert "hv-02:tap-db2" in summary


def test_diff_text_ends_with_the_summary_in_one_address_format() -> None:
    r = diff()
    assert r.code == 0, r.err                        # without --exit-code: 0
    at = r.lines.index("summary: 6 interface(s) change verdicts; 4 newly drop, 2 newly accept")
    assert "  tap-db1: newly dropped ingress tcp 5432 from 10.0.1.12, fd00:1::11" in r.lines[at:]
    assert "/32" not in r.out and "/128" not in r.out


def test_exit_code_one_when_anything_is_newly_dropped() -> None:
    assert diff("--exit-code").code == 1
    assert run_agent("diff", "-c", str(GUARD), "-c", str(GUARD), "--exit-code").code == 0
    opens = diff("--exit-code", "--iface", "tap-cache1")       # tap-cache1 only gains access
    assert opens.code == 0 and "newly accepted" in opens.out and "newly dropped" not in opens.out
    back = run_agent("diff", "-c", str(NEXT), "-c", str(GUARD), "--exit-code", "--iface", "tap-cache1")
    assert back.code == 1 and "newly dropped ingress any protocol from 10.0.3.32" in back.out


def test_exit_code_two_on_invalid_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("security_groups: [{id: sg, rules: [{direction: in}]}]\n")
    r = run_agent("diff", "-c", str(GUARD), "-c", str(bad), "--exit-code")
    assert r.code == 2 and "direction: in: must be ingress or egress" in r.err
    assert diff("--exit-code", "--iface", "tap-nope").code == 2


def test_diff_iface_takes_name_or_host_iface_and_json_says_newly_dropped() -> None:
    got = json.loads(diff("--json", "--iface", "hv-02:tap-db2", "--iface", "hv-01:tap-db1").out)
    assert [d["interface"] for d in got["interfaces"]] == ["tap-db1", "hv-02:tap-db2"]
    assert got["newly_dropped"] is True
    assert got["summary"][0]["newly_dropped"][0] == {"direction": "ingress", "traffic": "tcp 5432",
                                                     "addresses": ["10.0.1.12", "fd00:1::11"]}


def test_newly_dropped_is_false_for_pure_openings() -> None:
    old, new = (load_state(str(p), None) for p in (GUARD, NEXT))
    assert newly_dropped(summarize([d for d in diff_states(old, new) if d.interface.startswith("tap-cache")])) is False


# --- lint: one family ---------------------------------------------------------------------

def _doc(rules: list[dict], gtype: str = "custom") -> dict:
    return {"host": HOST, "security_groups": [{"id": "g", "type": gtype, "rules": rules}],
            "instances": [{"id": "i", "security_groups": ["g"],
                           "interfaces": [{"name": "tap-i", "addresses": ["10.0.0.1", "fd00::1"]}]}]}


SMTP4 = {"id": "no-smtp", "direction": "egress", "policy": "drop", "protocol": "tcp", "port_range": "25/25",
         "dest_cidr": "0.0.0.0/0"}


def one_family(doc: dict) -> list:
    return [f for f in lint(validate_document(doc, HOST)) if f.kind == "one-family"]


def test_lint_finds_an_ipv4_drop_left_open_in_ipv6_by_the_default_egress() -> None:
    [f] = one_family(_doc([SMTP4]))
    assert (f.severity, f.group, f.rule, f.interfaces) == ("warning", "g", "no-smtp", ("tap-i",))
    assert f.message == ("drops egress tcp 25 to 0.0.0.0/0 only: IPv6 tcp 25 stays open by "
                         "default g: egress open; add the ::/0 twin rule")


@pytest.mark.parametrize("extra,gtype", [
    ([{**SMTP4, "id": "no-smtp6", "dest_cidr": "::/0"}], "custom"),        # the twin is there
    ([], "enterprise"),                                                     # nothing opens IPv6
    ([{**SMTP4, "id": "x", "policy": "accept", "dest_cidr": "::/0", "port_range": "26/26"}], "enterprise"),
])
def test_lint_is_silent_when_the_twin_family_is_closed(extra: list, gtype: str) -> None:
    assert one_family(_doc([SMTP4, *extra], gtype)) == []


def test_lint_one_family_ingress_ipv6_rule_and_a_later_user_accept() -> None:
    rules = [{"id": "no-ssh6", "direction": "ingress", "policy": "drop", "protocol": "tcp", "port_range": "22/22",
              "source_cidr": "::/0"},
             {"id": "ssh", "direction": "ingress", "priority": 5, "protocol": "tcp", "port_range": "1/1024",
              "source_cidr": "10.0.0.0/8"}]
    [f] = one_family(_doc(rules))
    assert f.covered_by == ("g/ssh",) and "IPv4 tcp 22 stays open by g/ssh; add the 0.0.0.0/0 twin" in f.message


# --- help ---------------------------------------------------------------------------------

def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_argument_and_option_has_help_text() -> None:
    missing = [f"{p.prog}: {'/'.join(a.option_strings) or a.dest}" for p in _parsers(build_parser())
               for a in p._actions if a.help is None]
    assert missing == []


def test_exit_codes_in_help() -> None:
    for args in (["--help"], ["diff", "--help"], ["explain", "--help"]):
        r = run_agent(*args)
        assert r.code == 0
        assert "exit status:" in r.out and "2  invalid input or usage" in r.out, args
