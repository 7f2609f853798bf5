"""The etcd source and `publish` against a real etcd process on 127.0.0.1 (Debian's
etcd-server), started in a temporary directory on free ports and always stopped."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from agent.errors import InvalidInput
from agent.distribution.publish import publish
from agent.sources import SourceError, open_source
from agent.sources.client import Backoff, ClientOptions
from agent.sources.etcd import EtcdSource
from agent.sources.etcd_gateway import EtcdGateway, b64
from agent.sources.etcd_layout import document_keys, keys_document, parse_etcd_spec
from agent.model.validate import validate_document
from source_helpers import ETCD, ROOT, Etcd, Recorder, make_pki, wait_for

pytestmark = pytest.mark.skipif(ETCD is None, reason="etcd is not installed (Debian etcd-server)")

DOC = {
    "prefix_lists": [{"id": "pl-office", "entries": ["203.0.113.0/24"]}],
    "security_groups": [
        {"id": "sg-db", "rules": [{"id": "pg", "direction": "ingress", "protocol": "tcp",
                                   "port_range": "5432/5432", "source_group": "sg-web"}]},
        {"id": "sg-web", "rules": [{"id": "ssh", "direction": "ingress", "protocol": "tcp",
                                    "port_range": "22/22", "source_prefix_list": "pl-office"}]}],
    "instances": [
        {"id": "i-db", "host": "hv-02", "security_groups": ["sg-db"],
         "interfaces": [{"name": "tap-db", "addresses": ["10.0.0.9"]}]},
        {"id": "i-web", "host": "hv-01", "security_groups": ["sg-web"],
         "interfaces": [{"name": "tap-web", "addresses": ["10.0.0.5"]}]}],
}


@pytest.fixture(scope="module")
def etcd():
    server = Etcd().start()
    yield server
    server.destroy()


@pytest.fixture
def spec(etcd, request):
    """A fresh prefix per test on the shared etcd."""
    return f"etcd://{etcd.endpoint}/t-{request.node.name.replace('[', '-').strip(']')}"


@pytest.fixture
def sources():
    opened = []

    def make(spec: str, **options) -> EtcdSource:
        src = open_source(spec, **options)
        src.backoff = Backoff(initial=0.05, maximum=0.3)
        opened.append(src)
        return src
    yield make
    for src in opened:
        src.close()


def joined(doc: dict, address: str) -> dict:
    """`doc` with one more address on i-web (a membership change of sg-web)."""
    new = json.loads(json.dumps(doc))
    new["instances"][1]["interfaces"][0]["addresses"].append(address)
    return new


def put(tmp_path: Path, spec: str, doc: dict, name: str = "state.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return publish(path, spec, parse_etcd_spec(spec))


def raw(spec: str) -> EtcdGateway:
    return EtcdGateway(list(parse_etcd_spec(spec).endpoints), ClientOptions(spec))


def raw_put(spec: str, key: str, value: bytes) -> None:
    gw = raw(spec)
    try:
        gw.txn([], [{"request_put": {"key": b64(parse_etcd_spec(spec).prefix + key), "value": b64(value)}}])
    finally:
        gw.close()


def read_all(spec: str):
    gw = raw(spec)
    try:
        return gw.range_prefix(parse_etcd_spec(spec).key_prefix)
    finally:
        gw.close()


# -- publish ----------------------------------------------------------------------------------
def test_publish_writes_one_key_per_object_in_one_transaction(tmp_path, spec):
    before = read_all(spec).revision
    report = put(tmp_path, spec, DOC)
    assert (report.written, report.deleted, report.kept) == (6, 0, 0)
    snap = read_all(spec)
    assert snap.revision == report.revision == before + 1         # one transaction
    prefix = parse_etcd_spec(spec).prefix
    assert sorted(k.removeprefix(prefix) for k in snap.kvs) == [
        "/groups/sg-db", "/groups/sg-web", "/instances/i-db", "/instances/i-web", "/meta",
        "/prefix_lists/pl-office"]
    assert json.loads(snap.kvs[f"{prefix}/groups/sg-web"]) == DOC["security_groups"][1]


def test_publish_is_idempotent_and_deletes_what_is_gone(tmp_path, spec):
    first = put(tmp_path, spec, DOC)
    again = put(tmp_path, spec, DOC)
    assert (again.written, again.deleted, again.kept) == (0, 0, 6)
    assert again.revision == first.revision == read_all(spec).revision   # nothing written
    smaller = json.loads(json.dumps(DOC))
    del smaller["instances"][0]
    smaller["security_groups"][0]["rules"] = []
    report = put(tmp_path, spec, smaller)
    assert (report.written, report.deleted) == (1, 1)
    assert report.revision == first.revision + 1
    assert not any(k.endswith("/instances/i-db") for k in read_all(spec).kvs)


def test_publish_rejects_an_invalid_document_and_writes_nothing(tmp_path, spec):
    bad = json.loads(json.dumps(DOC))
    bad["instances"][1]["security_groups"] = ["sg-missing"]
    with pytest.raises(InvalidInput, match="sg-missing"):
        put(tmp_path, spec, bad)
    assert read_all(spec).kvs == {}


def test_publish_command(tmp_path, spec, etcd):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(DOC))
    bad.write_text("security_groups: [{id: sg-a, rules: [{direction: sideways}]}]\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "agent.cli.main", "publish", *a],  # noqa: E731
                                    cwd=ROOT, capture_output=True, text=True, timeout=30)
    out = run("-c", str(good), "--to", spec)
    assert out.returncode == 0 and "published at revision" in out.stdout, out.stderr
    out = run("-c", str(good), "--to", spec)
    assert out.returncode == 0 and "unchanged (6 keys" in out.stdout
    out = run("-c", str(bad), "--to", spec)
    assert out.returncode == 2 and "security_groups[0]" in out.stderr
    out = run("-c", str(good), "--to", "etcd://127.0.0.1:1/x")
    assert out.returncode == 1 and "unreachable" in out.stderr
    out = run("-c", str(good), "--to", f"etcd://{etcd.endpoint}")
    assert out.returncode == 2 and "PREFIX" in out.stderr
    assert "Traceback" not in out.stderr


# -- reading and watching -----------------------------------------------------------------------
def test_fetch_returns_the_document_and_the_store_revision(tmp_path, spec, sources):
    report = put(tmp_path, spec, DOC)
    src = sources(spec)
    data, revision = src.fetch()
    assert data == DOC and revision == str(report.revision) and src.name == spec
    validate_document(data, "hv-01")


def test_an_empty_prefix_or_a_bad_spec_is_a_source_error(spec, sources):
    with pytest.raises(SourceError, match="no document"):
        sources(spec).fetch()
    for bad in ("etcd://127.0.0.1:2379", "etcd:///x", "etcd://host:port/x"):
        with pytest.raises(SourceError, match="expected etcd://"):
            open_source(bad)


def test_unreachable_etcd_is_a_source_error():
    src = open_source("etcd://127.0.0.1:1/sg")
    try:
        with pytest.raises(SourceError, match="unreachable"):
            src.fetch()
    finally:
        src.close()


def test_watch_reports_each_publish_once_and_fast(tmp_path, spec, sources):
    put(tmp_path, spec, DOC)
    src = sources(spec)
    src.fetch()
    rec = Recorder()
    src.start(rec)
    assert src.watching.wait(5)
    time.sleep(0.2)
    assert rec.calls == 0                        # what fetch() returned is no news
    latencies = []
    for n in range(5):
        doc = joined(DOC, f"10.0.0.{20 + n}")
        doc["security_groups"][0]["rules"][0]["port_range"] = f"{5432 + n}/{5432 + n}"  # 2 keys
        began = time.monotonic()
        put(tmp_path, spec, doc)
        assert rec.wait(n + 1, 5)
        latencies.append(rec.times[n] - began)
        assert src.fetch()[0] == doc
    time.sleep(0.2)
    assert rec.calls == 5                        # one call per transaction
    print(f"publish-to-on_change latencies (ms): {[round(x * 1000) for x in latencies]}")
    assert sorted(latencies)[2] < 0.2


def test_fetch_answers_from_the_watched_copy(tmp_path, spec, sources):
    put(tmp_path, spec, DOC)
    src = sources(spec)
    src.start(Recorder())
    assert src.watching.wait(5)
    src._gw.post = lambda *a, **k: pytest.fail("fetch() made a request while in sync")
    assert src.fetch()[0] == DOC


def test_compacted_revision_forces_a_full_reread(tmp_path, spec, sources):
    put(tmp_path, spec, DOC)
    src = sources(spec)
    _, old = src.fetch()                       # the watch will resume from old + 1 ...
    for n in range(3):
        last = put(tmp_path, spec, joined(DOC, f"10.0.1.{n}"))
    gw = raw(spec)
    try:
        gw.compact(last.revision)              # ... which is compacted away
    finally:
        gw.close()
    rec = Recorder()
    src.start(rec)
    assert rec.wait(1, 5) and src.watching.wait(5)
    assert src.resyncs == 1
    assert src.fetch() == (joined(DOC, "10.0.1.2"), str(last.revision))
    put(tmp_path, spec, DOC)                   # and the new watch works
    assert wait_for(lambda: src.fetch()[0] == DOC, 5)


def test_etcd_restart_is_reported_then_resynced(tmp_path, sources):
    server = Etcd().start()
    try:
        spec = f"etcd://{server.endpoint}/sg"
        put(tmp_path, spec, DOC)
        src = sources(spec)
        rec = Recorder()
        src.start(rec)
        assert src.watching.wait(5)
        calls = rec.calls
        server.stop()
        assert rec.wait(calls + 1, 5)            # the loss is news: fetch() now fails
        with pytest.raises(SourceError):
            src.fetch()
        server.start()
        report = put(tmp_path, spec, joined(DOC, "10.0.0.99"))
        assert wait_for(lambda: _revision(src) == str(report.revision), 10)
        assert src.fetch()[0] == joined(DOC, "10.0.0.99") and src.resyncs >= 1
    finally:
        server.destroy()


def _revision(src) -> str:
    try:
        return src.fetch()[1]
    except SourceError:
        return ""


# -- bad data -------------------------------------------------------------------------------------
def test_bad_values_are_a_source_error_naming_the_key_then_recover(tmp_path, spec, sources):
    put(tmp_path, spec, DOC)
    src = sources(spec)
    rec = Recorder()
    src.start(rec)
    assert src.watching.wait(5)
    calls = rec.calls
    raw_put(spec, "/instances/i-web", b"{not json")
    raw_put(spec, "/groups/sg-db", b'{"id": "sg-other"}')
    assert rec.wait(calls + 2, 5)
    with pytest.raises(SourceError) as err:
        src.fetch()
    assert "instances/i-web: malformed JSON" in str(err.value)
    assert "groups/sg-db: id \"sg-other\" does not match the key" in str(err.value)
    put(tmp_path, spec, DOC)                     # publish repairs both keys
    assert wait_for(lambda: _revision(src) != "", 5) and src.fetch()[0] == DOC


def test_data_failing_validation_is_returned_for_the_daemon_to_reject(tmp_path, spec, sources):
    put(tmp_path, spec, DOC)
    raw_put(spec, "/instances/i-x", b'{"security_groups": ["sg-nope"], "interfaces": []}')
    data, _ = sources(spec).fetch()               # a source never validates
    with pytest.raises(InvalidInput, match="sg-nope"):
        validate_document(data, "hv-01")


@pytest.mark.parametrize("kvs, message", [
    ({"/p/meta": b"[]"}, "must be a JSON object"),
    ({"/p/meta": b'{"instances": []}'}, "must not hold instances"),
    ({"/p/meta": b"{}", "/p/instances/i-1": b"\xff"}, "malformed JSON"),
    ({"/p/groups/sg": b"{}"}, "/p/meta is missing"),
])
def test_layout_rejects_bad_keys(kvs, message):
    with pytest.raises(SourceError, match=message):
        keys_document(kvs, "/p", "etcd://x:1/p")


def test_layout_round_trip_ignores_unknown_keys():
    kvs = document_keys({**DOC, "host": "hv-01"}, "/p")
    kvs["/p/notes/readme"] = b"hello"
    assert keys_document(kvs, "/p", "etcd://x:1/p") == {**DOC, "host": "hv-01"}


def test_close_interrupts_the_watch(tmp_path, spec):
    put(tmp_path, spec, DOC)
    src = open_source(spec)
    src.start(Recorder())
    assert src.watching.wait(5)
    began = time.monotonic()
    src.close()
    assert time.monotonic() - began < 1


def test_a_transaction_over_etcds_limit_says_how_to_raise_it(tmp_path, spec):
    big = {"security_groups": [{"id": "sg-a", "rules": []}],
           "instances": [{"id": f"i-{n}", "security_groups": ["sg-a"],
                          "interfaces": [{"name": f"tap-{n}", "addresses": [f"10.1.{n}.5"]}]}
                         for n in range(130)]}            # 132 keys > etcd's default 128
    with pytest.raises(SourceError, match="--max-txn-ops"):
        put(tmp_path, spec, big)
    assert read_all(spec).kvs == {}


def test_etcd_with_client_certificates(tmp_path, sources):
    pki = make_pki(tmp_path)
    server = Etcd(pki=pki).start()
    try:
        spec = f"etcd://{server.endpoint}/sg"
        tls = {"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key}
        path = tmp_path / "state.yaml"
        path.write_text(yaml.safe_dump(DOC))
        assert publish(path, spec, parse_etcd_spec(spec), **tls).written == 6
        src = sources(spec, **tls)
        assert src.fetch()[0] == DOC
        rec = Recorder()
        src.start(rec)
        assert src.watching.wait(5)
        path.write_text(yaml.safe_dump(joined(DOC, "10.0.0.77")))
        publish(path, spec, parse_etcd_spec(spec), **tls)
        assert rec.wait(1, 5) and src.fetch()[0] == joined(DOC, "10.0.0.77")
        with pytest.raises(SourceError):                       # no client certificate
            sources(spec, ca_file=pki.ca).fetch()
        with pytest.raises(SourceError, match="certificate verify failed"):
            sources(spec, **{**tls, "ca_file": pki.other_ca}).fetch()
    finally:
        server.destroy()
