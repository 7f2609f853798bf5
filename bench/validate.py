#!/usr/bin/env python3
"""Full vs incremental validation of a changed desired-state document (no root needed).

    .venv/bin/python bench/validate.py --interfaces 1000 --rules 50

The document comes from scripts/gen-config (or --config F, JSON). For each kind
of change, every run validates a fresh parse of the edited document (JSON parsing is not
timed) with `validate_document` and with `validate_update` given the result for the
unedited document; prints the median of the runs and the path the update took.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.model.validate import validate_document  # noqa: E402
from agent.model.validate_incremental import validate_update  # noqa: E402

GEN = str(Path(__file__).resolve().parents[1] / "scripts" / "gen-config")


def one_rule_port(doc: dict) -> None:
    rule = next(r for g in doc["security_groups"] for r in g["rules"] if r["protocol"] in ("tcp", "udp"))
    lo = int(str(rule["port_range"]).split("/")[0])
    rule["port_range"] = f"{lo}/{min(65535, lo + 7)}"


def instance_groups(doc: dict) -> None:
    inst = doc["instances"][len(doc["instances"]) // 2]
    inst["security_groups"] = [g["id"] for g in doc["security_groups"][:2]]


def instance_added(doc: dict) -> None:
    doc["instances"].append({"id": "i-bench-new", "security_groups": [doc["security_groups"][0]["id"]],
                             "interfaces": [{"name": "tbench", "addresses": ["10.250.0.1"]}]})


CHANGES: dict[str, Callable[[dict], None]] = {
    "one rule's port changed": one_rule_port,
    "one instance's groups changed": instance_groups,
    "one instance added": instance_added,
    "nothing changed": lambda doc: None,
}


def timed(fn: Callable[[], object], runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interfaces", type=int, default=1000)
    ap.add_argument("--rules", type=int, default=50)
    ap.add_argument("--config", help="a JSON document instead of gen-config's")
    ap.add_argument("--runs", type=int, default=9)
    a = ap.parse_args()
    text = (Path(a.config).read_text() if a.config else
            subprocess.run([GEN, "--interfaces", str(a.interfaces), "--rules", str(a.rules)],
                           capture_output=True, text=True, check=True).stdout)
    previous = validate_update(json.loads(text), None, None)
    state = previous.state
    print(f"{len(text) / 1e6:.1f} MB: {len(state.groups)} groups, "
          f"{sum(len(g.rules) for g in state.groups)} rules, {len(state.instances)} instances")
    for name, edit in CHANGES.items():
        docs = []
        for _ in range(2 * a.runs):
            docs.append(json.loads(text))
            edit(docs[-1])
        full_ms, state = timed(lambda: validate_document(docs.pop(), None), a.runs)
        inc_ms, result = timed(lambda: validate_update(docs.pop(), None, previous), a.runs)
        assert result.state == state
        print(f"{name:32s} validate_document {full_ms:6.1f} ms   "
              f"validate_update {inc_ms:5.2f} ms ({result.mode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
