"""The daemon and its reconciler against fakes of the kernel boundary (no root)."""
from __future__ import annotations

import copy
import time
import ipaddress
import threading
from pathlib import Path

import yaml

from agent.errors import InputError, InvalidInput, KernelError
from agent.policy.revocation import Flow
from agent.reconciler.keeper import ELEMENTS, FULL, INCREMENTAL, Keeper
from agent.service.daemon import Daemon, DaemonConfig, Ports
from agent.service.status import StatusServer, format_status, query
from agent.service.status_doc import Status
from agent.sources import SourceError

WEBSHOP = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "webshop.yaml").read_text())


class FakeKernel:
    def __init__(self):
        self.scripts: list[tuple[str, str]] = []
        self.gen = 1
        self.table = None           # what `listing` returns
        self.refuse_incremental = False
        self.refuse_elements = False
        self.flows: list[Flow] = []
        self.deleted: list[Flow] = []

    def commit(self, script, what):
        if what == INCREMENTAL and self.refuse_incremental:
            raise KernelError("refused")
        self.scripts.append((what, script))
        self.gen += 1
        self.table = f"table {len(self.scripts)}"
        return 0.001

    def commit_elements(self, changes):
        if self.refuse_elements:
            raise KernelError("refused")
        self.scripts.append(("elements", "\n".join(
            f"{c.set.name} -{list(c.removed)} +{list(c.added)}" for c in changes)))
        self.gen += 1
        self.table = f"table {len(self.scripts)}"
        return 0.001

    def commit_changes(self, changes, declared=None):
        if self.refuse_elements:
            raise KernelError("refused")
        self.scripts.append(("changes", repr(changes)))
        self.gen += 1
        self.table = f"table {len(self.scripts)}"
        return 0.001

    def listing(self, tables):
        return self.table

    def generation(self):
        return self.gen

    def tables_present(self, tables):
        return self.table is not None

    def local_addresses(self):
        return frozenset()

    def read_stamp(self):
        return None

    def list_flows(self, addresses=None):
        return [f for f in self.flows if addresses is None or f.src in addresses or f.dst in addresses]

    def delete_flows(self, flows):
        flows = list(flows)
        self.deleted += flows
        return len(flows)


class FakeSource:
    name = "fake:test"

    def __init__(self, doc):
        self.result = (doc, "r1")
        self.on_change = None
        self.closed = False

    def fetch(self):
        if isinstance(self.result, Exception):
            raise self.result
        return self.result

    def start(self, on_change):
        self.on_change = on_change

    def close(self):
        self.closed = True


class Closer:
    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True


def make(doc=WEBSHOP, **ports):
    kernel, source = FakeKernel(), FakeSource(copy.deepcopy(doc))
    notes: list[str] = []
    callbacks: dict = {}

    def watch(drift, lost):
        callbacks["drift"], callbacks["lost"] = drift, lost
        return Closer()

    def links(cb):
        callbacks["link"] = cb
        return Closer()

    p = Ports(present_links=lambda: {"tap-web1"}, link_monitor=links, table_watch=watch,
              notify=lambda *f: notes.extend(f) or True, **ports)
    d = Daemon(source, Keeper(kernel), DaemonConfig(host="hv-01", watchdog_interval=0.01), p)
    d.start_watchers()
    d.refresh(force=True)
    return d, kernel, source, notes, callbacks


def test_first_apply_is_a_full_replace_then_ready():
    d, kernel, _s, notes, _ = make()
    assert [w for w, _ in kernel.scripts] == [FULL]
    assert "delete table inet secgroup_agent" in kernel.scripts[0][1]    # adopt, never flush first
    assert notes[:2] == ["READY=1", "STATUS=enforcing revision r1"]
    d.publish()
    doc = d.snapshot().to_dict()
    assert doc["revision"] == "r1" and doc["ready"] and doc["interfaces"]["present"] == 1


def _member_change(source) -> None:
    """A member joining a group on another host: only the group's shared set changes."""
    doc = copy.deepcopy(WEBSHOP)
    doc["instances"].append({"id": "web-9", "host": "hv-09", "security_groups": ["sg-web"],
                             "interfaces": [{"name": "tap-web9", "addresses": ["10.0.1.90"]}]})
    source.result = (doc, "r2")


def test_element_change_is_committed_alone_and_unchanged_revision_costs_nothing():
    d, kernel, source, _n, _ = make()
    d.step([("source",)])
    assert len(kernel.scripts) == 1                                       # same revision: nothing
    _member_change(source)
    d.step([("source",), ("source",), ("source",)])                         # a burst: one apply
    assert [w for w, _ in kernel.scripts] == [FULL, ELEMENTS]
    assert "10.0.1.90" in kernel.scripts[1][1]
    assert d.revision == "r2" and d.applies == {FULL: 1, ELEMENTS: 1}


def test_chain_change_is_an_incremental_script():
    d, kernel, source, _n, _ = make()
    doc = copy.deepcopy(WEBSHOP)
    doc["anti_spoofing"] = False                          # interface chains change
    source.result = (doc, "r2")
    d.step([("source",)])
    assert [w for w, _ in kernel.scripts] == [FULL, INCREMENTAL]
    assert "delete table" not in kernel.scripts[1][1]


def test_refused_element_commit_falls_back_to_a_script():
    d, kernel, source, _n, _ = make()
    kernel.refuse_elements = True
    _member_change(source)
    d.step([("source",)])
    assert [w for w, _ in kernel.scripts] == [FULL, INCREMENTAL] and d.revision == "r2"


def test_refused_incremental_falls_back_to_full_replace():
    d, kernel, source, _n, _ = make()
    kernel.refuse_elements = kernel.refuse_incremental = True
    _member_change(source)
    d.step([("source",)])
    assert [w for w, _ in kernel.scripts] == [FULL, FULL] and d.revision == "r2"


def test_invalid_input_keeps_state_reports_errors_and_recovers(caplog):
    d, kernel, source, _n, _ = make()
    bad = copy.deepcopy(WEBSHOP)
    bad["security_groups"][0]["rules"][0]["port_range"] = "90/80"
    bad["instances"][0]["security_groups"] = []
    source.result = (bad, "r2")
    d.step([("source",)])
    assert len(kernel.scripts) == 1 and d.revision == "r1"
    doc = d.snapshot().to_dict()
    assert doc["revision"] == "r1" and len(doc["errors"]) == 2 and doc["last_apply"]["result"] == "invalid"
    assert any("port_range: 90/80: start is after end" in e for e in doc["errors"])
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert sum("port_range" in m for m in lines) == 1 and all("fake:test revision r2" in m for m in lines)
    source.result = InvalidInput([InputError("", "/x.yaml", "malformed YAML/JSON at line 1")])
    d.step([("source",)])
    assert "/x.yaml" in d.snapshot().to_dict()["errors"][0]
    source.result = SourceError("unreachable")
    d.step([("source",)])
    assert d.snapshot().to_dict()["errors"] == ["unreachable"] and len(kernel.scripts) == 1
    source.result = (copy.deepcopy(WEBSHOP), "r1")                 # reverted: errors clear
    d.step([("source",)])
    assert d.snapshot().to_dict()["errors"] == [] and len(kernel.scripts) == 1


def test_invalid_at_start_applies_nothing_and_is_not_ready():
    kernel, source = FakeKernel(), FakeSource(None)
    source.result = InvalidInput([InputError("", "/c.yaml", "no such file")])
    notes = []
    d = Daemon(source, Keeper(kernel), DaemonConfig(), Ports(notify=lambda *f: notes.extend(f)))
    d.start_watchers()
    d.refresh(force=True)
    assert kernel.scripts == [] and not d.ready and "READY=1" not in notes
    source.result = (copy.deepcopy(WEBSHOP), "r1")
    d.step([("source",)])
    assert d.ready and "READY=1" in notes


def test_drift_event_triggers_one_full_repair():
    d, kernel, _s, _n, cb = make()
    cb["drift"]("nft[1]: delete table inet secgroup_agent")
    cb["drift"]("nft[1]: delete table inet secgroup_agent")
    d.step(d._wait(block=False))
    assert [w for w, _ in kernel.scripts] == [FULL, "repair"]
    assert d.snapshot().to_dict()["drift_repairs"] == 1


def test_verify_takes_a_reference_then_repairs_a_difference():
    d, kernel, _s, _n, _ = make()
    assert d.keeper.verify() is None and d.keeper.reference == "table 1"
    assert d.keeper.verify() is None                       # generation unchanged: no listing
    kernel.gen += 1
    kernel.table = "tampered"
    d.verify()                                              # shallow: the tables exist
    assert [w for w, _ in kernel.scripts] == [FULL]
    d.verify(deep=True)                                     # listed in the background ...
    assert [w for w, _ in kernel.scripts] == [FULL]
    d.step(d._wait(block=False))                            # ... judged when it is back
    assert [w for w, _ in kernel.scripts] == [FULL, "repair"]
    kernel.gen += 1
    kernel.table = None
    assert d.keeper.verify(deep=False) is not None         # tables gone


def test_lost_notifications_with_foreign_commits_force_a_repair():
    d, kernel, _s, _n, cb = make()
    kernel.gen += 5                                         # someone committed; events lost
    cb["lost"]()
    d.step(d._wait(block=False))                            # a listing is started
    d.step(d._wait(block=False))                            # and judged
    assert [w for w, _ in kernel.scripts] == [FULL, "repair"]


def test_a_listing_overtaken_by_a_commit_proves_nothing():
    d, kernel, _s, _n, _ = make()
    kernel.gen += 1
    kernel.table = "tampered"
    d.ports.background = lambda work: setattr(d, "_work", work)
    d.verify(deep=True)
    kernel.gen += 1                                         # a commit while it lists
    d._work()
    d.step(d._wait(block=False))
    assert [w for w, _ in kernel.scripts] == [FULL] and not d._listing


def test_lost_notifications_of_our_own_commit_cost_no_listing():
    d, kernel, _s, _n, cb = make()
    listed = []
    kernel.listing = lambda tables: listed.append(tables) or kernel.table
    cb["lost"]()                        # our own big commit overflowed the monitor
    d.step(d._wait(block=False))
    assert listed == [] and [w for w, _ in kernel.scripts] == [FULL] and not d.notifications_lost


def test_interface_removal_deletes_its_connections_only():
    d, kernel, _s, _n, cb = make()
    nic = d.keeper.state.local_interfaces["tap-web1"]
    mine = next(a for a in nic.addresses if a.version == 4)
    other = ipaddress.ip_address("192.0.2.9")
    kernel.flows = [Flow(mine, other, 6, 40000, 80), Flow(other, ipaddress.ip_address("198.51.100.1"), 6, 1, 2)]
    cb["link"]("tap-web1", False)
    cb["link"]("not-configured", False)
    d.step(d._wait(block=False))
    assert kernel.deleted == [kernel.flows[0]]
    doc = d.snapshot().to_dict()
    assert doc["conntrack_deleted"] == 1 and doc["interfaces"]["present"] == 0
    cb["link"]("tap-web1", True)
    d.step(d._wait(block=False))
    assert d.snapshot().to_dict()["interfaces"]["present"] == 1


def test_revocation_after_a_narrowing_change():
    d, kernel, source, _n, _ = make()
    web1 = next(a for a in d.keeper.state.local_interfaces["tap-web1"].addresses if a.version == 4)
    kernel.flows = [Flow(ipaddress.ip_address("198.51.100.7"), web1, 6, 40000, 80)]
    doc = copy.deepcopy(WEBSHOP)
    for g in doc["security_groups"]:
        g["rules"] = [r for r in g.get("rules", []) if r.get("port_range") != "80/80"]
    source.result = (doc, "r2")
    d.step([("source",)])
    assert kernel.deleted == kernel.flows


def test_watchdog_is_fed_and_stop_exits_zero():
    d, _k, source, notes, _ = make()
    d.step([])
    assert "WATCHDOG=1" in notes
    assert d.step([("stop",)]) is False
    d.close()
    assert source.closed


def test_run_loop_stops_on_request():
    d, *_ = make()
    d.close()
    threading.Timer(0.2, d.request, args=("stop",)).start()
    assert d.run() == 0


def test_status_socket_round_trip(tmp_path):
    d, *_ = make()
    d.publish()
    path = tmp_path / "s" / "agent.sock"
    server = StatusServer(str(path), d.snapshot).start()
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        doc = query(str(path)).to_dict()
        assert doc["revision"] == "r1" and doc["source"] == "fake:test"
        text = format_status(Status.from_dict(doc))
        assert "revision r1" in text and "errors:      none" in text
    finally:
        server.close()
    assert not path.exists()


def test_metrics_expose_the_status_facts():
    from prometheus_client import generate_latest

    from agent.service.metrics import Metrics
    d, *_ = make()
    d.publish()
    m = Metrics(d.snapshot)
    d.ports.observe_apply = m.observe
    d.keeper.applied = None                      # force a full apply through the hook
    d.refresh(force=True)
    text = generate_latest(m.registry).decode()
    assert 'secgroup_agent_apply_duration_seconds_count{mode="full"} 1.0' in text
    assert "secgroup_agent_ready 1.0" in text and "secgroup_agent_ruleset_rules" in text


def test_sdnotify_datagram_and_watchdog_interval(tmp_path, monkeypatch):
    import os
    import socket

    from agent.service import sdnotify
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.notify("READY=1", "STATUS=enforcing revision r1")
        assert server.recv(100) == b"READY=1\nSTATUS=enforcing revision r1"
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sdnotify.notify("READY=1") is False


def test_nft_monitor_judges_transactions_by_committer():
    import os
    import struct

    from agent.kernel.monitor import NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWGEN, TableWatch

    def attr(kind, value):
        return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)

    def msg(kind, family, *attrs):
        return NFNL_SUBSYS_NFTABLES << 8 | kind, bytes([family, 0, 0, 0]) + b"".join(attrs)

    seen = []
    w = TableWatch.__new__(TableWatch)
    w.tables, w._touched, w._objects = {("inet", "secgroup_agent")}, [], set()
    w.on_foreign = lambda what, objects: seen.append((what, objects))
    newgen = lambda pid: msg(NFT_MSG_NEWGEN, 0, attr(1, struct.pack(">I", 7)), attr(2, struct.pack(">I", pid)),
                             attr(3, b"nft\0"))
    w.handle(*msg(2, 1, attr(1, b"secgroup_agent\0")))          # delete table, by someone else
    w.handle(*newgen(999999))
    w.handle(*msg(2, 1, attr(1, b"secgroup_agent\0")))          # the agent's own transaction
    w.handle(*newgen(os.getpid()))
    w.handle(*msg(0, 1, attr(1, b"other\0")))                   # another table
    w.handle(*newgen(999999))
    w.handle(*msg(8, 1, attr(1, b"secgroup_agent\0"), attr(2, b"in_a\0")))    # a rule of chain in_a
    w.handle(*msg(14, 1, attr(1, b"secgroup_agent\0"), attr(2, b"grp4\0")))   # an element of set grp4
    w.handle(*newgen(999999))
    assert seen == [("nft[999999]: delete table inet secgroup_agent", None),
                    ("nft[999999]: delete rule inet secgroup_agent in_a, delete element inet secgroup_agent grp4",
                     frozenset({("inet", "secgroup_agent", "chain", "in_a"), ("inet", "secgroup_agent", "set", "grp4")}))]


def test_warnings_are_logged_and_shown_in_status(caplog):
    d, kernel, source, _n, _ = make()
    typo = copy.deepcopy(WEBSHOP)
    typo["instances"][0]["interfaces"][0]["adresses"] = ["10.0.9.9"]
    source.result = (typo, "r2")
    d.step([("source",)])
    assert d.revision == "r2"                        # a warning does not stop the apply
    d.settle(time.monotonic())                       # warnings are noted when idle, after the commit
    d.publish()
    path = "instances[0].interfaces[0].adresses"
    expected = f"{path}: unknown field (did you mean addresses?)"
    doc = d.snapshot().to_dict()
    assert doc["warnings"] == [expected] and doc["errors"] == []
    assert f"warnings:    1\n  {expected}\n" in format_status(Status.from_dict(doc))
    assert any(r.levelname == "WARNING" and f"fake:test revision r2: warning: {expected}" in r.getMessage()
               for r in caplog.records)
    strict = copy.deepcopy(typo)
    strict["strict"] = True
    source.result = (strict, "r3")
    d.step([("source",)])
    assert d.revision == "r2" and d.snapshot().to_dict()["errors"] == [expected]
