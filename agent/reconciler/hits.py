"""The last-hit record of the verdict identities: a JSON file in the state directory
(`verdict-hits.json`), updated by every reading of the kernel's verdict counters
(`secgroup-agent counters`, the daemon's metrics collector) and read by
`lint --hits` ("never hit since"). Best effort: a record that cannot be written is
not kept (a reader that is not root still gets its counters)."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

from agent.compiler.counters import HitRecord, VerdictCounter, read_counters, update_hits
from agent.compiler.ruleset import TABLE
from agent.errors import AgentError
from agent.reconciler.store import state_dir

log = logging.getLogger(__name__)
HITS_FILE = "verdict-hits.json"


def default_hits_path() -> Path:
    return state_dir() / HITS_FILE


def record_hits(path: Optional[Path], counters: list[VerdictCounter], now: float) -> HitRecord:
    """Read, update and write back the record at `path` (None: update in memory only)."""
    old: HitRecord = {}
    if path is not None and path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s); starting a new record", path, exc)
    record = update_hits(old, counters, now)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, sort_keys=True))
            tmp.replace(path)
        except OSError as exc:
            log.debug("%s: not written (%s)", path, exc)
    return record


def kernel_counters() -> list[VerdictCounter]:
    """The verdict chains' counters of the agent's inet table (one `nft -j -t list`)."""
    from agent.kernel import nft
    objects = nft.list_table_json("inet", TABLE)
    if objects is None:
        raise AgentError(f"no table inet {TABLE} in the kernel: nothing applied here")
    return read_counters(objects)


def read_and_record(path: Optional[Path] = None) -> list[VerdictCounter]:
    """The kernel's counters, with the record at `path` (default: the state directory's) updated."""
    counters = kernel_counters()
    record_hits(path or default_hits_path(), counters, time.time())
    return counters
