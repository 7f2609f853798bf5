"""The daemon in network namespaces with real traffic: changes enforced, bad input
keeps the state, drift repaired, a held TCP connection survives kill -9 and restart,
SIGTERM keeps the rules. Nothing touches the root namespace; the sandbox and the
daemon are removed afterwards, also on failure."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sandbox.probe import probe
from sandbox.hypervisor import Sandbox
from agent.service.status import query

pytestmark = [pytest.mark.kernel,
              pytest.mark.require_root]
PY = sys.executable
ADDR = "10.0.0.11"


def document(*ports: int) -> dict:
    rules = [{"id": f"open-{p}", "direction": "ingress", "protocol": "tcp", "port_range": f"{p}/{p}",
              "source_cidr": "192.0.2.0/24"} for p in ports]
    return {"host": "hv-test",
            "security_groups": [{"id": "sg-a", "type": "custom", "rules": rules}],
            "instances": [
                {"id": "i1", "security_groups": ["sg-a"], "interfaces": [{"name": "tap-i1", "addresses": [ADDR]}]},
                {"id": "i2", "security_groups": ["sg-a"], "interfaces": [{"name": "tap-i2", "addresses": ["10.0.0.12"]}]},
            ]}


def write(path: Path, doc) -> None:
    tmp = path.with_name(path.name + ".tmp")            # atomic replace, as config tools do
    tmp.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    os.rename(tmp, path)


class Agent:
    def __init__(self, sb: Sandbox, tmp: Path):
        self.sb, self.config, self.socket = sb, tmp / "config.yaml", str(tmp / "agent.sock")
        self.log = tmp / "agent.log"
        self.proc = None

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.proc = self.sb.popen(self.sb.hv, PY, "-m", "agent.cli.main", "run", "-c", str(self.config),
                                      "--socket", self.socket, "--verify-interval", "2",
                                      stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if query(self.socket, timeout=1).ready:
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.05)
        raise AssertionError("agent not ready:\n" + self.log.read_text())

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=10)

    def nft(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.sb.exec(self.sb.hv, "nft", *args, check=check)

    def has_table(self) -> bool:
        return self.nft("list", "table", "inet", "secgroup_agent", check=False).returncode == 0


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("daemon")
    sb = Sandbox(f"sgd{os.getpid() % 100000}")
    a = Agent(sb, tmp)
    try:
        sb.add_instance("i1", "tap-i1", [ADDR])
        write(a.config, document(8080))
        a.start()
        yield a
    finally:
        try:
            a.stop(signal.SIGKILL)
        finally:
            sb.close()


def reachable(a: Agent, port: int, timeout: float = 1.5) -> bool:
    return probe(a.sb, a.sb.outside, a.sb.instances["i1"]["ns"], ADDR, "tcp", port, timeout=timeout).delivered


def wait_for(cond, limit: float, step: float = 0.01) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if cond():
            return time.monotonic() - start
        time.sleep(step)
    raise AssertionError(f"not within {limit} s")


def test_change_is_enforced(agent):
    assert reachable(agent, 8080) and not reachable(agent, 9090)
    before = query(agent.socket).to_dict()["applies"]
    start = time.monotonic()
    write(agent.config, document(8080, 9090))
    took = wait_for(lambda: "9090" in agent.nft("list", "ruleset").stdout or
                    query(agent.socket).to_dict()["applies"] != before, 5)
    assert reachable(agent, 9090)
    print(f"\nchange enforced {took * 1000:.0f} ms after the write (ruleset/status polling)")
    doc = query(agent.socket).to_dict()
    # a port of a small list: its region is plain rules (no set of ~113 KB of kernel
    # memory for two boxes), so the change rewrites the policy chain: an nft script
    assert doc["last_apply"]["mode"] == "incremental" and time.monotonic() - start < 5
    assert {k: doc["interfaces"][k] for k in ("configured", "present", "missing")} == \
        {"configured": 2, "present": 1, "missing": ["tap-i2"]}


def test_bad_input_keeps_state_and_status_shows_errors(agent):
    write(agent.config, document(8080))
    wait_for(lambda: not reachable(agent, 9090, 0.4), 5)
    bad = document(8080, 9090)
    bad["security_groups"][0]["rules"][1]["port_range"] = "9090/80"
    write(agent.config, bad)
    wait_for(lambda: query(agent.socket).to_dict()["errors"], 3)
    doc = query(agent.socket).to_dict()
    assert any("security_groups[0].rules[1].port_range: 9090/80" in e for e in doc["errors"])
    assert reachable(agent, 8080)                     # the last valid state is enforced
    out = subprocess.run([PY, "-m", "agent.cli.main", "status", "--socket", agent.socket],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "port_range: 9090/80" in out.stdout
    write(agent.config, "host: [unclosed\n")
    wait_for(lambda: "malformed" in " ".join(query(agent.socket).to_dict()["errors"]), 3)
    assert reachable(agent, 8080)
    write(agent.config, document(8080))
    wait_for(lambda: not query(agent.socket).to_dict()["errors"], 3)
    assert "port_range" in agent.log.read_text()      # one journal line per error, with its path


@pytest.mark.parametrize("how", [["delete", "table", "inet", "secgroup_agent"], ["flush", "ruleset"]])
def test_drift_is_repaired_within_a_second(agent, how):
    repairs = query(agent.socket).to_dict()["drift_repairs"]
    agent.nft(*how)
    took = wait_for(agent.has_table, 1.0)
    print(f"\n`nft {' '.join(how)}` repaired in {took * 1000:.0f} ms")
    wait_for(lambda: query(agent.socket).to_dict()["drift_repairs"] > repairs, 2)
    assert reachable(agent, 8080), agent.nft("list", "ruleset").stdout
    assert not reachable(agent, 9090, 0.4)


def test_held_connection_survives_kill9_and_restart(agent):
    ns = agent.sb.instances["i1"]["ns"]
    server = agent.sb.popen(ns, PY, "-c", ECHO_SERVER, stdout=subprocess.PIPE, text=True)
    client = None
    try:
        assert server.stdout.readline().strip() == "READY"
        client = agent.sb.popen(agent.sb.outside, PY, "-c", HOLD_CLIENT, ADDR, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "CONNECTED"

        def ping() -> str:
            client.stdin.write("p\n")
            client.stdin.flush()
            return client.stdout.readline().strip()
        assert ping() == "OK"
        assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
        assert agent.has_table()                      # the rules stay while the agent is down
        assert ping() == "OK"
        agent.start()                                 # adopts the table: no kernel work at all
        assert [ping() for _ in range(5)] == ["OK"] * 5
        doc = query(agent.socket).to_dict()
        assert doc["started_as"] == "adopted" and "full" not in doc["applies"], doc
    finally:
        for p in (client, server):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def test_interface_appearing_is_reported_and_removal_deletes_its_connections(agent):
    agent.sb.add_instance("i2", "tap-i2", ["10.0.0.12"])
    wait_for(lambda: query(agent.socket).to_dict()["interfaces"]["present"] == 2, 3)
    assert probe(agent.sb, agent.sb.outside, agent.sb.instances["i2"]["ns"], "10.0.0.12", "tcp", 8080,
                 timeout=1.5).delivered                # filtered (and allowed) from its first packet
    flows = lambda: agent.sb.exec(agent.sb.hv, "conntrack", "-L", "-d", "10.0.0.12", check=False).stdout
    assert "10.0.0.12" in flows()
    deleted = query(agent.socket).to_dict()["conntrack_deleted"]
    agent.sb.ip(agent.sb.hv, "link", "del", "tap-i2")
    wait_for(lambda: query(agent.socket).to_dict()["conntrack_deleted"] > deleted, 3)
    assert "10.0.0.12" not in flows()
    assert query(agent.socket).to_dict()["interfaces"]["missing"] == ["tap-i2"]


def test_sigterm_exits_zero_and_keeps_rules(agent):
    assert agent.stop(signal.SIGTERM) == 0
    assert agent.has_table() and reachable(agent, 8080) and not reachable(agent, 9090, 0.4)
    assert not Path(agent.socket).exists()
    agent.start()


ECHO_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(1); print("READY", flush=True)
c, _ = s.accept()
while True:
    d = c.recv(64)
    if not d:
        break
    c.sendall(d)
"""

HOLD_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 8080), timeout=2); print("CONNECTED", flush=True)
for line in sys.stdin:
    try:
        c.sendall(b"x"); ok = c.recv(1) == b"x"
    except OSError:
        ok = False
    print("OK" if ok else "FAIL", flush=True)
"""
