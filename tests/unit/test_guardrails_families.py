"""Issue 18's guard rails: `diff` summary, `--exit-code`, `--iface`, one address format;
`lint`'s one-family finding; help text on every argument and exit codes in `--help`.
In process; through the `secgroup-agent` process: tests/component/test_cli_diff.py."""
from __future__ import annotations

import argparse

import pytest
from cli_helpers import ROOT
from guardrail_helpers import HOST

from agent.cli.main import build_parser
from agent.guardrails.diff import diff_states
from agent.guardrails.diff_summary import newly_dropped, summarize
from agent.guardrails.lint import lint
from agent.model.validate import load_state, validate_document

GUARD, NEXT = ROOT / "examples" / "guardrails.yaml", ROOT / "examples" / "guardrails-next.yaml"


def test_summary_groups_changes_per_interface_with_both_families() -> None:
    summary = {s.interface: s for s in summarize(diff_states(load_state(str(GUARD), None),
                                                             load_state(str(NEXT), None)))}
    db = summary["tap-db1"]
    assert [c.text for c in db.dropped][0] == "ingress tcp 5432 from 10.0.1.12, fd00:1::11"
    assert not db.accepted and summary["tap-cache1"].accepted and not summary["tap-cache1"].dropped
    assert "hv-02:tap-db2" in summary


def test_newly_dropped_is_false_for_pure_openings() -> None:
    old, new = (load_state(str(p), None) for p in (GUARD, NEXT))
    assert newly_dropped(summarize([d for d in diff_states(old, new) if d.interface.startswith("tap-cache")])) is False


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
