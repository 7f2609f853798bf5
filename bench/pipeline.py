#!/usr/bin/env python3
"""The daemon's per-revision work without a kernel (no root): parse the document,
re-validate it (agent.model.validate_incremental), compile it patching the previous
build (agent.compiler.patch) and plan the transaction (agent.compiler.transaction), for
the two changes of bench/latency.py. Prints each step's median and [min-max] in ms, so
the part of the end-to-end latency that is Python can be followed without namespaces.

    .venv/bin/python bench/pipeline.py --interfaces 100 --rules 50 --remote 10000 --change member
    .venv/bin/python bench/pipeline.py --interfaces 1000 --rules 50 --change rule
    .venv/bin/python bench/pipeline.py ... --profile 15      # cProfile of the changes, top 15

Each revision is the JSON text read as the file source reads it (`file_cache.TextCache`:
parsed where it changed, the other items shared with the revision before); `--source
whole` parses every revision whole instead (as the file source did before). After each
one the garbage collector is settled as the daemon does (collect, then freeze).
`--source etcd`: each revision is instead the etcd source's document (etcd_layout:
the document's keys, one value changed per revision, built by the source's
DocumentCache) validated with shared=True, as the daemon does for etcd (no etcd needed).

    .venv/bin/python bench/pipeline.py --interfaces 100 --rules 50 --remote 10000 --change member --source etcd
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.compiler.patch import compile_changes  # noqa: E402
from agent.compiler.transaction import plan_netlink_changes, plan_update  # noqa: E402
from agent.model.loader import parse_document  # noqa: E402
from agent.model.validate_incremental import validate_update  # noqa: E402
from agent.sources.etcd_layout import DocumentCache, document_keys  # noqa: E402
from agent.sources.file_cache import TextCache  # noqa: E402
from agent.reconciler.keeper import REPLACE_SETS_FROM  # noqa: E402
from bench.latency import with_member, with_port, pick_interface  # noqa: E402

GEN = ROOT / "scripts" / "gen-config"
STEPS = ("parse", "validate", "compile", "plan")


def revisions(doc: dict, change: str, count: int) -> list[str]:
    """JSON texts: the starting document, then `count` changes (alternating)."""
    if change == "member":
        return [json.dumps(with_member(doc, i % 2 == 1)) for i in range(count + 1)]
    gid = pick_interface(doc)[0]
    return [json.dumps(with_port(doc, gid, 61000 + i)) for i in range(count + 1)]


def etcd_keys(texts: list[str]) -> list[dict[str, bytes]]:
    """The etcd keys of each revision as the source's watch leaves them: a value that
    did not change is the same bytes object as in the revision before."""
    out: list[dict[str, bytes]] = []
    for text in texts:
        before = out[-1] if out else {}
        keys = document_keys(json.loads(text), "/bench")
        out.append({k: before[k] if before.get(k) == v else v for k, v in keys.items()})
    return out


def step(texts: list[str], times: dict[str, list[float]], profile: cProfile.Profile | None,
         source: str = "file") -> str:
    """Run every revision through the pipeline; the mode of the last plan."""
    validated, memo, applied, how = None, None, None, ""
    kvs, cache = (etcd_keys(texts), DocumentCache()) if source == "etcd" else (None, None)
    raws, spliced = [t.encode() for t in texts], TextCache()
    for n, _text in enumerate(texts):
        on = profile is not None and n > 0
        if on:
            profile.enable()
        t0 = time.perf_counter()
        if cache is not None:
            data = cache.document(kvs[n], "/bench", "bench")
        else:
            data = spliced.document(raws[n], "bench") if source == "file" else parse_document(raws[n], "bench")
        t1 = time.perf_counter()
        shared = cache is not None or (source == "file" and spliced.indexed)
        validated = validate_update(data, None, validated, shared=shared)
        t2 = time.perf_counter()
        ruleset, memo = compile_changes(validated.state, memo)
        t3 = time.perf_counter()
        if applied is not None:
            changes = plan_netlink_changes(applied, ruleset)     # as the keeper plans
            many = sum(len(t.sets) for t in applied.tables) >= REPLACE_SETS_FROM
            how = f"netlink: {len(changes.refills)} chain(s) refilled, {len(changes.elements)} set(s) changed" \
                if changes is not None else \
                f"script of {len(plan_update(applied, ruleset, replace_sets=many))} bytes"
        t4 = time.perf_counter()
        if on:
            profile.disable()
        applied = ruleset
        gc.collect()                        # as the daemon does after an apply (settle_garbage_collector)
        gc.freeze()
        if n > 0:
            for name, a, b in zip(STEPS, (t0, t1, t2, t3), (t1, t2, t3, t4)):
                times[name].append((b - a) * 1000)
    return how


def save_costs(text: str) -> None:
    """What the daemon's save pickles (agent.reconciler.store.Saved), part by part."""
    import pickle
    validated = validate_update(parse_document(text, "bench"), None, None)
    ruleset, memo = compile_changes(validated.state, None)
    for name, obj in (("ruleset", ruleset), ("memo", memo), ("validated document", validated),
                      ("  its state", validated.state), ("  its raw document", validated.data)):
        t0 = time.perf_counter()
        size = len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        print(f"  pickle {name:20s} {size / 1e6:6.2f} MB {(time.perf_counter() - t0) * 1000:7.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interfaces", type=int, default=100)
    ap.add_argument("--rules", type=int, default=50)
    ap.add_argument("--remote", type=int, default=0)
    ap.add_argument("--change", choices=["rule", "member"], default="member")
    ap.add_argument("--changes", type=int, default=10)
    ap.add_argument("--profile", type=int, default=0, help="print the top N functions by cumulative time")
    ap.add_argument("--pickle", action="store_true",
                    help="also time pickling what the daemon saves (ruleset, memo, validated document)")
    ap.add_argument("--source", choices=["file", "whole", "etcd"], default="file",
                    help="file: the file source's TextCache; whole: each revision parsed whole; "
                         "etcd: the etcd source's DocumentCache")
    a = ap.parse_args()
    doc = json.loads(subprocess.run([str(GEN), "--interfaces", str(a.interfaces), "--rules", str(a.rules),
                                     "--remote", str(a.remote)], capture_output=True, text=True,
                                    check=True).stdout)
    texts = revisions(doc, a.change, a.changes)
    times: dict[str, list[float]] = {name: [] for name in STEPS}
    profile = cProfile.Profile() if a.profile else None
    how = step(texts, times, profile, a.source)
    if a.pickle:
        save_costs(texts[-1])
    total = [sum(parts) for parts in zip(*times.values())]
    print(f"{a.change} change through {a.source}, {a.interfaces} interfaces x {a.rules} rules, {a.remote} remote; "
          f"{a.changes} changes; last plan: {how}")
    for name, values in list(times.items()) + [("total", total)]:
        print(f"  {name:9s} {statistics.median(values):8.1f} ms  [{min(values):.1f}-{max(values):.1f}]")
    if profile is not None:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(a.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
