"""The daemon's life cycle against fakes: adoption at start, partial drift repair from
the monitor's objects, the save after a commit, per-interface readiness and `wait`."""
from __future__ import annotations

import argparse
import copy
import threading
import time
from pathlib import Path

import yaml

from agent.cli.daemon import cmd_wait
from agent.reconciler.keeper import ELEMENTS, FULL, UNCHANGED, Keeper
from agent.reconciler.store import PICKLE_FILE, StateStore
from agent.service.daemon import Daemon, DaemonConfig, Ports
from agent.service.status import StatusServer, format_status
from agent.service.status_doc import Status
from fake_kernel import FakeKernel

WEBSHOP = yaml.safe_load((Path(__file__).parents[2] / "examples" / "webshop.yaml").read_text())


class Source:
    name = "fake:test"

    def __init__(self, doc, revision="r1"):
        self.result = (copy.deepcopy(doc), revision)

    def fetch(self):
        return self.result

    def start(self, on_change):
        pass

    def close(self):
        pass


def daemon(kernel, store=None, **config) -> tuple[Daemon, dict]:
    callbacks: dict = {}

    def watch(drift, lost):
        callbacks["drift"] = drift
        return Source(None)

    d = Daemon(Source(WEBSHOP), Keeper(kernel, store=store), DaemonConfig(host="hv-01", **config),
               Ports(table_watch=watch))
    d.start_watchers()
    return d, callbacks


def test_restart_adopts_and_the_first_change_is_small(tmp_path):
    kernel, store = FakeKernel(), StateStore(tmp_path)
    d, _ = daemon(kernel, store, save_delay=0.0)
    d.started_as = d.keeper.adopt()
    d.refresh(force=True)
    d.tick()                                                   # the save is due at once
    assert (tmp_path / PICKLE_FILE).exists() and d.applies == {FULL: 1}
    d2, _ = daemon(kernel, store)
    d2.adopt()
    assert d2._validated is not None                          # the saved document: validated incrementally
    d2.refresh(force=True)
    assert d2.started_as == "adopted" and d2.applies == {UNCHANGED: 1} and len(kernel.commits) == 1
    doc = copy.deepcopy(WEBSHOP)
    doc["instances"].append({"id": "web-9", "host": "hv-09", "security_groups": ["sg-web"],
                             "interfaces": [{"name": "tap-web9", "addresses": ["10.0.1.90"]}]})
    d2.source.result = (doc, "r2")
    d2.step([("source",)])
    assert d2.applies[ELEMENTS] == 1 and [w for w, _ in kernel.commits] == [FULL, ELEMENTS]


def test_drift_with_objects_is_repaired_partially(caplog):
    kernel = FakeKernel()
    d, cb = daemon(kernel)
    d.refresh(force=True)
    cb["drift"]("nft[7]: delete rule inet secgroup_agent in_tap-web1",
                frozenset({("inet", "secgroup_agent", "chain", "in_tap-web1")}))
    cb["drift"]("nft[7]: delete element inet secgroup_agent local_addr4",
                frozenset({("inet", "secgroup_agent", "set", "local_addr4")}))
    d.step(d._wait(block=False))
    what, script = kernel.commits[-1]
    assert what == "repair" and "delete table" not in script and len(kernel.commits) == 2
    assert "flush chain inet secgroup_agent in_tap-web1" in script and "local_addr4" in script
    assert any("rewriting chain inet secgroup_agent in_tap-web1, set inet secgroup_agent local_addr4"
               in r.getMessage() for r in caplog.records)


def test_status_names_the_revision_each_interface_enforces():
    d, _ = daemon(FakeKernel())
    d.refresh(force=True)
    doc = d.snapshot()
    assert doc.interfaces.programmed == {"tap-db1": "r1", "tap-web1": "r1", "tap-web2": "r1"}
    assert Status.from_dict(doc.to_dict()) == doc
    assert "3 programmed" in format_status(doc)


def test_wait_returns_once_the_interface_is_programmed(tmp_path, capsys):
    d, _ = daemon(FakeKernel())
    path = tmp_path / "agent.sock"
    server = StatusServer(str(path), d.snapshot).start()
    d.ports.published = server.notify
    try:
        args = argparse.Namespace(iface="tap-web1", revision="r1", timeout=5.0, interval=0.01, socket=str(path))
        threading.Timer(0.2, lambda: d.refresh(force=True)).start()
        start = time.monotonic()
        assert cmd_wait(args) == 0
        assert time.monotonic() - start < 2.0                 # answered at the publish, not by polling
        assert "tap-web1: enforced (revision r1)" in capsys.readouterr().out
        args.revision, args.timeout = "r9", 0.2
        assert cmd_wait(args) == 1
        args.iface, args.revision = "tap-nope", None
        assert cmd_wait(args) == 1 and "not programmed" in capsys.readouterr().err
    finally:
        server.close()


def test_a_lost_notification_never_delays_the_next_change():
    """An overrun with foreign commits starts a listing in the background; a change
    arriving meanwhile is committed at once, before the listing is judged."""
    kernel = FakeKernel()
    d, _ = daemon(kernel)
    pending = []
    d.ports.background = pending.append                        # the listing never finishes here
    d.refresh(force=True)
    kernel.gen += 3                                            # someone else committed
    doc = copy.deepcopy(WEBSHOP)
    doc["anti_spoofing"] = False
    d.source.result = (doc, "r2")
    d.step([("overflow",), ("source",)])
    assert len(pending) == 1 and d._listing                    # listing under way
    assert d.revision == "r2" and len(kernel.commits) == 2     # the change did not wait for it


def test_a_publish_answers_waiting_clients_before_the_loop_goes_on(tmp_path):
    """`wait` gets a cut document (only its interface), sent before the publish returns."""
    from agent.service.status import query
    d, _ = daemon(FakeKernel())
    path = tmp_path / "agent.sock"
    server = StatusServer(str(path), d.snapshot).start()
    d.ports.published = server.notify
    got: list = []
    client = threading.Thread(target=lambda: got.append(query(str(path), request="wait tap-web1 r1 5")))
    try:
        client.start()
        deadline = time.monotonic() + 5
        while not server._waiters and time.monotonic() < deadline:
            time.sleep(0.005)
        assert server._waiters, "the wait request never reached the server"
        d.refresh(force=True)
        assert not server._owing and not server._waiters      # the answer was sent before publish returned
        client.join(0.5)
        assert got and got[0].interfaces.programmed == {"tap-web1": "r1"} and got[0].revision == "r1"
        assert len(query(str(path)).interfaces.programmed) == 3        # a plain status: every interface
    finally:
        server.close()


def test_present_interfaces_are_known_at_ready_before_the_link_watch_starts():
    """The link monitor (pyroute2) starts in the background when the loop is idle; the
    interfaces present are read at once (if_nameindex), so the first status is right."""
    started = []
    ports = Ports(present_links=lambda: {"tap-web1", "tap-db1"},
                  link_monitor=lambda cb: started.append(cb) or Source(None),
                  background=lambda work: threading.Thread(target=work).start())
    d = Daemon(Source(WEBSHOP), Keeper(FakeKernel()), DaemonConfig(host="hv-01", settle_delay=1.0), ports)
    runner = threading.Thread(target=d.run)
    runner.start()
    try:
        deadline = time.monotonic() + 5
        while not d.ready and time.monotonic() < deadline:
            time.sleep(0.005)
        nics = d.snapshot().interfaces
        assert d.ready and not started, "the link monitor must not hold up the first apply"
        assert nics.present == 2 and nics.missing == ("tap-web2",), nics
        while not started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert started, "the link monitor never started"
    finally:
        d.request("stop")
        runner.join(5)


def test_a_change_arriving_during_the_state_hash_goes_first():
    """The settle hashes the document a chunk at a time (StateHasher.steps): a change
    waiting in the queue stops it between chunks; the hash goes on afterwards."""
    from agent.service.records import StateHasher, state_hash
    doc = copy.deepcopy(WEBSHOP)
    doc["instances"] += [{"id": f"far-{n}", "host": "hv-far", "security_groups": ["sg-web"],
                          "interfaces": [{"name": f"eth{n}", "addresses": [f"10.99.{n // 250}.{n % 250 + 1}"]}]}
                         for n in range(2500)]
    source = Source(doc)
    source.shares_items = True
    d = Daemon(source, Keeper(FakeKernel()), DaemonConfig(host="hv-01"), Ports())
    d.refresh(force=True)
    assert d.hash is None and d._digest is not None
    d.request("source")                                   # a change is waiting
    d.settle(time.monotonic())
    assert d.hash is None and d._digest is not None and d._settle_due is not None   # stopped after one chunk
    d.events.get_nowait()
    d.settle(time.monotonic())
    assert d.hash == state_hash(source.result[0]) and d._digest is None and d._settle_due is None
    steps = list(StateHasher().steps(source.result[0]))
    assert steps.count(None) >= 3 and steps[-1] == d.hash
