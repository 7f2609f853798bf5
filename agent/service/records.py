"""The daemon's small records and helpers: the last apply attempt, the document digest,
the garbage collector's settling, merging drift reports."""
from __future__ import annotations

import gc
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from agent.reconciler.keeper import Drift


@dataclass
class LastApply:
    time: float
    seconds: float
    kernel_seconds: float
    mode: str
    result: str
    revision: str


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))


def state_hash(data: Any) -> str:
    return hashlib.sha256(_canonical(data).encode()).hexdigest()[:16]


class StateHasher:
    """state_hash() for a source whose documents share unchanged items (etcd, a JSON
    file): the canonical JSON of each list item is remembered by identity, so a
    revision re-encodes only the items that changed (at 10,000 remote members the
    whole document costs 70-170 ms in the daemon's loop, the changed items ~1 ms).
    JSON encoding is compositional, so the text - and the hash - is state_hash's.
    `steps(data)` does it CHUNK items at a time (None between chunks, then the hash),
    so the daemon can let a change that arrives meanwhile go first."""
    CHUNK = 1000

    def __init__(self) -> None:
        self._texts: dict[int, tuple[Any, str]] = {}

    def __call__(self, data: Any) -> str:
        return [step for step in self.steps(data) if step is not None][-1]

    def steps(self, data: Any) -> Iterator[Optional[str]]:
        if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
            yield state_hash(data)
            return
        texts, kept = self._texts, {}
        parts = []
        for key in sorted(data):
            value = data[key]
            if isinstance(value, list):
                items = []
                for at in range(0, len(value), self.CHUNK):
                    for item in value[at:at + self.CHUNK]:
                        held = texts.get(id(item))
                        text = held[1] if held is not None and held[0] is item else _canonical(item)
                        kept[id(item)] = (item, text)
                        items.append(text)
                    yield None
                body = "[" + ",".join(items) + "]"
            else:
                body = _canonical(value)
            parts.append(_canonical(key) + ":" + body)
        self._texts = kept
        yield hashlib.sha256(("{" + ",".join(parts) + "}").encode()).hexdigest()[:16]


def whole_hash(data: Any) -> Iterator[Optional[str]]:
    """state_hash(data) as one step (a source whose items are fresh parses)."""
    yield state_hash(data)


def settle_garbage_collector() -> None:
    """After an apply: collect what it left, then move every surviving object (the
    desired state, the applied ruleset, the compiler's memo: millions of objects at
    1,000 interfaces) out of the collector's view. Without this every later full
    collection walks them all, a pause of ~100 ms landing inside the next change's
    latency; they are acyclic and freed by reference counting when replaced."""
    gc.collect()
    gc.freeze()


def merge_drift(a: Optional[Drift], b: Drift) -> Drift:
    """Two drift reports as one: the objects of both, unknown when either is."""
    if a is None:
        return b
    objects = a.objects | b.objects if a.objects is not None and b.objects is not None else None
    return Drift(a.reason if a.reason == b.reason else f"{a.reason}; {b.reason}", objects)

