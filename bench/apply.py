#!/usr/bin/env python3
"""Apply benchmark: how long the agent takes to put a large desired state into the
kernel, compared with `nft -f` of the very script it renders, plus compile-only time,
the agent's peak memory and the kernel memory the loaded ruleset costs.

Prints figures; it is not a test. Needs root. Every load happens in a fresh network
namespace `sgbap<pid>-*`, deleted right after its measurement (the kernel frees a
namespace's ruleset with it); the root namespace is never touched.

    .venv/bin/python bench/apply.py                    # 100, 300, then 1000 interfaces
    .venv/bin/python bench/apply.py --sizes 100 --runs 1

For each size N (`scripts/gen-config --interfaces N --rules 50`: ~2 groups
of ~50 rules per interface, so ~100 rules per interface):
  (a) agent:  /usr/bin/time -v ip netns exec NS .venv/bin/python -m agent.cli.main apply \\
                  -c big.json --host hv-bench       (process start to exit, fresh NS)
  (b) nft:    /usr/bin/time -v ip netns exec NS nft -f big.nft   where big.nft is
                  `secgroup-agent render -c big.json --host hv-bench` (fresh NS)
  (c) compile-only: load (parse + validate), build_ruleset, render, in one process
  interleaved a, b, c, a, b, c, ... `--runs` times; medians and [min-max].
  (d) then one more agent apply in a fresh NS with its phases timed in the process
      (start, imports, validate, compile, render, commit, revoke, save, exit): where
      the agent's time over `nft -f` goes. "save" is the save after the commit, or the
      wait for the child that wrote it during the commit ("fork": forking it). A cold
      load of 200+ interfaces is staged (agent.reconciler.staged): its build and its
      commits overlap, so the line gives the staged load's wall time, then the build's
      and the commits' (not additive; its save is written during the last stage).
  (e) `--unstaged`: each run also times the same apply with the staged load turned off
      (one transaction after the whole build), interleaved with the others.
Kernel memory: SUnreclaim (and VmallocUsed, Percpu, MemAvailable) in /proc/meminfo just
before the load and `--settle` seconds after the loading process exited, and again
after the namespace is deleted (what the deletion gave back): two readings per load,
six loads per size, median. Other users of the machine move these numbers too.

Safety: the sizes run in order; before a size above the largest measured one, the
kernel memory is extrapolated from the two largest measured sizes (linear and power
law, the larger), and the size is skipped (and the run stops) if that exceeds
`--max-kernel-gb` (default 6).

Revocation: apply_once lists conntrack after the commit. In a fresh namespace the
table is empty; the benchmark also times the listing and the revocation plan on
`--flows` synthetic entries (tcp, from local instance addresses) in a separate step.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sandbox.hypervisor import check_tools  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")
GEN = str(Path(__file__).resolve().parents[1] / "scripts" / "gen-config")
MEMKEYS = ("SUnreclaim", "VmallocUsed", "Percpu", "MemAvailable")

BREAKDOWN = r"""
import json, sys, time
def clock():
    return time.perf_counter(), time.process_time()
c0 = clock()
from agent.compiler.compile import build_ruleset
from agent.compiler.render import render_ruleset
from agent.model.validate import load_state
c1 = clock(); state = load_state(sys.argv[1], sys.argv[2])
c2 = clock(); ruleset = build_ruleset(state)
c3 = clock(); text = render_ruleset(ruleset)
c4 = clock()
d = lambda a, b: [b[0] - a[0], b[1] - a[1]]
print(json.dumps({"imports": d(c0, c1), "load": d(c1, c2), "compile": d(c2, c3), "render": d(c3, c4),
                  "sets": sum(len(t.sets) for t in ruleset.tables),
                  "chains": sum(len(t.chains) for t in ruleset.tables),
                  "elements": sum(len(s.elements) for t in ruleset.tables for s in t.sets),
                  "bytes": len(text)}))
"""

PHASES = r"""
import json, sys, time
started = time.time()
t0 = time.perf_counter()
marks = {}
def timed(mod, name, label):
    f = getattr(mod, name, None)
    if f is None:
        return
    def g(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            marks[label] = marks.get(label, 0.0) + time.perf_counter() - t
    setattr(mod, name, g)
import agent.cli.kernel, agent.reconciler.keeper as keeper, agent.reconciler.oneshot as oneshot
import agent.reconciler.port as port
from agent.model.loader import read_document
from agent.model.validate_incremental import validate_update
t1 = time.perf_counter()
timed(keeper, "compile_changes", "compile")
timed(keeper, "render_ruleset", "render")
timed(keeper, "apply_revocations", "revoke")
timed(port.RealKernel, "commit", "commit")
timed(keeper.Keeper, "save", "save")
timed(keeper.Keeper, "saved_early", "save")          # the wait for the child that saved during the commit
timed(keeper, "stage_save", "fork")                  # forking that child
import agent.reconciler.staged as staged
timed(staged, "compile_ruleset", "staged_compile")    # a staged load's build (its commits overlap it)
timed(staged, "apply_staged", "staged")               # the staged load: build, stages, the last one
t = time.perf_counter(); validated = validate_update(read_document(sys.argv[1]), sys.argv[2], None)
marks["validate"] = time.perf_counter() - t
t = time.perf_counter(); result = oneshot.apply_once(validated.state, context=validated)
marks["apply_once"] = time.perf_counter() - t
marks["imports"] = t1 - t0
print(json.dumps({"marks": marks, "started": started, "end": time.time()}), flush=True)
"""

UNSTAGED = r"""
import sys
import agent.reconciler.staged as staged
staged.STAGE_FROM = 10 ** 9
sys.argv = ["secgroup-agent", *sys.argv[1:]]
from agent.cli.main import entry
entry()
"""

CONNTRACK = r"""
import ipaddress, json, random, sys, time
from pyroute2 import Conntrack
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple
from agent.kernel import conntrack
from agent.reconciler.port import RealKernel
from agent.policy.revocation import plan_revocations
from agent.model.validate import load_state
state = load_state(sys.argv[1], sys.argv[2])
flows_wanted = int(sys.argv[3])
out = {}
def measure(label):
    t0 = time.perf_counter(); flows = conntrack.list_flows()
    t1 = time.perf_counter(); previous = RealKernel().local_addresses()
    t2 = time.perf_counter(); plan = plan_revocations(state, flows, previous)
    t3 = time.perf_counter()
    out[label] = {"flows": len(flows), "list_s": t1 - t0, "local_addr_s": t2 - t1, "plan_s": t3 - t2,
                  "would_revoke": len(plan)}
measure("empty")
if flows_wanted:
    rnd = random.Random(7)
    local = [a for nic in state.local_interfaces.values() for a in nic.addresses if a.version == 4]
    with Conntrack() as ct:
        for i in range(flows_wanted):
            src = str(rnd.choice(local)); dst = f"198.51.{100 + i % 4}.{1 + i % 250}"
            sport, dport = 20000 + i % 40000, rnd.choice([22, 80, 443, 3389, 5432, rnd.randint(1, 65535)])
            ct.entry("add", tuple_orig=NFCTAttrTuple(saddr=src, daddr=dst, proto=6, sport=sport, dport=dport),
                     tuple_reply=NFCTAttrTuple(saddr=dst, daddr=src, proto=6, sport=dport, dport=sport),
                     timeout=600, status=0x0e)
    measure("seeded")
print(json.dumps(out))
"""


# -- helpers ------------------------------------------------------------------------------
def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, rest = line.split(":", 1)
        if key in MEMKEYS:
            out[key] = int(rest.split()[0])          # kB
    return out


def settle(timeout: float = 40.0) -> dict[str, int]:
    """Wait until SUnreclaim stops moving (a deleted namespace is freed asynchronously)."""
    prev = meminfo()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1.0)
        cur = meminfo()
        if abs(cur["SUnreclaim"] - prev["SUnreclaim"]) < 4096:
            return cur
        prev = cur
    return prev


def parse_time_v(stderr: str) -> dict:
    def grab(label: str) -> str:
        m = re.search(rf"^\s*{re.escape(label)}: (.*)$", stderr, re.M)
        return m.group(1).strip() if m else ""
    return {"max_rss_kb": int(grab("Maximum resident set size (kbytes)") or 0),
            "user_s": float(grab("User time (seconds)") or 0), "sys_s": float(grab("System time (seconds)") or 0)}


class Namespaces:
    def __init__(self, prefix: str):
        self.prefix, self.n = prefix, 0

    def new(self) -> str:
        self.n += 1
        ns = f"{self.prefix}-{self.n}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        return ns

    @staticmethod
    def delete(ns: str) -> None:
        sh(["ip", "netns", "del", ns])

    def cleanup(self) -> None:
        for ns in sh(["ip", "netns", "list"]).stdout.split():
            if ns.startswith(f"{self.prefix}-"):
                self.delete(ns)


def load_in_fresh_ns(nss: Namespaces, cmd: list[str], settle_s: float, after=None) -> dict:
    """Run `cmd` (a loader) under /usr/bin/time -v in a fresh namespace; measure wall time,
    peak RSS and the kernel memory the loaded ruleset holds; delete the namespace."""
    ns = nss.new()
    try:
        before = settle()
        start = time.monotonic()
        p = sh(["/usr/bin/time", "-v", "ip", "netns", "exec", ns, *cmd], cwd=ROOT, timeout=3600)
        wall = time.monotonic() - start
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:4])}... failed ({p.returncode}): {p.stderr[-2000:]}{p.stdout[-500:]}")
        time.sleep(settle_s)
        after_mem = meminfo()
        extra = after(ns) if after else None
    finally:
        nss.delete(ns)
    released = settle()
    out = {"wall_s": wall, **parse_time_v(p.stderr), "stdout": p.stdout.strip(), "extra": extra}
    # two readings of the same cost: what loading added, and what deleting the
    # namespace gave back (other users of the machine disturb one or the other)
    out["kmem_kb"] = {k: after_mem[k] - before[k] for k in MEMKEYS}
    out["kmem_kb"]["MemAvailable"] = -out["kmem_kb"]["MemAvailable"]     # as "used"
    out["kmem_freed_kb"] = {k: after_mem[k] - released[k] for k in MEMKEYS}
    out["kmem_freed_kb"]["MemAvailable"] = -out["kmem_freed_kb"]["MemAvailable"]
    return out


def apply_phases(nss: Namespaces, config: Path, host: str) -> dict:
    """One more agent apply in a fresh namespace, its phases timed in the process (PHASES:
    the same calls as `secgroup-agent apply`, each wrapped with a clock): interpreter
    start, imports, validate, compile, render, commit (libnftables), revoke, save, exit."""
    ns = nss.new()
    try:
        t0 = time.time()
        p = sh(["ip", "netns", "exec", ns, PY, "-c", PHASES, str(config), host], cwd=ROOT, timeout=3600)
        t1 = time.time()
    finally:
        nss.delete(ns)
    if p.returncode != 0:
        return {"error": p.stderr.strip()[-500:]}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    marks = out["marks"]
    marks["start"] = out["started"] - t0            # ip netns exec + interpreter start
    marks["exit"] = t1 - out["end"]                  # interpreter finalization + process exit
    marks["wall"] = t1 - t0
    return marks


def phases_line(m: dict) -> str:
    if "error" in m:
        return f"  apply phases: {m['error']}"
    fork = f" + fork {m['fork']:.2f}" if "fork" in m else ""
    if "staged" in m:       # build and commits overlap: the load's wall time, then its parts
        rest = m["apply_once"] - sum(m.get(k, 0.0) for k in ("staged", "revoke", "save"))
        middle = (f" + staged load {m['staged']:.2f} (build {m.get('staged_compile', 0):.2f} while the stages commit;"
                  f" commits {m.get('commit', 0):.2f} in all)")
    else:
        rest = m["apply_once"] - sum(m.get(k, 0.0) for k in ("compile", "render", "fork", "commit", "revoke", "save"))
        middle = (f" + compile {m.get('compile', 0):.2f} + render {m.get('render', 0):.2f}{fork}"
                  f" + commit {m.get('commit', 0):.2f}")
    return (f"  apply phases (one more apply, in-process clocks): wall {m['wall']:.2f} s = start {m['start']:.2f}"
            f" + imports {m['imports']:.2f} + validate {m['validate']:.2f}{middle} + revoke {m.get('revoke', 0):.2f}"
            f" + save {m.get('save', 0):.2f} + other {rest:.2f} + exit {m['exit']:.2f}")


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(med(xs))} [{fmt.format(min(xs))}-{fmt.format(max(xs))}]"


def mb(kb: float) -> float:
    return kb / 1024


# -- one size -------------------------------------------------------------------------------
def bench_size(n: int, args, tmp: Path, nss: Namespaces, remote: int = 0) -> dict:
    config = tmp / f"big-{n}-{remote}.json"
    extra = (["--groups", str(args.groups)] if args.groups else []) + (["--remote", str(remote)] if remote else [])
    config.write_text(sh([GEN, "--interfaces", str(n), "--rules", str(args.rules), *extra], check=True).stdout)
    host = json.loads(config.read_text())["host"]
    start = time.monotonic()
    r = sh([PY, "-m", "agent.cli.main", "render", "-c", str(config), "--host", host], cwd=ROOT, check=True)
    render_wall = time.monotonic() - start
    script = tmp / f"big-{n}-{remote}.nft"
    script.write_text(r.stdout)
    print(f"  gen-config --interfaces {n} --rules {args.rules} {' '.join(extra)}: {config.stat().st_size / 1e6:.1f} MB "
          f"JSON; render -> {script.stat().st_size / 1e6:.1f} MB nft script, {r.stdout.count(chr(10))} lines "
          f"({render_wall:.1f} s)", flush=True)

    def conntrack_step(ns: str) -> dict:
        p = sh(["ip", "netns", "exec", ns, PY, "-c", CONNTRACK, str(config), host, str(args.flows)],
               cwd=ROOT, timeout=1800)
        if p.returncode != 0:
            return {"error": p.stderr.strip()[-500:]}
        return json.loads(p.stdout)

    agent, nft, comp, unstaged = [], [], [], []
    ct = None
    for run in range(1, args.runs + 1):
        a = load_in_fresh_ns(nss, [PY, "-m", "agent.cli.main", "apply", "-c", str(config), "--host", host],
                             args.settle, after=conntrack_step if run == 1 else None)
        if run == 1:
            ct = a["extra"]
        m = re.search(r"in (\d+) ms \(kernel (\d+) ms", a["stdout"])
        a["apply_once_s"], a["kernel_s"] = (int(m.group(1)) / 1000, int(m.group(2)) / 1000) if m else (0, 0)
        agent.append(a)
        b = load_in_fresh_ns(nss, ["nft", "-f", str(script)], args.settle)
        nft.append(b)
        if args.unstaged:       # the same apply with the staged load turned off (one transaction)
            u = load_in_fresh_ns(nss, [PY, "-c", UNSTAGED, "apply", "-c", str(config), "--host", host], args.settle)
            unstaged.append(u["wall_s"])
        p = sh(["/usr/bin/time", "-v", PY, "-c", BREAKDOWN, str(config), host], cwd=ROOT, check=True,
               timeout=3600)
        c = json.loads(p.stdout)
        c["max_rss_kb"] = parse_time_v(p.stderr)["max_rss_kb"]
        comp.append(c)
        print(f"  run {run}: agent apply {a['wall_s']:.1f} s (apply_once {a['apply_once_s']:.1f} s, "
              f"nft commit {a['kernel_s']:.1f} s; user {a['user_s']:.1f} s, sys {a['sys_s']:.1f} s; "
              f"peak RSS {mb(a['max_rss_kb']):.0f} MB; SUnreclaim +{mb(a['kmem_kb']['SUnreclaim']):.0f}"
              f"/-{mb(a['kmem_freed_kb']['SUnreclaim']):.0f} MB)"
              f" | nft -f {b['wall_s']:.1f} s (user {b['user_s']:.1f} s, sys {b['sys_s']:.1f} s; "
              f"peak RSS {mb(b['max_rss_kb']):.0f} MB; SUnreclaim +{mb(b['kmem_kb']['SUnreclaim']):.0f}"
              f"/-{mb(b['kmem_freed_kb']['SUnreclaim']):.0f} MB)"
              f" | compile-only: load {c['load'][0]:.1f} s, compile {c['compile'][0]:.1f} s "
              f"(cpu {c['compile'][1]:.1f} s), render {c['render'][0]:.1f} s, peak RSS "
              f"{mb(c['max_rss_kb']):.0f} MB", flush=True)
        if args.unstaged:
            print(f"  run {run}: agent apply without stages {unstaged[-1]:.1f} s (ratio to this run's nft -f "
                  f"{unstaged[-1] / b['wall_s']:.2f}, with stages {a['wall_s'] / b['wall_s']:.2f})", flush=True)
    phases = apply_phases(nss, config, host)
    print(phases_line(phases), flush=True)
    if unstaged:
        print(f"  agent apply without stages: {spread(unstaged)} s, with stages {spread([x['wall_s'] for x in agent])} s, "
              f"nft -f {spread([x['wall_s'] for x in nft])} s", flush=True)
    return {"n": n, "remote": remote, "render_s": render_wall, "agent": agent, "nft": nft, "compile": comp,
            "conntrack": ct, "phases": phases,
            "objects": {k: comp[0][k] for k in ("sets", "chains", "elements", "bytes")}}


def kmem_readings(res: dict, key: str = "SUnreclaim") -> list[float]:
    """Every reading (kB) of the kernel memory of this size's ruleset: each load (agent
    and nft load the same script) added it, and deleting its namespace gave it back."""
    return [x[which][key] for x in res["agent"] + res["nft"] for which in ("kmem_kb", "kmem_freed_kb")]


def kmem_estimate(res: dict, key: str = "SUnreclaim") -> float:
    return med(kmem_readings(res, key))


def extrapolate(points: list[tuple[int, float]], n: int) -> tuple[float, float]:
    (n1, m1), (n2, m2) = points[-2], points[-1]
    linear = m2 + (m2 - m1) * (n - n2) / (n2 - n1)
    power = m2 * (n / n2) ** (math.log(m2 / m1) / math.log(n2 / n1)) if m1 > 0 and m2 > m1 else linear
    return linear, power


def report(results: list[dict]) -> None:
    print()
    print("| interfaces (remote members) | sets / chains / elements | agent apply s | nft -f s | ratio (medians) | paired ratios "
          "| compile-only s (load / compile / render) | agent peak RSS MB (compile-only) | nft peak RSS MB "
          "| kernel SUnreclaim MB | MemAvailable drop MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        a = [x["wall_s"] for x in r["agent"]]
        b = [x["wall_s"] for x in r["nft"]]
        ratios = [x / y for x, y in zip(a, b)]
        c = r["compile"]
        o = r["objects"]
        kmem = [mb(x) for x in kmem_readings(r)]
        avail = [mb(x) for x in kmem_readings(r, "MemAvailable")]
        print(f"| {r['n']} ({r['remote']}) | {o['sets']} / {o['chains']} / {o['elements']} | {spread(a)} | {spread(b)} "
              f"| {med(a) / med(b):.2f} | {spread(ratios, '{:.2f}')} "
              f"| {med([x['load'][0] for x in c]):.1f} / {med([x['compile'][0] for x in c]):.1f} "
              f"(cpu {med([x['compile'][1] for x in c]):.1f}) / {med([x['render'][0] for x in c]):.1f} "
              f"| {spread([mb(x['max_rss_kb']) for x in r['agent']], '{:.0f}')} "
              f"({med([mb(x['max_rss_kb']) for x in c]):.0f}) "
              f"| {spread([mb(x['max_rss_kb']) for x in r['nft']], '{:.0f}')} "
              f"| {spread(kmem, '{:.0f}')} | {spread(avail, '{:.0f}')} |")
    print()
    for r in results:
        a = r["agent"]
        print(f"{r['n']} interfaces, agent apply breakdown (medians): wall {med([x['wall_s'] for x in a]):.1f} s = "
              f"apply_once {med([x['apply_once_s'] for x in a]):.1f} s (of which nft commit "
              f"{med([x['kernel_s'] for x in a]):.1f} s) + start/load/exit; user "
              f"{med([x['user_s'] for x in a]):.1f} s, sys {med([x['sys_s'] for x in a]):.1f} s; nft -f: user "
              f"{med([x['user_s'] for x in r['nft']]):.1f} s, sys {med([x['sys_s'] for x in r['nft']]):.1f} s")
        print(phases_line(r["phases"]))
        ct = r["conntrack"] or {}
        for label, v in ct.items():
            if isinstance(v, dict):
                print(f"  conntrack ({label}): {v['flows']} flows listed in {v['list_s'] * 1000:.0f} ms, "
                      f"local addresses read in {v['local_addr_s'] * 1000:.0f} ms, revocation plan "
                      f"{v['plan_s'] * 1000:.0f} ms ({v['would_revoke']} would be revoked)")
            else:
                print(f"  conntrack: {v}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--rules", type=int, default=50, help="gen-config --rules (per group)")
    ap.add_argument("--groups", type=int, default=0, help="gen-config --groups (0: its default)")
    ap.add_argument("--remote", type=int, nargs="+", default=[0],
                    help="gen-config --remote: members on other hosts (the fleet benchmark: 0 10000 100000)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settle", type=float, default=4.0, help="seconds to wait before reading kernel memory")
    ap.add_argument("--flows", type=int, default=10000, help="synthetic conntrack entries for the revocation step")
    ap.add_argument("--max-kernel-gb", type=float, default=6.0)
    ap.add_argument("--json", action="store_true", help="also print all results as one JSON line")
    ap.add_argument("--unstaged", action="store_true",
                    help="also time each run's apply with the staged load turned off (agent.reconciler.staged)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    missing = check_tools("ip", "nft", "/usr/bin/time")
    if missing:
        print(f"apply benchmark: {missing}", file=sys.stderr)
        return 2
    load0 = os.getloadavg()
    print(f"# apply benchmark: kernel {platform.release()}, {os.cpu_count()} CPUs, "
          f"{meminfo()['MemAvailable'] / 1024 / 1024:.1f} GB available, load average "
          f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; {sh(['nft', '--version']).stdout.strip()}")
    nss = Namespaces(f"sgbap{os.getpid()}")
    results: list[dict] = []
    try:
        with tempfile.TemporaryDirectory(prefix="sgbap") as d:
            tmp = Path(d)
            os.environ.setdefault("SECGROUP_AGENT_STATE_DIR", str(tmp / "state"))   # not /var/lib
            for n in sorted(args.sizes):
                measured = [(r["n"], kmem_estimate(r)) for r in results]
                if len(measured) >= 2 and n > measured[-1][0]:
                    linear, power = extrapolate(measured, n)
                    est_gb = max(linear, power) / 1024 / 1024
                    print(f"kernel memory at {n} interfaces, extrapolated from {measured[-2][0]} and "
                          f"{measured[-1][0]}: linear {linear / 1024:.0f} MB, power law {power / 1024:.0f} MB",
                          flush=True)
                    if est_gb > args.max_kernel_gb:
                        print(f"STOP: {est_gb:.1f} GB > {args.max_kernel_gb} GB; {n} interfaces not run")
                        break
                for remote in args.remote:
                    print(f"{n} interfaces, {remote} remote members", flush=True)
                    results.append(bench_size(n, args, tmp, nss, remote))
    finally:
        nss.cleanup()
    report(results)
    load1 = os.getloadavg()
    print(f"# load average at the end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if args.json:
        for r in results:
            for x in r["agent"] + r["nft"]:
                x.pop("stdout", None)
        print(json.dumps({"apply": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
