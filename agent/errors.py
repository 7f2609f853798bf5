"""The project's exceptions. User mistakes carry every error with its path; no tracebacks."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, order=True)
class InputError:
    path: str
    value: str
    message: str

    def __str__(self) -> str:
        value = self.value if self.value.isprintable() else json.dumps(self.value)
        path, message = printable(self.path), printable(self.message)
        if not value:               # a warning about a field, not about its value
            return f"{path}: {message}"
        return f"{path}: {value}: {message}" if path else f"{value}: {message}"


def printable(text: str) -> str:
    """`text` on one line: control and other unprintable characters as \\uXXXX."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def _error_order(err: InputError) -> tuple:
    # Numeric order of indexes: instances[10] after instances[9].
    parts = re.split(r"(\d+)", err.path)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts), err.value, err.message


def ordered(errors: list[InputError]) -> list[InputError]:
    """Distinct errors (or warnings) in document order."""
    return sorted(set(errors), key=_error_order)


class InvalidInput(Exception):
    """The desired state was rejected; `errors` lists every problem found; `revision` names
    the source's revision where a source knows it (the daemon logs it)."""

    revision: str | None = None

    def __init__(self, errors: list[InputError]):
        self.errors = ordered(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class AgentError(Exception):
    """A runtime failure (kernel, I/O); the message names what failed."""


class KernelError(AgentError):
    """The kernel refused a change, or could not be read."""


def show_value(value: Any) -> str:
    """A value as one short line: plain strings as they are; strings with surrounding
    blanks or line breaks (a YAML block scalar) and everything else as JSON."""
    if value is None:
        return "null"
    if isinstance(value, str) and value and value.strip() == value and value.isprintable():
        text = value
    else:
        try:
            text = json.dumps(value, default=str, sort_keys=True)
        except (TypeError, ValueError):
            text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


class NotEncodable(KernelError):
    """A change the agent's own netlink encoder does not cover (a rule outside its grammar):
    not a refusal, the caller sends it through libnftables instead."""
