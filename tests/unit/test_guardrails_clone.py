"""`secgroup-agent group clone SRC NEW -c F`: the copy, the file edit (comments and layout
kept), refusals, JSON, and a round trip through `check` for random documents."""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from guardrail_helpers import HOST, documents
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from profiles import examples

from agent.cli.main import main
from agent.errors import InvalidInput
from agent.guardrails.diff import diff_states
from agent.model.validate import load_state, validate_document

DOC = """\
# Fleet policy.  Comments, blank lines and odd spacing must survive the edit.
host: hv-01

security_groups:
  - id: sg-db                  # the database tier
    type: custom
    inner_access: drop         # replicas only talk on 5433
    rules:
      - {id: db-from-web,  direction: ingress, protocol: tcp, port_range: 5432/5432, source_group: sg-web}
      - {id: db-replication, direction: ingress, protocol: tcp, port_range: 5433/5433, source_group: sg-db}
      - direction: egress     # block form, no id
        policy: drop
        protocol: tcp
        port_range: 25/25
        dest_cidr: 0.0.0.0/0
  - id: sg-web
    name: web tier
    rules:
      - {id: web-http, direction: ingress, protocol: tcp, port_range: 80/80, source_cidr: 0.0.0.0/0}
    # a comment inside the last group stays with it

# --- instances -----------------------------------------------------------
instances:
  - {id: db-1, security_groups: [sg-db], interfaces: [{name: tap-db1, addresses: [10.0.2.21]}]}
  - {id: web-1, security_groups: [sg-web], interfaces: [{name: tap-web1, addresses: [10.0.1.11]}]}
"""


def _write(tmp_path: Path, text: str = DOC, name: str = "doc.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_clone_inserts_the_copy_and_keeps_everything_else(tmp_path, capsys):
    path = _write(tmp_path)
    assert main(["group", "clone", "sg-db", "sg-db-eu", "-c", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: security_groups[2] sg-db-eu: copy of sg-db (3 rules, no members)\n"
    old, new = DOC.splitlines(keepends=True), path.read_text().splitlines(keepends=True)
    at = old.index("    # a comment inside the last group stays with it\n") + 1
    block = new[at:at + len(new) - len(old)]
    assert new[:at] + new[at + len(block):] == old          # only an insertion, nothing else moved
    assert block[0] == "  - id: sg-db-eu  # copy of sg-db\n"
    assert block[4].startswith("      - {id: in-") and block[4].rstrip().endswith("source_group: sg-web}")
    assert "source_group: sg-db-eu}" in block[5]             # the self-reference follows the copy
    assert block[6].startswith("      - id: eg-") and block[7] == "        direction: egress\n"


def test_copy_matches_source_and_passes_check(tmp_path, capsys):
    path = _write(tmp_path)
    before = load_state(path, HOST)
    main(["group", "clone", "sg-db", "sg-db-eu", "-c", str(path)])
    assert main(["check", "-c", str(path)]) == 0
    after = load_state(path, HOST)
    src, copy = after.group_by_id["sg-db"], after.group_by_id["sg-db-eu"]
    assert (copy.type, copy.network, copy.inner_access, copy.allow_http, copy.allow_https) == \
        (src.type, src.network, src.inner_access, src.allow_http, src.allow_https)
    assert len(copy.rules) == len(src.rules)
    assert not {r.id for r in copy.rules} & {r.id for r in src.rules}
    assert after.members["sg-db-eu"] == ()
    assert diff_states(before, after) == []                  # nobody's traffic changes
    main(["group", "clone", "sg-web", "sg-web-2", "-c", str(path)])
    assert load_state(path, HOST).group_by_id["sg-web-2"].name == "sg-web-2"
    capsys.readouterr()


def test_existing_id_is_refused_with_a_path(tmp_path, capsys):
    path = _write(tmp_path)
    assert main(["group", "clone", "sg-db", "sg-web", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "error: security_groups[1].id: sg-web: already exists; choose another id for the copy" in err
    assert path.read_text() == DOC


def test_unknown_source_and_invalid_document_are_refused(tmp_path, capsys):
    path = _write(tmp_path)
    assert main(["group", "clone", "sg-nope", "sg-x", "-c", str(path)]) == 2
    assert "error: security_groups: sg-nope: no such security group to copy" in capsys.readouterr().err
    bad = _write(tmp_path, DOC.replace("port_range: 80/80", "port_range: 90/80"), "bad.yaml")
    assert main(["group", "clone", "sg-web", "sg-x", "-c", str(bad)]) == 2
    assert "security_groups[1].rules[0].port_range: 90/80" in capsys.readouterr().err
    assert main(["group", "clone", "sg-web", "sg-x", "-c", str(tmp_path / "missing.yaml")]) == 2
    assert path.read_text() == DOC


def test_json_documents_stay_json(tmp_path, capsys):
    data = yaml.safe_load(DOC)
    path = _write(tmp_path, json.dumps(data, indent=4), "doc.json")
    assert main(["group", "clone", "sg-db", "sg-db-eu", "-c", str(path)]) == 0
    written = json.loads(path.read_text())
    assert [g["id"] for g in written["security_groups"]] == ["sg-db", "sg-web", "sg-db-eu"]
    assert path.read_text().startswith('{\n    "host"')          # the file's indentation
    assert main(["check", "-c", str(path)]) == 0
    capsys.readouterr()


def test_flow_style_group_list_and_groups_last(tmp_path, capsys):
    flow = "instances: []\nsecurity_groups: [{id: sg-a, rules: [{direction: ingress, protocol: icmp, " \
           "source_cidr: 10.0.0.0/8}]}]\n"
    path = _write(tmp_path, flow)
    assert main(["group", "clone", "sg-a", "sg-b", "-c", str(path)]) == 0
    assert [g.id for g in load_state(path, HOST).groups] == ["sg-a", "sg-b"]
    items = "security_groups:\n- {id: sg-a, rules: [{direction: ingress, protocol: tcp, port_range: 80/80, " \
            "source_group: sg-a}]}   # flow item\ninstances: []\n"
    path = _write(tmp_path, items, "items.yaml")
    assert main(["group", "clone", "sg-a", "sg-b", "-c", str(path)]) == 0
    assert path.read_text().splitlines()[2].startswith("- {id: sg-b, rules: [{id: in-")
    assert path.read_text().splitlines()[2].endswith(", source_group: sg-b}]}")
    last = "instances: []\nsecurity_groups:\n- id: sg-a\n  rules: []\n# trailing comment\n"
    path = _write(tmp_path, last, "last.yaml")
    assert main(["group", "clone", "sg-a", "sg-b", "-c", str(path)]) == 0
    assert path.read_text() == last.replace("# trailing", "- id: sg-b  # copy of sg-a\n  rules: []\n# trailing")
    capsys.readouterr()


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(documents(), st.sampled_from(["yaml", "json"]), st.data())
def test_clone_round_trips_through_check(tmp_path, doc, fmt, data):
    try:
        before = validate_document(doc, HOST)
    except InvalidInput:
        assume(False)
    text = yaml.safe_dump(doc, sort_keys=False) if fmt == "yaml" else json.dumps(doc, indent=2)
    path = tmp_path / f"doc.{fmt}"
    path.write_text(text)
    source = data.draw(st.sampled_from([g["id"] for g in doc["security_groups"]]))
    assert main(["group", "clone", source, "copy-1", "-c", str(path)]) == 0
    assert main(["group", "clone", "copy-1", "copy-2", "-c", str(path)]) == 0      # a copy of a copy
    assert main(["check", "-c", str(path), "--host", HOST]) == 0
    after = load_state(path, HOST)
    assert diff_states(before, after) == []
    assert [len(after.group_by_id[g].rules) for g in ("copy-1", "copy-2")] == \
        [len(after.group_by_id[source].rules)] * 2
    assert main(["group", "clone", source, "copy-1", "-c", str(path)]) == 2
