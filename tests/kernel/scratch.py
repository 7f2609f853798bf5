"""A scratch network namespace and a test module's scenarios run inside it, for the
kernel tests that work on a bare table (no sandbox hypervisor). Only the standard
library: the test modules import it also when they run as a scenario's process.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def scratch_namespace(name: str) -> Iterator[str]:
    """An empty network namespace `name` (one a crashed run left is replaced), deleted
    on the way out, also on failure."""
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def run_scenario(ns: str, script: str, scenario: str, *args, prefix: tuple = ()) -> dict:
    """`script` (a test module that runs its scenarios when executed) run as
    `script scenario json(args)` inside `ns` (after `prefix`, e.g. unshare); the JSON of
    its last output line."""
    proc = subprocess.run(["ip", "netns", "exec", ns, *prefix, sys.executable, script, scenario, json.dumps(args)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table_blocks() -> list[str]:
    """The agent's tables as nft lists them in this process's namespace, one block per
    object, sorted, elements sorted (the kernel lists objects in creation order and
    interval elements in insertion order)."""
    out = []
    for family in ("inet", "bridge"):
        proc = subprocess.run(["nft", "list", "table", family, "secgroup_agent"], capture_output=True, text=True)
        if proc.returncode == 0:
            body = proc.stdout.strip().split("\n", 1)[1].rsplit("\n}", 1)[0]
            out += [f"{family}: {b.strip()}" for b in re.split(r"\n\s*\n", body)]

    def sort_elements(m: re.Match) -> str:
        items = [e.strip() for e in m.group(1).replace("\n", " ").split(",") if e.strip()]
        return "elements = { " + ", ".join(sorted(items)) + " }"
    return sorted(re.sub(r"elements = \{([^}]*)\}", sort_elements, b) for b in out)
