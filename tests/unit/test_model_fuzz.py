"""Fuzzing the loader and validation (issue 12): generated and mutated documents -
structure, types, unicode, depth, and the text itself - are either valid (and then
compile to an nft script of plain ASCII) or refused with a list of path-named errors;
never an exception.

`make test` runs the `secgroup-ci` profile (200 examples a test, bounded time; a tenth
under the `dev` profile of `make test-unit`, tests/profiles.py);
`make fuzz` the `secgroup-fuzz` profile (FUZZ_EXAMPLES, default 20,000).
"""
from __future__ import annotations

import copy
import json
import os
import string
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from profiles import examples

from agent.compiler.compile import build_ruleset
from agent.compiler.render import render_ruleset
from agent.errors import InputError, InvalidInput
from agent.model.loader import parse_document
from agent.model.schema import (
    DocumentDoc,
    InstanceDoc,
    InterfaceDoc,
    PrefixListDoc,
    RuleDoc,
    SecurityGroupDoc,
)
from agent.model.validate import validate_document
from agent.model.validate_warnings import document_warnings

settings.register_profile("secgroup-ci", max_examples=examples(200), deadline=5000, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("secgroup-fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20000")),
                          deadline=None, suppress_health_check=list(HealthCheck))
PROFILE = settings.get_profile(os.environ.get("SECGROUP_FUZZ_PROFILE", "secgroup-ci"))

BASE = yaml.safe_load((Path(__file__).resolve().parents[1] / "fixtures" / "valid" / "shop.yaml").read_text())
FIELDS = sorted({name for model in (DocumentDoc, InstanceDoc, InterfaceDoc, PrefixListDoc, RuleDoc,
                                    SecurityGroupDoc) for name in model.model_fields})
SCRIPT_CHARS = set(string.printable) - set("\r\x0b\x0c")

texts = st.text(max_size=24) | st.sampled_from(
    ["::/0", "fd00::5%eth0\nflush ruleset", "10.0.0.1", "0.0.0.0/0", "8_0/8_0", "٨٠/٨٠", "80/80",
     "lo", "..", "tap:1", "", " ", "tcp", "ingress", "drop", "-1/-1", "\x00", "sg-web", "tap-web1"])
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | texts)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(FIELDS) | texts, inner, max_size=4), max_leaves=16)


def containers(node: Any, out: list) -> list:
    """Every (container, key) of the document: the places a mutation can hit."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in list(items):
        out.append((node, key))
        containers(value, out)
    return out


def mutate(doc: dict, draw: Any) -> None:
    places = containers(doc, [])
    node, key = places[draw(st.integers(0, len(places) - 1))]
    op = draw(st.sampled_from(["replace", "delete", "add", "deepen", "duplicate"]))
    if op == "replace":
        node[key] = draw(values)
    elif op == "delete":
        del node[key]
    elif op == "add" and isinstance(node, dict):
        node[draw(st.sampled_from(FIELDS) | texts)] = draw(values)
    elif op == "deepen":
        value = node[key]
        for _ in range(draw(st.integers(1, 80))):
            value = [value] if draw(st.booleans()) else {"k": value}
        node[key] = value
    elif op == "duplicate" and isinstance(node, list):
        node.append(copy.deepcopy(node[key]))


def assert_valid_or_path_named_errors(doc: Any) -> None:
    document_warnings(doc)                  # never raises either
    try:
        state = validate_document(doc, "hv-01")
    except InvalidInput as exc:
        assert exc.errors
        for err in exc.errors:
            assert isinstance(err, InputError) and (err.path or err.value) and err.message
            assert "\n" not in str(err)
        return
    script = render_ruleset(build_ruleset(state))
    assert set(script) <= SCRIPT_CHARS, sorted(set(script) - SCRIPT_CHARS)


def assert_loaded_or_refused(raw: str | bytes) -> None:
    """The loader gives a mapping (then validated as above) or refuses with errors."""
    try:
        doc = parse_document(raw, "fuzz.yaml")
    except InvalidInput as exc:
        assert exc.errors and all(err.message and "\n" not in str(err) for err in exc.errors)
        return
    assert_valid_or_path_named_errors(doc)


@PROFILE
@given(st.data())
def test_mutated_documents(data) -> None:
    doc = copy.deepcopy(BASE)
    for _ in range(data.draw(st.integers(1, 4))):
        mutate(doc, data.draw)
    assert_valid_or_path_named_errors(doc)


@PROFILE
@given(values)
def test_generated_documents(doc) -> None:
    assert_valid_or_path_named_errors(doc)


MARKUP = st.sampled_from(list("[]{}&*!<%:-?|>'\"#,\n\t \\") + ["<<: ", "&a ", "*a", "- ", ": ", "\u2028", "\ufeff"])


@PROFILE
@given(st.data())
def test_mutated_text(data) -> None:
    """The serialised document with characters inserted, deleted and replaced."""
    text = data.draw(st.sampled_from([yaml.safe_dump(BASE), json.dumps(BASE, indent=1),
                                      yaml.safe_dump(BASE, default_flow_style=True)]))
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 3))
        text = text[:at] + data.draw(MARKUP | st.text(max_size=3)) + text[at + cut:]
    assert_loaded_or_refused(text)


@PROFILE
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_arbitrary_text(raw) -> None:
    assert_loaded_or_refused(raw)
