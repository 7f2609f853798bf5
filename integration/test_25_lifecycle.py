"""The host life cycle of issue 14 as deployed (the Debian package under systemd):

* a tap that matches `instance_interfaces` (default `tap*`, `vnet*`) but that the desired
  state does not name is dropped in both directions, and the drop is counted;
* `systemctl restart` adopts the table the kernel holds (the journal says `start:
  adopted`, and no full replace follows), also when the config changed by one rule while
  the service was stopped (then the change is the incremental path);
* the libvirt hook of examples/ (installed as /etc/libvirt/hooks/qemu) waits at `prepare`
  until the agent reports the guest's tap enforced, and refuses (exit 1) when it is not
  within the timeout.
"""
import copy
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from hypervisor import UNIT
from states import BASE, variant, without_rule
from test_20_service import baseline, wait_active
from topology import Probe as P, check

HOOK = Path(__file__).resolve().parent.parent / "examples" / "libvirt-qemu-hook"
HOOK_PATH = "/etc/libvirt/hooks/qemu"


def without_instance(ident: str) -> dict:
    doc = copy.deepcopy(BASE)
    doc["instances"] = [i for i in doc["instances"] if i["id"] != ident]
    return doc


pytestmark = pytest.mark.usefixtures("running_service")   # conftest.py


def drop_counters(hv) -> int:
    """Packets counted by the unknown-interface verdict chains of the inet table (their
    comment names the stage: docs/observability.md)."""
    text = hv.ruleset(stateless=False)
    return sum(int(n) for n in re.findall(r'counter packets (\d+) bytes \d+ .*comment "[^"]*/unknown-interface/', text))


def test_a_tap_the_state_does_not_name_is_dropped_both_ways(topo, hv):
    cases_base = [(P("outside", "i3", "tcp", 9000), True), (P("i3", "outside", "tcp", 80, v6=True), True),
                  (P("b1", "i3", "udp", 5433), True)]
    check(topo, cases_base, "control: BASE names i3, its traffic passes")
    before = drop_counters(hv)
    hv.apply(without_instance("i3"))
    check(topo, [
        (P("outside", "i3", "tcp", 9000), False),            # to the tap (forward)
        (P("outside", "i3", "tcp", 9000, v6=True), False),
        (P("i3", "outside", "tcp", 80), False),              # from the tap (forward)
        (P("i3", "outside", "tcp", 80, v6=True), False),
        (P("b1", "i3", "udp", 5433), False),                 # bridged -> unknown routed tap
        (P("outside", "i1", "tcp", 80), True),               # the named taps are untouched
        (P("i2", "outside", "tcp", 80), True),
    ], "tap-i3 matches tap* and the state does not name it")
    ping = hv.exec("ping", "-c", "1", "-W", "1", "10.0.0.13", check=False)
    assert ping.returncode != 0, "the host reached the unknown tap (output direction)"
    after = drop_counters(hv)
    assert after > before, f"the unknown-interface drop counters did not rise ({before} -> {after})"
    hv.apply(BASE)
    check(topo, cases_base, "i3 named again: its traffic passes again")


def test_restart_adopts_the_table_without_a_full_replace(topo, hv):
    pid = hv.main_pid()
    cursor = hv.journal_cursor()
    hv.systemctl("restart", UNIT)
    pid = wait_active(hv, pid)
    st = hv.wait_revision(hv.status()["revision"])
    text, cursor = hv.journal(cursor)
    assert "start: adopted" in text, f"the restart did not adopt the table; journal:\n{text}"
    assert "(full," not in text, f"a full replace after the restart; journal:\n{text}"
    assert st["started_as"] == "adopted" and "full" not in st["applies"], st
    check(topo, baseline(), "after the adopting restart")
    # one rule changed while the service is stopped: adopted, then the incremental path
    hv.systemctl("stop", UNIT)
    edited = variant(**{"group:sg-web": without_rule("web-http4")})
    revision = hv.write_config(edited)
    hv.systemctl("start", UNIT)
    wait_active(hv, pid)
    st = hv.wait_revision(revision)
    text, _ = hv.journal(cursor)
    assert "start: adopted" in text, f"the start after the edit did not adopt; journal:\n{text}"
    applied = [line for line in text.splitlines() if f"revision {revision} applied (" in line]
    assert applied and "(full," not in applied[0], f"the one-rule change was not incremental: {applied or text}"
    assert "full" not in st["applies"], st
    check(topo, [(P("outside", "i1", "tcp", 80), False), (P("outside", "i1", "tcp", 80, v6=True), True)],
          "the rule removed while stopped")


DOMAIN = """<domain type='kvm'><name>{guest}</name><devices>
  <interface type='ethernet'><target dev='{dev}'/><model type='virtio'/></interface>
</devices></domain>
"""


def install_hook(hv) -> None:
    hv.exec("sh", "-c", f"mkdir -p /etc/libvirt/hooks && cat > {HOOK_PATH} && chmod 0755 {HOOK_PATH}",
            input=HOOK.read_text())


def start_hook(hv, guest: str, dev: str, timeout: int) -> subprocess.Popen:
    """libvirt's call at `prepare`, the domain XML on stdin."""
    with tempfile.TemporaryFile("w+") as xml:
        xml.write(DOMAIN.format(guest=guest, dev=dev))
        xml.seek(0)
        return subprocess.Popen(
            ["docker", "exec", "-i", "-e", f"SECGROUP_AGENT_WAIT_TIMEOUT={timeout}", hv.c.cid,
             HOOK_PATH, guest, "prepare", "begin", "-"],
            stdin=xml, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_libvirt_hook_waits_until_the_tap_is_enforced(topo, hv):
    install_hook(hv)
    hv.apply(without_instance("i2"))
    hook = start_hook(hv, "web2", "tap-i2", 30)
    time.sleep(2.0)
    if hook.poll() is not None:
        raise AssertionError(f"the hook returned (exit {hook.returncode}) before tap-i2 was in the desired "
                             f"state: {hook.stdout.read()}{hook.stderr.read()}")
    revision = hv.write_config(BASE)
    out, err = hook.communicate(timeout=30)
    assert hook.returncode == 0, f"hook exit {hook.returncode}: {out}{err}"
    # the hook returned: tap-i2's rules are in the kernel (enforced, at this revision or later)
    check(topo, [(P("outside", "i2", "tcp", 80), True), (P("outside", "i2", "tcp", 9999), False),
                 (P("i2", "outside", "tcp", 25), False)], "right after the hook returned")
    assert hv.status()["interfaces"]["programmed"].get("tap-i2") == revision


def test_the_libvirt_hook_refuses_a_tap_that_is_not_enforced(hv):
    install_hook(hv)
    hook = start_hook(hv, "ghost", "tap-nobody", 1)
    out, err = hook.communicate(timeout=30)
    assert hook.returncode == 1, f"hook exit {hook.returncode}: {out}{err}"
    assert "tap-nobody not enforced" in err, err
    other = subprocess.run(["docker", "exec", "-i", hv.c.cid, HOOK_PATH, "ghost", "release", "end", "-"],
                           input="", capture_output=True, text=True)
    assert other.returncode == 0, "operations other than prepare must pass through"
