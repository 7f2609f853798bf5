"""Loading and validating desired state: every error at once, each with its path.

    load_state(path) -> DesiredState      raises InvalidInput(errors)
    validate_document(data, host) -> DesiredState   host: --host, else the document's, else hostname

Errors read `security_groups[2].rules[0].port_range: 90/80: start is after end`.
"""
from __future__ import annotations

import gc
import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pydantic import ValidationError

from agent.errors import InputError, InvalidInput, show_value
from agent.model.loader import kind_of, path_text, read_document
from agent.model.objects import DesiredState, build_state
from agent.model.schema import DocumentDoc
from agent.model.validate_refs import cross_reference_errors
from agent.model.validate_warnings import document_warnings, is_strict


def format_loc(loc: tuple) -> str:
    return path_text(list(loc))


def _pydantic_errors(exc: ValidationError) -> Iterator[InputError]:
    for err in exc.errors():
        path = format_loc(err["loc"])
        if err["type"] == "missing":
            yield InputError(path, "(missing)", _missing_message(path))
            continue
        yield InputError(path, show_value(err.get("input")), _message(err, path))


_MESSAGES = {
    "int_type": "must be a whole number", "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number", "string_type": "must be a string",
    "list_type": "must be a list", "dict_type": "must be a mapping",
    "model_type": "must be a mapping", "model_attributes_type": "must be a mapping",
    "bool_type": "must be true or false", "bool_parsing": "must be true or false",
    "string_too_short": "must not be empty",
}


def _missing_message(path: str) -> str:
    if path.startswith("instances[") and path.endswith("].security_groups"):
        return "is required: an instance needs at least one security group"
    return "is required"


def _message(err: dict, path: str) -> str:
    kind, ctx = err["type"], err.get("ctx", {})
    if kind == "literal_error":
        return "must be " + ctx["expected"].replace("'", "")
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}"
    if kind == "too_short":
        return ("an instance needs at least one security group" if path.endswith("security_groups")
                else "must not be empty")
    return _MESSAGES.get(kind, err["msg"].removeprefix("Value error, "))


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block (as it was after). Validating and
    compiling a fleet document builds millions of objects, none of them in a cycle, and
    every full collection the allocations trigger walks all of them again: at 100,000
    remote members 13 full collections were ~40 % of `render` (docs/datapath.md). What
    the block leaves is collected afterwards, as usual."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def validate_document(data: Any, host: str | None = None, strict: bool = False) -> DesiredState:
    """The whole document, or InvalidInput with every error in it (and, `strict` or a
    document saying `strict: true`, every warning of agent.model.validate_warnings)."""
    with collector_paused():
        return _validate_document(data, host, strict)


def _validate_document(data: Any, host: str | None, strict: bool) -> DesiredState:
    if not isinstance(data, dict):
        raise InvalidInput([InputError("", show_value(data), f"top level must be a mapping, not {kind_of(data)}")])
    errors: list[InputError] = []
    try:
        doc = DocumentDoc.model_validate(data)
    except ValidationError as exc:
        errors.extend(_pydantic_errors(exc))
        doc = None
    local_host = agent_host(data, host)
    errors.extend(cross_reference_errors(data, local_host))
    if is_strict(data, strict):
        errors.extend(document_warnings(data))
    if errors or doc is None:
        raise InvalidInput(errors)
    return build_state(doc, local_host)


def agent_host(data: dict, host: str | None) -> str:
    """The agent's name: the caller's (--host), else the document's `host`, else the hostname."""
    doc_host = data.get("host")
    if host:
        return host
    if isinstance(doc_host, str) and doc_host.strip():
        return doc_host.strip()
    return platform.node()


def load_state(path: str | Path, host: str | None = None, strict: bool = False) -> DesiredState:
    with collector_paused():
        return validate_document(read_document(path), host, strict)
