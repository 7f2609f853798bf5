"""Loading and validating desired state: every error at once, each with its path.

    load_state(path) -> DesiredState      raises InvalidInput(errors)
    validate_document(data, host) -> DesiredState

Errors read `security_groups[2].rules[0].port_range: 90/80: start is after end`.
"""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import ValidationError

from agent.errors import InputError, InvalidInput, show_value
from agent.model import DesiredState, build_state
from agent.schema import DocumentDoc
from agent.validate_refs import cross_reference_errors


def format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_data(path: str | Path) -> Any:
    """Read YAML or JSON (JSON is YAML). Raises InvalidInput for unreadable input."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput([InputError("", str(path), "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput([InputError("", str(path), f"cannot read: {exc}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidInput([InputError("", str(path), f"malformed YAML/JSON at {where}: {problem}")]) from None
    if data is None:
        raise InvalidInput([InputError("", str(path), "empty document")])
    if not isinstance(data, dict):
        raise InvalidInput([InputError("", str(path),
                                       f"top level must be a mapping, not a {type(data).__name__}")])
    return data


def _pydantic_errors(exc: ValidationError) -> Iterator[InputError]:
    for err in exc.errors():
        path = format_loc(err["loc"])
        if err["type"] == "missing":
            yield InputError(path, "(missing)", "is required")
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


def validate_document(data: Any, host: str | None = None) -> DesiredState:
    """The whole document, or InvalidInput with every error in it."""
    if not isinstance(data, dict):
        raise InvalidInput([InputError("", show_value(data), "top level must be a mapping")])
    errors: list[InputError] = []
    try:
        doc = DocumentDoc.model_validate(data)
    except ValidationError as exc:
        errors.extend(_pydantic_errors(exc))
        doc = None
    errors.extend(cross_reference_errors(data))
    if errors or doc is None:
        raise InvalidInput(errors)
    return build_state(doc, host or socket.gethostname())


def load_state(path: str | Path, host: str | None = None) -> DesiredState:
    return validate_document(load_data(path), host)
