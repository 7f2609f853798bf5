#!/usr/bin/env python3
"""Cost of a one-rule change applied incrementally vs a full atomic replace, on the
real kernel, in a network namespace of its own.

    sudo .venv/bin/python bench/incremental.py --interfaces 100 --rules 50

Re-executes itself inside `ip netns exec` (libnftables acts on the caller's namespace).
A Keeper (the daemon's reconciler) applies the document (full replace), then the same
document with one rule's port range widened, twice: once as the daemon does it (the
elements of the changed sets over netlink, agent.kernel.elements), once forced through the
nft-script path (changed sets replaced with their chains, agent.compiler.transaction). Prints
each step's time: whole apply (validate + compile + plan + commit) and the commit alone.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sandbox.hypervisor import check_tools  # noqa: E402

GEN = str(Path(__file__).resolve().parents[1] / "scripts" / "gen-config")


def widened(doc: dict, width: int) -> dict:
    new = copy.deepcopy(doc)
    rule = next(r for g in new["security_groups"] for r in g["rules"]
                if r["protocol"] in ("tcp", "udp") and r["direction"] == "ingress")
    lo = int(rule["port_range"].split("/")[0])
    rule["port_range"] = f"{lo}/{min(65535, lo + width)}"
    return new


def timed_apply(keeper, validated, doc: dict):
    from agent.model.validate_incremental import validate_update
    t = time.monotonic()
    validated = validate_update(doc, None, validated)
    result = keeper.apply(validated.state)
    return validated, result, time.monotonic() - t


def inside(doc: dict) -> None:
    from agent.compiler.transaction import ruleset_size
    from agent.reconciler.keeper import Keeper
    from agent.reconciler.port import RealKernel
    keeper = Keeper(RealKernel())
    validated, full, full_s = timed_apply(keeper, None, doc)
    size = ruleset_size(keeper.applied)
    print(f"ruleset: {size.chains} chains, {size.rules} rules, {size.sets} sets, {size.elements} elements")
    print(f"full replace: apply {full_s:.2f} s, commit {full.nft_seconds:.2f} s")
    validated, elements, elements_s = timed_apply(keeper, validated, widened(doc, 7))
    keeper.kernel.commit_elements = _refuse           # the nft-script path, for comparison
    validated, script, script_s = timed_apply(keeper, validated, widened(doc, 15))
    for label, r, took in (("daemon's path", elements, elements_s), ("nft-script path", script, script_s)):
        print(f"one-rule change, {label} ({r.mode}, {r.script_bytes} bytes): apply {took * 1000:.1f} ms, "
              f"commit {r.nft_seconds * 1000:.1f} ms = {100 * took / full_s:.2f} % of the full apply")


def _refuse(changes):
    from agent.errors import KernelError
    raise KernelError("bench: element path off")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interfaces", type=int, default=100)
    ap.add_argument("--rules", type=int, default=50)
    ap.add_argument("--inside", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inside:
        inside(json.loads(Path(a.inside).read_text()))
        return 0
    missing = check_tools("ip")
    if missing:
        print(f"incremental benchmark: {missing}", file=sys.stderr)
        return 2
    doc = subprocess.run([GEN, "--interfaces", str(a.interfaces), "--rules", str(a.rules)],
                         capture_output=True, text=True, check=True).stdout
    ns, path = f"sgbi{os.getpid() % 10000}", Path(f"/tmp/sgbench-inc-{os.getpid()}.json")
    path.write_text(doc)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inside", str(path)]).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns])
        path.unlink()


if __name__ == "__main__":
    sys.exit(main())
