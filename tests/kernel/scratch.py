"""A scratch network namespace and a test module's scenarios run inside it, for the
kernel tests that work on a bare table (no sandbox hypervisor). Only the standard
library: the test modules import it also when they run as a scenario's process.
"""
from __future__ import annotations

import json
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
