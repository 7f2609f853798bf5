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
        return f"{self.path}: {self.value}: {self.message}" if self.path else \
            f"{self.value}: {self.message}"


def _error_order(err: InputError) -> tuple:
    # Numeric order of indexes: instances[10] after instances[9].
    parts = re.split(r"(\d+)", err.path)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts), err.value, err.message


class InvalidInput(Exception):
    """The desired state was rejected; `errors` lists every problem found."""

    def __init__(self, errors: list[InputError]):
        self.errors = sorted(set(errors), key=_error_order)
        super().__init__("\n".join(str(e) for e in self.errors))


class AgentError(Exception):
    """A runtime failure (kernel, I/O); the message names what failed."""


class KernelError(AgentError):
    """The kernel refused a change, or could not be read."""


def show_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return value if value and value.strip() == value else json.dumps(value)
    try:
        text = json.dumps(value, default=str, sort_keys=True)
    except (TypeError, ValueError):
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."
