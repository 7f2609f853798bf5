"""The systemd unit: `systemd-analyze verify` where available, and the settings the
operations guide promises."""
from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "secgroup-agent.service"


def _service() -> dict:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read_string(UNIT.read_text())
    return dict(cp["Service"])


def test_unit_promises():
    s = _service()
    assert s["Type"] == "notify" and s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert s["Restart"] == "on-failure" and int(s["WatchdogSec"]) > 0
    assert s["CapabilityBoundingSet"] == "CAP_NET_ADMIN" and s["NoNewPrivileges"] == "yes"
    assert s["ProtectSystem"] == "strict" and s["ProtectHome"] == "yes" and s["PrivateTmp"] == "yes"
    assert s["RuntimeDirectory"] == "secgroup-agent"
    assert s["ExecStart"].endswith("run -c /etc/secgroup-agent/config.yaml $SECGROUP_AGENT_OPTS")
    # extra options from the Debian package's /etc/default file (optional: `-`)
    assert s["EnvironmentFile"] == "-/etc/default/secgroup-agent" and s["StateDirectory"] == "secgroup-agent"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path):
    # verify checks that ExecStart exists: point it at this checkout's entry point
    exe = Path(sys.executable).parent / "secgroup-agent"
    if not exe.exists():
        pytest.skip("the secgroup-agent entry point is not installed in this environment")
    unit = tmp_path / "secgroup-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/secgroup-agent/bin/secgroup-agent", str(exe)))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    problems = [ln for ln in (proc.stdout + proc.stderr).splitlines()
                if "secgroup-agent.service" in ln and "Failed to" not in ln.split(":")[0]]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not problems, "\n".join(problems)
