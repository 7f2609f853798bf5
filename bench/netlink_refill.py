#!/usr/bin/env python3
"""A one-rule edit that refills chains and changes set elements, committed as ONE netlink
batch (agent.kernel.batch) vs the same change as an nft script through libnftables
(agent.compiler.transaction.plan_update), on the real kernel, in a network namespace of
its own.

    sudo .venv/bin/python bench/netlink_refill.py --interfaces 1000 --rules 50 --rounds 10

Re-executes itself inside `ip netns exec`. Compiles the generated document, loads it with
`nft -f`, finds a rule whose port shift refills chains and changes elements (the compiler
reusing the first build, as the daemon does), then alternates: the edit and its way back
over netlink, the edit and its way back as a script. Prints the medians (min-max) of the
wall time of each commit (encoding included) and, for the batch, the kernel's part.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GEN = str(ROOT / "scripts" / "gen-config")


def find_edit(doc: dict, old, memo, tries: int):  # type: ignore[no-untyped-def]
    """The first rule (in document order) whose port shift refills chains and changes elements."""
    from agent.compiler.compile import compile_ruleset
    from agent.compiler.transaction import plan_netlink_changes
    from agent.model.validate import validate_document
    rules = [(gi, ri) for gi, g in enumerate(doc["security_groups"]) for ri, r in enumerate(g["rules"])
             if r.get("protocol") in ("tcp", "udp") and r.get("port_range", "").split("/")[0] ==
             r.get("port_range", "").split("/")[-1] and int(r["port_range"].split("/")[0]) < 65535]
    for gi, ri in rules[:tries]:
        new = copy.deepcopy(doc)
        rule = new["security_groups"][gi]["rules"][ri]
        port = int(rule["port_range"].split("/")[0]) + 1
        rule["port_range"] = f"{port}/{port}"
        ruleset, _memo = compile_ruleset(validate_document(new), memo)
        changes = plan_netlink_changes(old, ruleset)
        if changes is not None and changes.refills and changes.elements:
            return ruleset, rule["id"]
    raise SystemExit(f"no rule among the first {tries} refills chains and changes elements")


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms ({min(values) * 1000:.1f}-{max(values) * 1000:.1f})"


def inside(doc: dict, rounds: int, tries: int) -> None:
    from agent.compiler.compile import compile_ruleset
    from agent.compiler.render import render_ruleset
    from agent.compiler.transaction import NetlinkChanges, plan_netlink_changes, plan_update, ruleset_size
    from agent.kernel.batch import build_messages, commit_netlink_changes
    from agent.kernel.nft import apply_script
    from agent.model.validate import validate_document
    t = time.monotonic()
    a, memo = compile_ruleset(validate_document(copy.deepcopy(doc)), None)
    b, rule = find_edit(doc, a, memo, tries)
    print(f"compiled and found the edit ({rule}) in {time.monotonic() - t:.1f} s")
    t = time.monotonic()
    apply_script(render_ruleset(a), "bench load")
    size = ruleset_size(a)
    print(f"loaded {size.chains} chains, {size.rules} rules, {size.sets} sets, {size.elements} elements "
          f"in {time.monotonic() - t:.1f} s")
    there, back = plan_netlink_changes(a, b), plan_netlink_changes(b, a)
    assert there is not None and back is not None
    scripts = (plan_update(a, b), plan_update(b, a))
    print(f"the edit: {len(there.refills)} chains refilled with {sum(len(r.rules) for r in there.refills)} rules, "
          f"{sum(len(c.removed) + len(c.added) for c in there.elements)} element changes in "
          f"{len(there.elements)} sets; as a script {len(scripts[0])} bytes")
    for when in ("first", "again"):                                # encoding, no kernel
        t = time.monotonic()
        build_messages(there, 1, b)
        print(f"the batch built ({when}): {(time.monotonic() - t) * 1000:.1f} ms")
    wall: dict[str, list[float]] = {"netlink": [], "script": []}
    kernel: dict[str, list[float]] = {"both": [], "elements alone": [], "refills alone": []}
    for _ in range(rounds):
        for changes, target in ((there, b), (back, a)):
            t = time.monotonic()
            kernel["both"].append(commit_netlink_changes(changes, target))
            wall["netlink"].append(time.monotonic() - t)
        for script in scripts:
            t = time.monotonic()
            apply_script(script, "bench edit")
            wall["script"].append(time.monotonic() - t)
        for part in ("elements alone", "refills alone"):           # where the kernel's time goes
            for changes, target in ((there, b), (back, a)):
                only = NetlinkChanges((), changes.elements) if part == "elements alone" else \
                    NetlinkChanges(changes.refills, ())
                kernel[part].append(commit_netlink_changes(only, target))
    print(f"netlink batch: {_ms(wall['netlink'])} wall, of which the kernel {_ms(kernel['both'])}")
    print(f"nft script:    {_ms(wall['script'])} wall ({len(wall['script'])} commits each, interleaved)")
    print(f"kernel, the batch's elements alone {_ms(kernel['elements alone'])}, "
          f"its refills alone {_ms(kernel['refills alone'])}")
    with open("/proc/loadavg") as f:
        print(f"load: {f.read().split()[:3]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interfaces", type=int, default=1000)
    ap.add_argument("--rules", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--tries", type=int, default=40, help="rules tried for an edit that refills chains")
    ap.add_argument("--inside", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inside:
        inside(json.loads(Path(a.inside).read_text()), a.rounds, a.tries)
        return 0
    doc = subprocess.run([GEN, "--interfaces", str(a.interfaces), "--rules", str(a.rules)],
                         capture_output=True, text=True, check=True).stdout
    ns, path = f"sgbnr{os.getpid() % 10000}", Path(f"/tmp/sgbench-nlr-{os.getpid()}.json")
    path.write_text(doc)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inside", str(path),
                               "--rounds", str(a.rounds), "--tries", str(a.tries)]).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns])
        path.unlink()


if __name__ == "__main__":
    sys.exit(main())
