#!/usr/bin/env python3
"""Cost of a one-rule change applied incrementally vs a full atomic replace, on the
real kernel, in a network namespace of its own.

    sudo .venv/bin/python bench/incremental.py --interfaces 100 --rules 50

Re-executes itself inside `ip netns exec` (libnftables acts on the caller's namespace).
Prints compile time, the full replace's commit, and the incremental plan + commit of one
changed rule (its port range widened), plus the ratio of the two commits.
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
GEN = "/work/shared/tools/gen-config"


def inside(doc: dict) -> None:
    from agent import nft
    from agent.compile import build_ruleset
    from agent.incremental import plan_update, ruleset_size
    from agent.render import render_ruleset
    from agent.validate import validate_document
    t = time.monotonic()
    old = build_ruleset(validate_document(doc))
    compile_s = time.monotonic() - t
    new_doc = copy.deepcopy(doc)
    rule = next(r for g in new_doc["security_groups"] for r in g["rules"]
                if r["protocol"] in ("tcp", "udp") and r["direction"] == "ingress")
    lo = int(rule["port_range"].split("/")[0])
    rule["port_range"] = f"{lo}/{min(65535, lo + 7)}"
    new = build_ruleset(validate_document(new_doc))
    full_s = nft.apply_script(render_ruleset(old))
    nft.apply_script("", "release")                  # libnftables frees its cache here
    t = time.monotonic()
    from agent.keeper import REPLACE_SETS_FROM
    script = plan_update(old, new, replace_sets=ruleset_size(old).sets >= REPLACE_SETS_FROM)
    plan_s = time.monotonic() - t
    inc_s = nft.apply_script(script)
    size = ruleset_size(old)
    print(f"ruleset: {size.chains} chains, {size.rules} rules, {size.sets} sets, {size.elements} elements")
    print(f"validate+compile: {compile_s:.2f} s")
    print(f"full replace commit: {full_s * 1000:.0f} ms")
    print(f"one-rule change ({rule['id']}): plan {plan_s * 1000:.1f} ms, script {len(script)} bytes "
          f"({script.count(chr(10))} commands), commit {inc_s * 1000:.1f} ms "
          f"= {100 * (plan_s + inc_s) / full_s:.2f} % of the full replace")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interfaces", type=int, default=100)
    ap.add_argument("--rules", type=int, default=50)
    ap.add_argument("--inside", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inside:
        inside(json.loads(Path(a.inside).read_text()))
        return 0
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
