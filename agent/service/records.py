"""The daemon's small records and helpers: the last apply attempt, the document digest,
the garbage collector's settling, merging drift reports."""
from __future__ import annotations

import gc
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Optional

from agent.reconciler.keeper import Drift


@dataclass
class LastApply:
    time: float
    seconds: float
    kernel_seconds: float
    mode: str
    result: str
    revision: str


def state_hash(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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

