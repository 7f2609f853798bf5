"""Hostile and careless input (issue 12): bombs refused quickly in little memory, typos
warned with their path, every source reading through agent.model.loader, `group clone`
writing YAML that reads back, and docs/config.md's "Bad input" output current.
In process; through the `secgroup-agent` process: tests/component/test_cli_bad_input.py."""
from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import ROOT
from guardrail_helpers import CLONE_SOURCE

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


INVALID = FIXTURES / "invalid"


def test_too_large_document_is_refused_before_parsing(tmp_path: Path, monkeypatch) -> None:
    from agent.errors import InvalidInput
    from agent.model import loader
    monkeypatch.setattr(loader, "MAX_BYTES", 1000)
    path = tmp_path / "big.yaml"
    path.write_text("security_groups: []\n" + "# padding\n" * 200)
    with pytest.raises(InvalidInput) as err:
        loader.read_document(path)
    assert str(err.value.errors[0]) == f"{path}: document too large: 1,001 bytes (the limit is 1,000)"


def test_known_fields_come_from_the_schema() -> None:
    from agent.model.schema import InterfaceDoc, RuleDoc
    from agent.model.validate_warnings import known_fields
    assert known_fields(InterfaceDoc)[0] == frozenset(InterfaceDoc.model_fields)
    assert known_fields(RuleDoc)[0] == frozenset(RuleDoc.model_fields)


def test_extension_fields_are_not_warned() -> None:
    from agent.model.validate_warnings import document_warnings
    assert document_warnings({"x_notes": 1, "x-owner": "ops", "security_groups": []}) == []


# --- every source reads through the loader -----------------------------------------------------
def test_etcd_values_refuse_duplicate_keys() -> None:
    from agent.sources import SourceError
    from agent.sources.etcd_layout import keys_document
    kvs = {"/p/meta": b"{}", "/p/instances/i-1": b'{"id": "i-1", "host": "a", "host": "b"}'}
    with pytest.raises(SourceError, match=r"/p/instances/i-1: host: 2 times: duplicate key"):
        keys_document(kvs, "/p", "etcd://x:1/p")


def test_http_body_refuses_an_alias_bomb() -> None:
    import httpx

    from agent.sources import SourceError
    from agent.sources.http import parse_body
    body = (INVALID / "alias-bomb.yaml").read_bytes()
    with pytest.raises(SourceError, match="aliases expand to more than 100,000 nodes"):
        parse_body(httpx.Response(200, content=body, headers={"content-type": "application/yaml"}), "http://x/")


# --- address clash, also incrementally ----------------------------------------------------------
def test_incremental_validation_catches_an_address_clash() -> None:
    import copy

    from agent.errors import InvalidInput
    from agent.model.validate_incremental import validate_update
    doc = {"host": "hv", "security_groups": [{"id": "sg"}], "instances": [
        {"id": f"i-{n}", "security_groups": ["sg"],
         "interfaces": [{"name": f"tap-{n}", "addresses": [f"10.0.0.{n}"]}]} for n in (1, 2)]}
    first = validate_update(doc, None, None)
    edited = copy.deepcopy(doc)
    edited["instances"][1]["interfaces"][0]["addresses"] = ["10.0.0.1"]
    with pytest.raises(InvalidInput) as err:
        validate_update(edited, None, first)
    assert [str(e) for e in err.value.errors] == [
        "instances[1].interfaces[0].addresses[0]: 10.0.0.1: address already used on this host "
        "(at instances[0].interfaces[0].addresses[0])"]
    moved = copy.deepcopy(doc)
    moved["instances"][1]["interfaces"][0]["addresses"] = ["10.0.0.3"]
    assert validate_update(moved, None, first).mode == "incremental"


# --- group clone ------------------------------------------------------------------------------


def test_clone_refuses_to_write_what_would_not_pass_check(tmp_path: Path, monkeypatch) -> None:
    from agent.errors import AgentError
    from agent.guardrails import clone
    path = tmp_path / "g.yaml"
    path.write_text(CLONE_SOURCE)
    monkeypatch.setattr(clone, "_yaml_text", lambda text, *a: text + "  - {id: sg-c, rules: [{source_cidr: ::/0}]}\n")
    with pytest.raises(AgentError, match="would not pass check"):
        clone.clone_group(path, "sg-a", "sg-b")
    monkeypatch.setattr(clone, "_yaml_text", lambda text, *a: text.replace('"yes"', "yes"))
    with pytest.raises(AgentError, match="would not pass check|would not read back"):
        clone.clone_group(path, "sg-a", "sg-b")
    assert path.read_text() == CLONE_SOURCE


def test_the_compiler_still_fails_closed_on_a_shared_bridged_address() -> None:
    """Validation refuses it now; a state that got past it anyway compiles to a drop for
    the address, not to a duplicate map key that would make the kernel refuse the ruleset."""
    import dataclasses
    import ipaddress

    from agent.compiler.compile import build_ruleset
    from agent.compiler.render import render_ruleset
    from agent.model.validate import load_state
    state = load_state(ROOT / "tests" / "golden" / "bridged.yaml", host="hv-01")
    shared = (ipaddress.ip_address("10.8.0.2"),)
    instances = tuple(dataclasses.replace(inst, interfaces=tuple(
        dataclasses.replace(nic, addresses=shared) for nic in inst.interfaces)) if inst.id == "i-b3" else inst
        for inst in state.instances)
    script = render_ruleset(build_ruleset(dataclasses.replace(state, instances=instances)))
    assert "\t\t\t10.8.0.2 : drop,\n" in script and "10.8.0.3" not in script
