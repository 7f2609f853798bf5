"""The Debian package (docs/packaging.md): the hypervisor image has it installed with
`apt install ./secgroup-agent_<v>_<arch>.deb`; here it is upgraded to the +test1 build of
the same tree while a connection is held, its man pages are read, and on a fresh
Debian 12 container (the base image, no agent) it is installed, started on an operator's
config, checked to enforce it, and purged (config and state go, the rules stay).
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid

import pytest

import images
from hypervisor import CONFIG, UNIT
from states import BASE
from test_20_service import baseline, wait_active
from topology import Container, Hold, check, sh

DEBS = "/opt/sgit-debs"


def installed_version(c) -> str:
    return c.exec("dpkg-query", "-W", "-f", "${Version}", "secgroup-agent").stdout.strip()


def deb(c, upgrade: bool) -> str:
    names = c.exec("sh", "-c", f"ls {DEBS}/secgroup-agent_*.deb").stdout.split()
    return next(n for n in names if (images.UPGRADE_SUFFIX in n) == upgrade)


def apt_install(c, path: str):
    return c.exec("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
                  "--no-install-recommends", path, timeout=180)


def test_man_pages_and_version(hv):
    page = hv.exec("env", "MANPAGER=cat", "MANWIDTH=100", "man", "secgroup-agent").stdout
    assert "SECGROUP-AGENT(8)" in page and "secgroup-agent flush" in page, page[:400]
    conf = hv.exec("env", "MANPAGER=cat", "man", "5", "secgroup-agent.yaml").stdout
    assert "security_groups[].rules[]" in conf and "port_range" in conf, conf[:400]
    out = hv.agent("--version").stdout.strip()
    assert out.startswith("secgroup-agent ") and out.split()[1] in installed_version(hv), out


def test_upgrade_restarts_the_daemon_and_keeps_an_established_connection(topo, hv):
    if not hv.daemon_active():
        hv.systemctl("start", UNIT)
    hv.apply(BASE)
    before = installed_version(hv)
    assert images.UPGRADE_SUFFIX not in before, before
    config = hv.exec("sha256sum", CONFIG).stdout
    pid = hv.main_pid()
    hold = Hold(topo, "outside", "i1", 7001)
    try:
        hold.wait_up()
        n = hold.oks()
        apt_install(hv, deb(hv, upgrade=True))
        assert installed_version(hv) == before + images.UPGRADE_SUFFIX
        new = wait_active(hv, pid)
        assert new != pid, "the upgrade must restart the daemon (new code)"
        hold.assert_alive(n, "apt install of the newer package")
        check(topo, baseline(), "after the upgrade")
        assert hv.exec("sha256sum", CONFIG).stdout == config, "the upgrade replaced the edited conffile"
        assert hv.status()["ready"]
    finally:
        hold.stop()


# ------------------------------------------------------------ a fresh container

FRESH_CONFIG = """\
host: fresh-01
security_groups:
  - id: sg-web
    rules:
      - {id: web-http, direction: ingress, protocol: tcp, port_range: 80/80, source_cidr: 0.0.0.0/0}
instances:
  - id: vm-1
    security_groups: [sg-web]
    interfaces:
      - {name: tap-vm1, addresses: [10.9.0.5]}
"""


@pytest.fixture
def fresh(sgit_images, hv):
    """A Debian 12 container with systemd (the hypervisor base image, no agent) and the
    package file; removed at the end (labelled for integration/cleanup.sh as well)."""
    from conftest import PROJECT
    name = f"{PROJECT}-fresh-{uuid.uuid4().hex[:6]}"
    sh(["docker", "run", "-d", "--name", name, "--hostname", "fresh-01", "--network", "none",
        "--cap-add", "NET_ADMIN", "--cap-add", "SYS_ADMIN", "--tmpfs", "/run", "--tmpfs", "/run/lock",
        "--tmpfs", "/tmp", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro",
        "--label", f"com.docker.compose.project={PROJECT}", "--stop-signal", "SIGRTMIN+3",
        images.base_hv(), "/sbin/init"])
    try:
        c = Container("fresh", name)
        path = deb(hv, upgrade=False)
        data = hv.exec("base64", "-w0", path).stdout
        c.exec("sh", "-c", f"base64 -d > /root/{os.path.basename(path)}", input=data)
        deadline = time.monotonic() + 60
        while c.exec("systemctl", "is-system-running", check=False).stdout.strip() not in ("running", "degraded"):
            assert time.monotonic() < deadline, "systemd did not come up in the fresh container"
            time.sleep(0.5)
        yield c, f"/root/{os.path.basename(path)}"
    finally:
        sh(["docker", "rm", "-f", name], check=False)


def test_fresh_install_start_enforces_the_config_and_purge_keeps_the_rules(fresh):
    c, path = fresh
    assert c.exec("sh", "-c", "command -v secgroup-agent", check=False).returncode != 0
    apt_install(c, path)
    assert c.exec("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
    assert c.exec("systemctl", "is-active", UNIT, check=False).stdout.strip() == "inactive", \
        "installing must not start the daemon on the example config"
    c.exec("ip", "link", "add", "tap-vm1", "type", "veth", "peer", "name", "vm1-peer")
    c.exec("sh", "-c", f"cat > {CONFIG}", input=FRESH_CONFIG)
    c.exec("systemctl", "start", UNIT, timeout=120)
    st = json.loads(c.exec("secgroup-agent", "status", "--json").stdout)
    assert st["ready"] and not st["errors"], st
    rules = c.exec("nft", "list", "table", "inet", "secgroup_agent").stdout
    assert "tap-vm1" in rules and re.search(r"\b80\b", rules), rules[:2000]
    assert st["interfaces"]["missing"] == [], st["interfaces"]
    assert c.exec("test", "-d", "/var/lib/secgroup-agent", check=False).returncode == 0

    c.exec("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "purge", "-y", "-q", "secgroup-agent",
           timeout=180)
    for gone in ("/etc/secgroup-agent", "/var/lib/secgroup-agent", "/usr/lib/secgroup-agent",
                 "/etc/default/secgroup-agent"):
        assert c.exec("test", "-e", gone, check=False).returncode != 0, f"{gone} survived the purge"
    assert c.exec("systemctl", "is-active", UNIT, check=False).stdout.strip() != "active"
    after = c.exec("nft", "list", "table", "inet", "secgroup_agent", check=False)
    assert after.returncode == 0 and "tap-vm1" in after.stdout, "purge must leave the kernel's rules"
