"""The service life cycle: `secgroup-agent run` under systemd in the hypervisor
container, with the unit from systemd/ installed as an operator would.

reload after an edit, restart and kill -9 (systemd restarts it) without breaking an
established flow, stop leaving the rules in place, invalid input explained in the
journal while the last valid state stays enforced.
"""
import time

import pytest

from hypervisor import CONFIG, UNIT
from states import variant, without_rule
from topology import Hold, Probe as P, check

# probes whose verdicts BASE fixes: one accepted, one dropped, each way of filtering
BASELINE = [
    (P("outside", "i1", "tcp", 80), True),
    (P("outside", "i1", "tcp", 9999), False),
    (P("outside", "i3", "tcp", 9001, v6=True), False),
    (P("b1", "b2", "udp", 9999), True),
    (P("i1", "outside", "tcp", 25), False),
]


def baseline():
    return [(P(p.src, p.dst, p.proto, p.dport, v6=p.v6), want) for p, want in BASELINE]


pytestmark = pytest.mark.usefixtures("running_service")   # conftest.py


def wait_active(hv, old_pid: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = hv.main_pid()
        if pid and pid != old_pid and hv.daemon_active():
            return pid
        time.sleep(0.2)
    raise AssertionError(f"{UNIT} did not come back (MainPID was {old_pid}):\n"
                         + hv.systemctl("status", "--no-pager", UNIT, check=False).stdout)


def test_runs_as_a_notify_service_and_reports_its_state(hv):
    props = hv.systemctl("show", "-p", "Type", "-p", "ActiveState", "-p", "SubState", UNIT).stdout
    assert "Type=notify" in props and "ActiveState=active" in props and "SubState=running" in props, props
    st = hv.status()
    assert st and st["ready"] and st["revision"] and not st["errors"], st
    assert st["interfaces"]["missing"] == [], st["interfaces"]
    assert "enforcing" in hv.systemctl("show", "-p", "StatusText", UNIT).stdout


def test_idle_daemon_does_not_fight_its_own_changes(hv):
    """Nobody touches the tables: the drift counter stays put (in a PID namespace the
    kernel reports the daemon's own transactions under its host-side PID)."""
    before = hv.status()["drift_repairs"]
    time.sleep(3)
    after = hv.status()["drift_repairs"]
    assert after == before, (f"{after - before} drift repairs in 3 s with nobody else touching the "
                             f"tables; journal tail:\n" + "\n".join(hv.journal()[0].splitlines()[-4:]))


def test_reload_after_editing_the_config(topo, hv):
    pid = hv.main_pid()
    hold = Hold(topo, "outside", "i1", 7001)
    try:
        hold.wait_up()
        edited = variant(**{"group:sg-web": without_rule("web-http4", "web-hold4")})
        revision = hv.write_config(edited)
        hv.systemctl("reload", UNIT)
        hv.wait_revision(revision)
        assert hv.main_pid() == pid, "reload must not restart the process"
        check(topo, [(P("outside", "i1", "tcp", 80), False), (P("outside", "i1", "tcp", 80, v6=True), True)])
        assert "BROKEN" in hold.wait_broken(), "the edit revoked web-hold4: its connection must stop"
    finally:
        hold.stop()


def test_restart_keeps_established_flows_and_filtering(topo, hv):
    pid = hv.main_pid()
    hold = Hold(topo, "outside", "i1", 7001)
    try:
        hold.wait_up()
        n = hold.oks()
        hv.systemctl("restart", UNIT)
        wait_active(hv, pid)
        hold.assert_alive(n, "systemctl restart")
        check(topo, baseline(), "after systemctl restart")
    finally:
        hold.stop()


def test_kill_9_is_restarted_by_systemd_without_breaking_flows(topo, hv):
    pid = hv.main_pid()
    hold = Hold(topo, "outside", "i1", 7001)
    try:
        hold.wait_up()
        n = hold.oks()
        hv.exec("kill", "-9", str(pid))
        # while systemd waits to restart it (RestartSec), the kernel keeps filtering
        check(topo, baseline(), "between kill -9 and the restart")
        new = wait_active(hv, pid)
        assert new != pid
        hold.assert_alive(n, "kill -9 and restart")
        check(topo, baseline(), "after the restart by systemd")
        assert hv.status()["revision"]
    finally:
        hold.stop()


def test_stop_leaves_the_rules_in_place(topo, hv):
    hold = Hold(topo, "outside", "i1", 7001)
    try:
        hold.wait_up()
        n = hold.oks()
        before = hv.ruleset()
        assert "chain" in before
        hv.systemctl("stop", UNIT)
        assert not hv.daemon_active()
        assert hv.systemctl("show", "-p", "Result", "--value", UNIT).stdout.strip() == "success"
        assert hv.ruleset() == before, "systemctl stop changed the agent's table"
        check(topo, baseline(), "with the service stopped")
        hold.assert_alive(n, "systemctl stop")
    finally:
        hold.stop()
        hv.systemctl("start", UNIT)


def test_invalid_input_is_logged_and_the_last_state_stays(topo, hv):
    cursor = hv.journal_cursor()
    bad = variant()
    bad["security_groups"][0]["rules"][0]["priority"] = 101
    bad["security_groups"][1]["rules"][0]["port_range"] = "5432/22"
    bad["instances"][0]["security_groups"] = ["sg-nope"]
    revision = hv.write_config(bad)
    st = hv.wait_revision(revision, result="invalid")
    assert st["revision"] != revision
    text, _ = hv.journal(cursor)
    lines = text.splitlines()
    for path, what in [("security_groups[0].rules[0].priority", "101"),
                       ("security_groups[1].rules[0].port_range", "5432/22"),
                       ("instances[0].security_groups", "sg-nope")]:
        assert any(path in line and what in line for line in lines), \
            f"no journal line names {path} ({what}); journal since the edit:\n{text}"
    assert hv.agent("check", "-c", CONFIG, check=False).returncode == 2
    check(topo, baseline(), "the last valid state must stay enforced")
    assert hv.daemon_active()
