#!/usr/bin/env python3
"""What a one-rule change costs the kernel at a size (not a test; prints figures; root).

    sudo .venv/bin/python bench/rule_commit.py --interfaces 1000 --rules 50

In a fresh network namespace `sgbrc<pid>` (deleted at the end, also on failure) the
agent's ruleset of `gen-config --interfaces N --rules R` is loaded with `nft -f`; then,
`--repeat` times each, timed through libnftables (the agent's commit path,
agent.kernel.nft) and with the kernel's share (the `sendmsg` of the batch) read by
`strace -T` of `nft -f` of the same text:

  counter     `add rule ... zz counter`              a rule without `meta`
  meta rule   `add rule ... zz tcp dport P counter`  `meta l4proto` + payload: the kernel
                                                     validates the whole table at commit
  plan        the daemon's transaction for the bench rule of bench/latency.py moving to
              a new port (agent.compiler.transaction.plan_update, sets replaced as the
              keeper does at >= REPLACE_SETS_FROM sets)

`zz` is an empty chain no base chain reaches, added for the measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.compiler.patch import compile_changes  # noqa: E402
from agent.compiler.render import render_ruleset  # noqa: E402
from agent.compiler.ruleset import TABLE  # noqa: E402
from agent.compiler.transaction import plan_update  # noqa: E402
from agent.model.validate_incremental import validate_update  # noqa: E402
from agent.reconciler.keeper import REPLACE_SETS_FROM  # noqa: E402
from bench.latency import pick_interface, with_port  # noqa: E402

GEN = ROOT / "scripts" / "gen-config"
CHILD = """
import sys, time, json
sys.path.insert(0, sys.argv[1])
from agent.kernel.nft import _nft
ctx = _nft()
for line in sys.stdin:
    path = line.strip()
    text = open(path).read()
    t = time.monotonic(); rc, _, err = ctx.cmd(text); took = time.monotonic() - t
    print(json.dumps([rc, took, err[:300]]), flush=True)
"""


def kernel_share(ns: str, path: str) -> float:
    """Seconds in the `sendmsg` calls of `nft -f path` (the commit of its batch)."""
    out = subprocess.run(["ip", "netns", "exec", ns, "strace", "-T", "-e", "trace=sendmsg", "nft", "-f", path],
                         capture_output=True, text=True)
    return sum(float(x) for x in re.findall(r"<([0-9.]+)>", out.stderr))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interfaces", type=int, default=1000)
    ap.add_argument("--rules", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespaces)")
    doc = json.loads(subprocess.run([str(GEN), "--interfaces", str(a.interfaces), "--rules", str(a.rules)],
                                    capture_output=True, text=True, check=True).stdout)
    gid = pick_interface(doc)[0]
    states = [validate_update(with_port(doc, gid, 61000), None, None)]
    rulesets = [compile_changes(states[0].state, None)]
    for i in range(1, 2 * a.repeat + 1):
        states.append(validate_update(with_port(doc, gid, 61000 + i), None, states[-1]))
        rulesets.append(compile_changes(states[-1].state, rulesets[-1][1]))
    many = sum(len(t.sets) for t in rulesets[0][0].tables) >= REPLACE_SETS_FROM
    ns = f"sgbrc{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        with tempfile.TemporaryDirectory(prefix="sgbrc") as tmp:
            return measure(ns, Path(tmp), rulesets, many, a)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def measure(ns: str, tmp: Path, rulesets: list, many: bool, a: argparse.Namespace) -> int:
    full = tmp / "full.nft"
    full.write_text(render_ruleset(rulesets[0][0]) + f"add chain inet {TABLE} zz\n")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", str(full)], check=True)
    child = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", CHILD, str(ROOT)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    results: dict[str, list[tuple[float, float]]] = {"counter": [], "meta rule": [], "plan": []}
    try:
        for i in range(a.repeat):
            scripts = {"counter": f"add rule inet {TABLE} zz counter\n",
                       "meta rule": f"add rule inet {TABLE} zz tcp dport {1000 + i} counter\n"}
            for name, text in scripts.items():
                results[name].append(timed(ns, tmp, child, text, with_strace=False))
                results[name].append(timed(ns, tmp, child, text.replace("dport 1", "dport 2"), with_strace=True))
            for step in (2 * i, 2 * i + 1):     # the plan: via libnftables, then via nft -f under strace
                text = plan_update(rulesets[step][0], rulesets[step + 1][0], replace_sets=many)
                results["plan"].append(timed(ns, tmp, child, text, with_strace=step % 2 == 1))
    finally:
        child.kill()
        child.wait()
    print(f"{a.interfaces} interfaces x {a.rules} rules; load average {os.getloadavg()[0]:.2f}")
    for name, values in results.items():
        total = [t for t, _ in values if t >= 0]
        kern = [k for _, k in values if k >= 0]
        print(f"  {name:10s} libnftables {statistics.median(total) * 1000:6.1f} ms "
              f"[{min(total) * 1000:.1f}-{max(total) * 1000:.1f}]   kernel (sendmsg) "
              f"{statistics.median(kern) * 1000:6.1f} ms [{min(kern) * 1000:.1f}-{max(kern) * 1000:.1f}]")
    return 0


def timed(ns: str, tmp: Path, child: subprocess.Popen, text: str, with_strace: bool) -> tuple[float, float]:
    """(seconds through libnftables, seconds in sendmsg): one of them measured, -1 for
    the other (the text is committed once)."""
    path = tmp / f"s{time.monotonic_ns()}.nft"
    path.write_text(text)
    if with_strace:
        return -1.0, kernel_share(ns, str(path))
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(f"{path}\n")
    child.stdin.flush()
    rc, took, err = json.loads(child.stdout.readline())
    if rc != 0:
        raise SystemExit(f"nft refused: {err}")
    return took, -1.0


if __name__ == "__main__":
    sys.exit(main())
