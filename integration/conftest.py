"""Fixtures of the Docker integration suite (`make integration`).

Session-wide: the images (built or reused by content hash), the compose project
(pytest-docker, with Debian's docker-compose 1.29), the wiring of every container, and
the `hv` handle that applies desired states. Everything the suite creates is labelled
with the compose project and removed at the end, also on failure.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import images  # noqa: E402
from hypervisor import UNIT, Hypervisor  # noqa: E402
from states import BASE  # noqa: E402
from topology import Container, Instance, Topology, sh  # noqa: E402

PROJECT = os.environ.get("SGIT_PROJECT", f"sgit{os.getpid()}")

ROUTED = [
    # name, tap, addresses, mac
    ("i1", "tap-i1", ["10.0.0.11", "fd00::11"], "52:54:00:00:00:11"),
    ("i2", "tap-i2", ["10.0.0.12", "fd00::12"], "52:54:00:00:00:12"),
    ("i3", "tap-i3", ["10.0.0.13", "fd00::13"], "52:54:00:00:00:13"),
]
BRIDGED = [
    ("b1", "tap-b1", ["10.1.0.21", "fd01::21"], "52:54:00:00:01:21"),
    ("b2", "tap-b2", ["10.1.0.22", "fd01::22"], "52:54:00:00:01:22"),
]


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: Docker integration suite (make integration)")


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def sgit_images() -> dict[str, str]:
    tags = images.ensure_all()
    os.environ.update(tags)
    return tags


@pytest.fixture(scope="session")
def docker_compose_command() -> str:
    return "docker-compose"


@pytest.fixture(scope="session")
def docker_compose_file(sgit_images) -> str:
    return str(HERE / "docker-compose.yml")


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return PROJECT


@pytest.fixture(scope="session")
def docker_setup():
    return ["up -d --no-build"]


@pytest.fixture(scope="session")
def docker_cleanup():
    if os.environ.get("SGIT_KEEP"):          # debugging: leave the containers running
        return []
    return ["down -v --remove-orphans -t 2"]


def _container(service: str) -> str:
    out = sh(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}",
              "--filter", f"label=com.docker.compose.service={service}"]).stdout.split()
    if len(out) != 1:
        raise RuntimeError(f"service {service}: expected one running container, got {out}")
    return out[0]


def _wait(what: str, predicate, timeout: float = 60, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def topo(docker_services) -> Topology:
    hv = Container("hv", _container("hv"))
    outside = Instance("outside", _container("outside"), name="outside",
                       addresses=["192.0.2.2", "2001:db8:f::2"])
    t = Topology(hv, outside)
    if shutil.which("modprobe"):          # built in on some kernels (CONFIG_BRIDGE_NETFILTER=y)
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True)
    t.wire_outside()
    for spec, attachment in [(s, "routed") for s in ROUTED] + [(s, "bridged") for s in BRIDGED]:
        name, tap, addrs, mac = spec
        t.add_instance(Instance(name, _container(name), name=name, tap=tap, addresses=addrs,
                                mac=mac, attachment=attachment))
    for node in [outside, *t.instances.values()]:
        _wait(f"the packet tool in {node.name}",
              lambda n=node: n.exec("python3", "/opt/sgit/tools/sgpkt.py", "ready", check=False).returncode == 0)
    t.warm_up()
    _wait("systemd in the hypervisor container",
          lambda: hv.exec("systemctl", "is-system-running", check=False).stdout.strip() in ("running", "degraded"))
    return t


@pytest.fixture(scope="session")
def hv(topo) -> Hypervisor:
    return Hypervisor(topo.hv)


def _ensure_running(hv: Hypervisor) -> None:
    if not hv.daemon_active():              # a test stopped it (or it failed): start it again
        hv.systemctl("reset-failed", UNIT, check=False)
        hv.systemctl("start", UNIT)


@pytest.fixture
def running_service(hv):
    """The packaged service running with the base document, before and after the test
    (a test that stops the service or applies another document leaves it as it found it).
    Skips when the hypervisor image has no unit."""
    if not hv.has_unit():
        pytest.skip(f"{UNIT} is not installed in the hypervisor image (no unit in systemd/)")
    _ensure_running(hv)
    hv.apply(BASE)
    yield hv
    _ensure_running(hv)
    hv.apply(BASE)
