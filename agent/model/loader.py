"""The one loader of desired-state documents: text in, plain data out, or InvalidInput.

Every source reads through here (the file, `check`, HTTP, etcd keys, `publish`, `group
clone`), so every source refuses the same things, each with its path:

* a document larger than MAX_BYTES;
* a key given twice in one mapping (JSON and YAML; `<<` merge keys may be overridden);
* nesting deeper than MAX_DEPTH (checked while parsing: libyaml's composer recurses in C
  and kills the process on ~100,000 levels, so only libyaml's event parser is used and
  the nodes are composed here, counting);
* YAML aliases that expand to more than MAX_ALIAS_NODES nodes in all ("billion laughs",
  `<<` merge bombs) or refer to themselves;
* anything else a parser raises (timestamps that are no dates, unhashable keys, ...).

It is quick and bounded: a bomb is refused after reading its anchors, not expanded. The
parsers and their limits (depth, aliases, duplicate keys) are in agent/model/parsing.py;
here are the size limit, the decoding, the mapping of every other parser error to
InvalidInput, and the reading of files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.errors import InputError, InvalidInput
from agent.model.parsing import (MAX_ALIAS_NODES, MAX_DEPTH, Refused, json_scanner, parse_any, path_text, strict_json,
                                 too_deep)

# The parsers' names imported from here before they had a module of their own.
__all__ = ["MAX_ALIAS_NODES", "MAX_BYTES", "MAX_DEPTH", "document_text", "json_scanner", "kind_of", "parse_document",
           "parse_json", "parse_text", "path_text", "read_document", "read_file", "read_limited", "too_deep"]

MAX_BYTES = 64 << 20            # a 1,000-interface x 100-rule fleet document is ~3 MB


def document_text(raw: bytes | str, name: str, what: str = "cannot read") -> str:
    if len(raw) > MAX_BYTES:
        raise InvalidInput([InputError("", name, f"document too large: {len(raw):,} bytes "
                                                 f"(the limit is {MAX_BYTES:,})")])
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput([InputError("", name, f"{what}: not UTF-8 text: {exc.reason}")]) from None
    return raw


def _guarded(parse: Any, raw: bytes | str, name: str, what: str = "cannot read") -> Any:
    """`parse(text, name)` with every exception but InvalidInput turned into one."""
    text = document_text(raw, name, what)
    try:
        return parse(text, name)
    except InvalidInput:
        raise
    except Refused as exc:
        raise InvalidInput([exc.error]) from None
    except Exception as exc:            # noqa: BLE001 - whatever a parser raises is the input's fault
        raise InvalidInput([InputError("", name, f"cannot parse: {type(exc).__name__}: {exc}")]) from None


def parse_text(raw: bytes | str, name: str) -> Any:
    """The data of a YAML or JSON document (JSON is YAML; a document that looks like JSON
    is parsed by the C JSON parser first: 100x faster on a fleet document)."""
    return _guarded(parse_any, raw, name)


def parse_json(raw: bytes | str, name: str) -> Any:
    """The data of a JSON text (an etcd value, an HTTP body sent as JSON)."""
    return _guarded(strict_json, raw, name, "malformed JSON")


def kind_of(value: Any) -> str:
    """'a list', 'a string', ... for messages about the shape of a value."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    names: dict[type, str] = {str: "a string", list: "a list", dict: "a mapping"}
    return names.get(type(value), f"a {type(value).__name__}")


def parse_document(raw: bytes | str, name: str, json_only: bool = False) -> dict:
    """A whole document (bytes or text): a mapping, or InvalidInput naming `name`."""
    data = (parse_json if json_only else parse_text)(raw, name)
    if data is None:
        raise InvalidInput([InputError("", name, "empty document")])
    if not isinstance(data, dict):
        raise InvalidInput([InputError("", name, f"top level must be a mapping, not {kind_of(data)}")])
    return data


def read_limited(path: Path) -> bytes:
    """The file's bytes, reading at most one byte more than MAX_BYTES (OSError as is)."""
    with path.open("rb") as f:
        return f.read(MAX_BYTES + 1)


def read_file(path: Path) -> bytes:
    """read_limited, with a missing file as InvalidInput (other OSErrors as they are: a
    source retries them, a command reports them)."""
    try:
        return read_limited(path)
    except FileNotFoundError:
        raise InvalidInput([InputError("", str(path), "no such file")]) from None


def read_document(path: str | Path) -> dict:
    """The document in a file; InvalidInput when it is missing, unreadable or malformed."""
    path = Path(path)
    try:
        raw = read_file(path)
    except OSError as exc:
        raise InvalidInput([InputError("", str(path), f"cannot read: {exc}")]) from None
    return parse_document(raw, str(path))
