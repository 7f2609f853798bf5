"""Issue 18's guard rails: `diff` summary, `--exit-code`, `--iface`, one address format;
`lint`'s one-family finding; help text on every argument and exit codes in `--help`.
Through the `secgroup-agent` process; in process: tests/unit/test_guardrails_families.py."""
from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import ROOT, run_agent

GUARD, NEXT = ROOT / "examples" / "guardrails.yaml", ROOT / "examples" / "guardrails-next.yaml"


def diff(*args: str):
    return run_agent("diff", "-c", str(GUARD), "-c", str(NEXT), *args)


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


def test_exit_codes_in_help() -> None:
    for args in (["--help"], ["diff", "--help"], ["explain", "--help"]):
        r = run_agent(*args)
        assert r.code == 0
        assert "exit status:" in r.out and "2  invalid input or usage" in r.out, args
