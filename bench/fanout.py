"""Fan-out of one membership change to N agents watching one etcd (not a test; prints figures).

    .venv/bin/python bench/fanout.py [--watchers 10,100,200] [--procs 4] [--rounds 5]
                                     [--instances 60] [--groups 12]

What is measured, per round: the coordinator takes t0 = CLOCK_MONOTONIC (system-wide on
Linux, so comparable across processes), then runs `publish` (agent.distribution.publish: read the
prefix, plan, one etcd transaction) of a document in which one instance has joined one
more group. Each of the N watchers is an EtcdSource (etcd://.../bench) with its own watch
stream, spread over --procs worker processes (N/procs watcher threads each). Its
on_change() callback does what the daemon does with news: fetch() (from the copy the
watch keeps) and validate_document() of the whole fleet document; the watcher's time is
the first moment its *validated* state shows the instance in the group. Latency = that
time - t0. So each figure includes publish's own validation and two etcd round trips, the
etcd watch fan-out, JSON/base64 decoding, and a full validation per watcher, on however
few cores the machine has (all N watchers, etcd and the coordinator share them). It
excludes compiling and applying nftables.

etcd is Debian's etcd-server, started on free loopback ports in a temporary directory and
stopped at the end (also on failure).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from agent.distribution.publish import publish  # noqa: E402
from sandbox.hypervisor import check_tools  # noqa: E402
from agent.sources.etcd_layout import parse_etcd_spec  # noqa: E402


def fleet(instances: int, groups: int, joined: int = 0) -> dict:
    """A fleet document; instances i-0 .. i-<joined-1> have also joined sg-0."""
    sgs = [{"id": f"sg-{g}", "rules": [
        {"id": f"r{g}", "direction": "ingress", "protocol": "tcp", "port_range": f"{1000 + g}/{1000 + g}",
         "source_group": f"sg-{(g + 1) % groups}"}]} for g in range(groups)]
    insts = []
    for i in range(instances):
        member = [f"sg-{1 + i % (groups - 1)}"] + (["sg-0"] if i < joined else [])
        insts.append({"id": f"i-{i}", "host": f"hv-{i % 20}", "security_groups": member,
                      "interfaces": [{"name": f"tap-{i}", "addresses": [f"10.{i // 250}.{i % 250}.5"]}]})
    return {"security_groups": sgs, "instances": insts}


# -- worker processes ------------------------------------------------------------------
def worker(spec: str, count: int, orders: mp.Queue, results: mp.Queue) -> None:
    from agent.sources import open_source
    from agent.model.validate import validate_document
    target = {"want": None}
    done: dict[int, tuple[float, float]] = {}       # watcher -> (notified, validated)
    lock = threading.Lock()

    def watcher(n: int, src) -> None:
        def on_change() -> None:
            notified, want = time.monotonic(), target["want"]
            try:
                state = validate_document(src.fetch()[0], "hv-0")
            except Exception:        # noqa: BLE001 (a bench: a failure just is not a hit)
                return
            inst = next(i for i in state.instances if i.id == want[0]) if want else None
            if inst is not None and want[1] in inst.groups:
                with lock:
                    done.setdefault(n, (notified, time.monotonic()))
        src.fetch()
        src.start(on_change)

    sources = [open_source(spec) for _ in range(count)]
    for n, src in enumerate(sources):
        watcher(n, src)
    for src in sources:
        src.watching.wait(30)
    results.put(("ready", count))
    while (order := orders.get()) is not None:
        with lock:
            done.clear()
        target["want"] = order
        deadline = time.monotonic() + 10
        while len(done) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        with lock:
            missed = [(float("inf"), float("inf"))] * (count - len(done))
            results.put(("times", list(done.values()) + missed))
    for src in sources:
        src.close()


# -- the coordinator -----------------------------------------------------------------------
def run_level(spec: str, n: int, procs: int, rounds: int, args, workdir: Path) -> list[float]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    shares = [n // procs + (1 if p < n % procs else 0) for p in range(procs)]
    shares = [s for s in shares if s]
    queues = [ctx.Queue() for _ in shares]
    workers = [ctx.Process(target=worker, args=(spec, s, q, results), daemon=True)
               for s, q in zip(shares, queues)]
    for w in workers:
        w.start()
    try:
        for _ in workers:
            results.get(timeout=120)
        return list(_rounds(spec, rounds, queues, results, args, workdir))
    finally:
        for q in queues:
            q.put(None)
        for w in workers:
            w.join(timeout=20)
            if w.is_alive():
                w.terminate()


def _rounds(spec, rounds, queues, results, args, workdir):
    for r in range(rounds):
        _publish(spec, fleet(args.instances, args.groups, 0), workdir)   # back to the base
        time.sleep(0.5)
        for q in queues:
            q.put((f"i-{r + 1}", "sg-0"))
        time.sleep(0.2)                                                  # orders delivered
        doc = fleet(args.instances, args.groups, 0)
        doc["instances"][r + 1]["security_groups"].append("sg-0")
        t0 = time.monotonic()
        _publish(spec, doc, workdir)
        PUBLISH_TIMES.append(time.monotonic() - t0)
        for _ in queues:
            _, times = results.get(timeout=60)
            yield from ((a - t0, b - t0) for a, b in times)


PUBLISH_TIMES: list[float] = []     # how long publish itself took (its return - t0)


def _publish(spec: str, doc: dict, workdir: Path) -> None:
    path = workdir / "fleet.json"
    path.write_text(json.dumps(doc))
    publish(path, spec, parse_etcd_spec(spec))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _row(n: int, pairs: list[tuple[float, float]]) -> str:
    ok = [p for p in pairs if p[1] != float("inf")]
    notified, validated = [p[0] for p in ok], [p[1] for p in ok]
    return (f"{n:>5} {len(pairs):>8} {pct(notified, .5) * 1e3:>9.1f} / {pct(notified, .99) * 1e3:>6.1f}"
            f"  {pct(validated, .5) * 1e3:>9.1f} / {pct(validated, .99) * 1e3:>6.1f}"
            f"  {max(validated) * 1e3:>7.1f} {len(pairs) - len(ok):>7} "
            f"{statistics.median(PUBLISH_TIMES) * 1e3:>15.1f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--watchers", default="10,100,200")
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--instances", type=int, default=60)
    p.add_argument("--groups", type=int, default=12)
    args = p.parse_args()
    from source_helpers import Etcd
    missing = check_tools("etcd")
    if missing:
        print(f"fanout benchmark: {missing}", file=sys.stderr)
        return 2
    etcd = Etcd().start()
    try:
        spec = f"etcd://{etcd.endpoint}/bench"
        with tempfile.TemporaryDirectory(prefix="sga-fanout-") as tmp:
            _publish(spec, fleet(args.instances, args.groups), Path(tmp))
            print(f"document: {args.instances} instances, {args.groups} groups; "
                  f"{args.procs} worker processes; {args.rounds} rounds per level")
            print(f"{'N':>5} {'samples':>8} {'notified p50/p99 ms':>20} {'validated p50/p99 ms':>21} "
                  f"{'max ms':>7} {'missed':>7} {'publish p50 ms':>15}")
            for n in (int(x) for x in args.watchers.split(",")):
                PUBLISH_TIMES.clear()
                pairs = run_level(spec, n, min(args.procs, n), args.rounds, args, Path(tmp))
                print(_row(n, pairs), flush=True)
    finally:
        etcd.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
