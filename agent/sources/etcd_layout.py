"""The desired-state document as etcd keys, and back (pure).

Under a prefix P (from `etcd://HOST:PORT[,HOST:PORT...]/P`, stored with a leading slash):

    /P/meta                     top-level fields other than the three lists ({} at least);
                                its presence marks a published document
    /P/groups/<id>              one security group (the object of `security_groups`)
    /P/instances/<id>           one instance
    /P/prefix_lists/<id>        one prefix list

Values are JSON objects (publish writes them canonical: sorted keys, no blanks). Reading
rebuilds the document with each list sorted by id; an object without `id` takes it from
its key. Malformed values, ids that contradict their key and a missing `meta` are
SourceErrors naming the keys: a source reports bad data, it never hands over an empty
document that would flush the fleet's filtering.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Optional

from agent.errors import InvalidInput
from agent.model.loader import parse_json
from agent.sources import SourceError

log = logging.getLogger(__name__)
LISTS = {"security_groups": "groups", "instances": "instances", "prefix_lists": "prefix_lists"}
FOLDERS = {folder: name for name, folder in LISTS.items()}
_ENDPOINT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_warned: set[str] = set()


@dataclass(frozen=True)
class EtcdTarget:
    endpoints: tuple[str, ...]      # "host:port"
    prefix: str                     # "/secgroups" (no trailing slash)

    @property
    def key_prefix(self) -> str:
        return self.prefix + "/"


def parse_etcd_spec(spec: str) -> EtcdTarget:
    """`etcd://HOST:PORT[,HOST:PORT...]/PREFIX` -> EtcdTarget; SourceError when malformed."""
    rest = spec.removeprefix("etcd://")
    hosts, _, path = rest.partition("/")
    endpoints = tuple(h.strip() for h in hosts.split(",") if h.strip())
    prefix = "/" + path.strip("/")
    bad = [e for e in endpoints if not _ENDPOINT.match(e)]
    if not spec.startswith("etcd://") or not endpoints or bad or prefix == "/" or "?" in path:
        raise SourceError(f"{spec}: not an etcd source; expected etcd://HOST:PORT[,HOST:PORT...]/PREFIX"
                          + (f" (bad endpoint {bad[0]})" if bad and spec.startswith("etcd://") else ""))
    return EtcdTarget(endpoints, prefix)


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode()


def document_keys(data: dict, prefix: str) -> dict[str, bytes]:
    """The keys and values of a (validated) document."""
    meta = {k: v for k, v in data.items() if k not in LISTS}
    out = {f"{prefix}/meta": canonical(meta)}
    for name, folder in LISTS.items():
        for obj in data.get(name) or ():
            out[f"{prefix}/{folder}/{obj['id']}"] = canonical(obj)
    return out


def _load(key: str, value: bytes, errors: list[str]) -> Optional[dict]:
    try:
        obj = parse_json(value, key)          # agent.model.loader: the limits of every source
    except InvalidInput as exc:
        errors += [f"{key}: {e}" if e.path else str(e) for e in exc.errors]
        return None
    if not isinstance(obj, dict):
        errors.append(f"{key}: must be a JSON object, not {type(obj).__name__}")
        return None
    return obj


def _item(key: str, rest: str, value: bytes, errors: list[str]) -> Optional[dict]:
    """The object a list key holds (its id filled in from the key), or None (errors)."""
    obj = _load(key, value, errors)
    if obj is None:
        return None
    oid = rest.partition("/")[2]
    if "id" not in obj:
        obj["id"] = oid
    elif obj["id"] != oid:
        errors.append(f"{key}: id {json.dumps(obj['id'])} does not match the key")
        return None
    return obj


def _known(rest: str) -> bool:
    folder, _, oid = rest.partition("/")
    return rest == "meta" or (folder in FOLDERS and bool(oid))


def keys_document(kvs: dict[str, bytes], prefix: str, source: str) -> dict:
    """The document held by the keys under `prefix`; SourceError naming every bad key."""
    return DocumentCache().document(kvs, prefix, source)


class DocumentCache:
    """keys_document() for a source that reads revision after revision: a key whose value
    is the one seen last time (the same bytes) gives the object parsed then, so a revision
    that changes one instance key parses one value, not the document. The objects are
    shared between the documents returned and must not be mutated (the daemon's
    validation is told so: `validate_update(..., shared=True)`, which then takes an item
    that is the very object of the previous document as unchanged)."""

    def __init__(self) -> None:
        self._parsed: dict[str, tuple[bytes, dict]] = {}
        self._order: list[str] = []            # sorted keys of the last document
        self._keys: set[str] = set()
        self._last: Optional[_Built] = None     # the last document built without errors

    def document(self, kvs: dict[str, bytes], prefix: str, source: str) -> dict:
        meta_key = f"{prefix}/meta"
        if meta_key not in kvs:
            raise SourceError(f"{source}: no document under {prefix}/ (key {meta_key} is missing; "
                              f"write one with `secgroup-agent publish`)")
        errors: list[str] = []
        doc = _load(meta_key, kvs[meta_key], errors) or {}
        for name in LISTS:
            if name in doc:
                errors.append(f"{meta_key}: must not hold {name} (those are keys of their own)")
        built = self._patched(kvs, errors) or self._build(kvs, prefix, errors)
        if errors:
            raise SourceError(f"{source}: bad data: " + "; ".join(errors))
        self._last = built
        doc.update({name: items for name, items in built.lists.items() if items})
        return doc

    def _patched(self, kvs: dict[str, bytes], errors: list[str]) -> Optional["_Built"]:
        """The last document with the values that changed since (the same keys): the
        lists are copied and the changed items replaced in place; None: keys came or went."""
        last = self._last
        if last is None or len(kvs) != len(last.values):
            return None
        values, at = last.values, last.at
        changed = [k for k, v in kvs.items() if values.get(k) is not v]
        if any(k not in values for k in changed):
            return None
        lists = dict(last.lists)
        for key in changed:
            where = at.get(key)
            if where is None:
                continue                        # meta (read by the caller) or an ignored key
            name, index, rest = where
            obj = _item(key, rest, kvs[key], errors)
            if obj is not None:
                if lists[name] is last.lists[name]:
                    lists[name] = list(lists[name])
                lists[name][index] = obj
                self._parsed[key] = (kvs[key], obj)
        return _Built(dict(kvs), lists, at)

    def _build(self, kvs: dict[str, bytes], prefix: str, errors: list[str]) -> "_Built":
        if len(self._order) != len(kvs) or kvs.keys() != self._keys:
            self._order, self._keys = sorted(kvs), set(kvs)
            self._parsed = {k: v for k, v in self._parsed.items() if k in kvs}
        lists: dict[str, list] = {name: [] for name in LISTS}
        at: dict[str, tuple[str, int, str]] = {}
        cut, parsed = len(prefix) + 1, self._parsed
        for key in self._order:
            value, held, rest = kvs[key], parsed.get(key), key[cut:]
            if held is not None and (held[0] is value or held[0] == value):
                obj: Optional[dict] = held[1]
            elif not _known(rest):
                _warn_unknown(key)
                continue
            elif rest == "meta" or (obj := _item(key, rest, value, errors)) is None:
                continue
            else:
                parsed[key] = (value, obj)
            name = FOLDERS[rest.partition("/")[0]]
            at[key] = (name, len(lists[name]), rest)
            lists[name].append(obj)
        return _Built(dict(kvs), lists, at)


@dataclass(frozen=True)
class _Built:
    values: dict[str, bytes]                  # the keys and values it was built from
    lists: dict[str, list]                    # list name -> items, in key order
    at: dict[str, tuple[str, int, str]]       # key -> (list name, index, key without prefix)


def _warn_unknown(key: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning("etcd layout: ignoring key %s (expected meta, groups/<id>, instances/<id> "
                    "or prefix_lists/<id>)", key)


@dataclass(frozen=True)
class Plan:
    puts: dict[str, bytes]
    deletes: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.puts and not self.deletes


def _same(old: bytes, new: bytes) -> bool:
    if old == new:
        return True
    try:
        return json.loads(old) == json.loads(new)
    except (ValueError, RecursionError):
        return False


def plan_changes(current: dict[str, bytes], desired: dict[str, bytes]) -> Plan:
    """What turns `current` into `desired`: changed or new keys, and keys that are gone."""
    puts = {k: v for k, v in desired.items() if k not in current or not _same(current[k], v)}
    return Plan(puts, tuple(sorted(k for k in current if k not in desired)))
