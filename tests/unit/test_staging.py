"""agent.compiler.staging: a build handed over in stages is the same build, every object
of it is declared by exactly one stage or by the last script, and the last script
rewrites, deletes or refuses what the stages hold otherwise. (The scripts loaded on the
real kernel: tests/kernel/test_staged_load_kernel.py.)"""
from __future__ import annotations

import json
import re

import pytest
from gen_config import generate

from agent.compiler import staging
from agent.compiler.compile import build_ruleset, compile_ruleset
from agent.compiler.render import render_ruleset
from agent.compiler.ruleset import TABLE, Chain, NftSet, Ruleset, Table
from agent.compiler.staging import Stager, render_final
from agent.model.validate import validate_document

DECLARED = re.compile(r"^\t(?:set|map|chain) (\S+) \{", re.M)


def _state(*args: str):
    return validate_document(json.loads(generate(*args)))


def _staged(state) -> tuple[Ruleset, Stager, list[str]]:
    scripts: list[str] = []
    stager = Stager(scripts.append)
    rs, _ = compile_ruleset(state, None, stager)
    return rs, stager, scripts


@pytest.mark.parametrize("args", [("--interfaces", "24", "--rules", "8"),
                                  ("--interfaces", "30", "--rules", "6", "--remote", "40", "--groups", "5")])
def test_staged_build_is_the_build(args):
    state = _state(*args)
    rs, stager, scripts = _staged(state)
    assert rs == build_ruleset(state)
    assert len(scripts) == len(staging.STAGE_AT)
    assert scripts[0].startswith(f"create table inet {TABLE}\n")
    assert not any(s.startswith("create") for s in scripts[1:])


def test_every_object_is_declared_once_with_its_content_or_empty_then_filled():
    rs, stager, scripts = _staged(_state("--interfaces", "24", "--rules", "8", "--remote", "20"))
    final = render_final(rs, stager)
    assert final is not None and final.startswith(f"table inet {TABLE} {{\n")
    inet = next(t for t in rs.tables if t.family == "inet")
    staged_names = [n for s in scripts for n in DECLARED.findall(s)]
    assert len(staged_names) == len(set(staged_names))
    final_inet = final.split("\n}\n", 1)[0]
    final_names = DECLARED.findall(final_inet)
    for obj in list(inet.sets) + list(inet.chains):
        full = obj.name in stager.sets or obj.name in stager.chains
        empty = obj.name in stager.empty_sets or obj.name in stager.empty_chains
        assert full + empty <= 1
        # staged with its content: not in the last script; declared empty, or not staged: there
        assert (obj.name in final_names) == (not full), obj.name
    assert any(n.startswith("v_") for n in stager.empty_chains)
    assert any(n.startswith("peers") for n in stager.empty_sets)
    whole = render_ruleset(rs)
    bridge = whole[whole.index("table bridge"):]
    assert final.endswith(bridge)                # the other tables replaced as the whole script does


def _one(sets=(), chains=()) -> Ruleset:
    return Ruleset(tables=(Table("inet", TABLE, tuple(sets), tuple(chains)),), owned=(("inet", TABLE),))


def test_staged_objects_the_build_changed_or_dropped_are_rewritten_or_deleted():
    stager = Stager(lambda _: None)
    stager.chains.update(same=Chain("same", ("accept",)), changed=Chain("changed", ("drop",)),
                         gone=Chain("gone", ("drop",)))
    stager.sets["full"] = NftSet("full", "ipv4_addr", ("10.0.0.1",))
    stager.empty_sets["shared"] = NftSet("shared", "ipv4_addr", ())
    stager.empty_chains.add("v_1")
    rs = _one(sets=[NftSet("full", "ipv4_addr", ("10.0.0.2",)), NftSet("shared", "ipv4_addr", ("10.9.0.0/16",))],
              chains=[Chain("same", ("accept",)), Chain("changed", ("accept",)), Chain("v_1", ("counter drop",))])
    final = render_final(rs, stager)
    assert final is not None
    head, rest = final.split(f"table inet {TABLE} {{\n", 1)
    assert head.splitlines() == [f"flush set inet {TABLE} full", f"flush chain inet {TABLE} changed"]
    assert DECLARED.findall(rest) == ["full", "shared", "changed", "v_1"]
    assert f"delete chain inet {TABLE} gone" in final


def test_a_set_declared_empty_and_built_otherwise_is_refused():
    stager = Stager(lambda _: None)
    stager.empty_sets["shared"] = NftSet("shared", "ipv4_addr", ())
    assert render_final(_one(sets=[NftSet("shared", "ipv6_addr", ("::1",))]), stager) is None
    stager.empty_chains.add("v_1")
    hooked = Chain("v_1", (), hook="type filter hook forward priority 0; policy accept;")
    assert render_final(_one(chains=[hooked]), Stager(lambda _: None, empty_chains={"v_1"})) is None
