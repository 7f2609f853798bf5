"""What a valid document probably did not mean: warnings, each with its path.

* a field the schema does not know (a typo leaves its setting at the default, e.g.
  `instance:` at the top level filters nothing): `instances[0].interfaces[0].adresses:
  unknown field (did you mean addresses?)`. The known fields are read from the pydantic
  models of agent.model.schema, so a field added there is known here at once. Fields named
  `x-...`/`x_...` are the document's own extensions and never warned about.
* an interface with no addresses (anti-spoofing lets it send nothing; no group lends it).

`check` prints them, the daemon logs them and `status` shows them; `check --strict` or a
document's `strict: true` makes them errors.
"""
from __future__ import annotations

import difflib
import typing
from functools import lru_cache
from typing import Any, Iterator, Optional

from pydantic import BaseModel

from agent.errors import InputError, ordered
from agent.model.loader import path_text
from agent.model.schema import DocumentDoc

EXTENSION_PREFIXES = ("x-", "x_")


@lru_cache(maxsize=None)
def submodel(annotation: Any) -> Optional[type[BaseModel]]:
    """The model a field holds (itself, or in a list / Optional), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = submodel(arg)
        if found is not None:
            return found
    return None


@lru_cache(maxsize=None)
def known_fields(model: type[BaseModel]) -> tuple[frozenset, dict[str, type[BaseModel]]]:
    """The field names (and aliases) of `model`, and those that hold a model -> it."""
    names: set[str] = set()
    nested: dict[str, type[BaseModel]] = {}
    for name, info in model.model_fields.items():
        inner = submodel(info.annotation)
        for key in (name, info.alias):
            if key:
                names.add(key)
                if inner is not None:
                    nested[key] = inner
    return frozenset(names), nested


def unknown_field(key: Any, known: dict) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.75) if isinstance(key, str) else []
    return f"unknown field (did you mean {close[0]}?)" if close else "unknown field"


def unknown_keys(value: Any, model: type[BaseModel], path: list) -> Iterator[InputError]:
    """Unknown fields of `value` (a mapping read as `model`) and of what it holds; the
    depth is the schema's (its models nest five deep)."""
    known, nested = known_fields(model)
    for key in value.keys() - known:
        if not (isinstance(key, str) and key.startswith(EXTENSION_PREFIXES)):
            yield InputError(path_text(path + [key]), "", unknown_field(key, known))
    for key, inner in nested.items():
        sub = value.get(key)
        inner_known, inner_nested = known_fields(inner)
        for where, item in (enumerate(sub) if isinstance(sub, list) else [((), sub)]):
            # the subset test (in C) passes over the 100,000 rules of a fleet in ~10 ms
            if isinstance(item, dict) and (inner_nested or not item.keys() <= inner_known):
                yield from unknown_keys(item, inner, path + [key, where] if where != () else path + [key])


def interfaces_without_addresses(data: dict) -> Iterator[InputError]:
    instances = data.get("instances")
    for ii, inst in enumerate(instances if isinstance(instances, list) else []):
        nics = inst.get("interfaces") if isinstance(inst, dict) else None
        for ni, nic in enumerate(nics if isinstance(nics, list) else []):
            if isinstance(nic, dict) and not nic.get("addresses"):
                yield InputError(f"instances[{ii}].interfaces[{ni}].addresses", "",
                                 "no addresses: with anti-spoofing the interface sends nothing, "
                                 "and it lends no address to its groups")


def document_warnings(data: Any) -> list[InputError]:
    """Every warning of a document (any shape: only mappings are looked into)."""
    if not isinstance(data, dict):
        return []
    return ordered(list(unknown_keys(data, DocumentDoc, [])) + list(interfaces_without_addresses(data)))


def is_strict(data: Any, strict: bool) -> bool:
    """Warnings are errors: asked for (--strict) or by the document (`strict: true`)."""
    return strict or (isinstance(data, dict) and data.get("strict") is True)   # schema: strict bool
