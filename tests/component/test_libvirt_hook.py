"""examples/libvirt-qemu-hook: at `prepare` it waits for every tap of the guest (its
domain XML on stdin) and refuses the start when one is not enforced; other operations
pass. `secgroup-agent` is a stub here (SECGROUP_AGENT) recording its arguments."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

HOOK = Path(__file__).resolve().parents[2] / "examples" / "libvirt-qemu-hook"
XML = ("<domain><devices><interface type='bridge'><target dev='tap-web1'/></interface>"
       '<interface type="bridge"><target dev="tap-db1"/></interface></devices></domain>\n')


def run_hook(tmp_path: Path, operation: str, refuse: str = "") -> tuple[subprocess.CompletedProcess, list[str]]:
    calls = tmp_path / "calls"
    stub = tmp_path / "secgroup-agent"
    stub.write_text(f'#!/bin/sh\necho "$*" >> {calls}\ncase "$*" in *"--iface {refuse or "-"} "*) exit 1;; esac\n')
    stub.chmod(0o755)
    env = dict(os.environ, SECGROUP_AGENT=str(stub), SECGROUP_AGENT_WAIT_TIMEOUT="3")
    proc = subprocess.run([str(HOOK), "guest1", operation, "begin", "-"], input=XML, capture_output=True,
                          text=True, env=env, timeout=30)
    return proc, calls.read_text().splitlines() if calls.exists() else []


def test_prepare_waits_for_every_tap(tmp_path):
    proc, calls = run_hook(tmp_path, "prepare")
    assert proc.returncode == 0, proc.stderr
    assert calls == ["wait --iface tap-web1 --timeout 3", "wait --iface tap-db1 --timeout 3"]


def test_a_tap_not_enforced_refuses_the_start(tmp_path):
    proc, calls = run_hook(tmp_path, "prepare", refuse="tap-db1")
    assert proc.returncode == 1 and "interface tap-db1 not enforced" in proc.stderr


def test_other_operations_pass(tmp_path):
    proc, calls = run_hook(tmp_path, "started")
    assert proc.returncode == 0 and calls == []
