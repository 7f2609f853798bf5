"""The HTTP source against the reference server, a real process on 127.0.0.1."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from agent.sources import SourceError, open_source
from agent.sources.client import Backoff
from agent.sources.http import HttpSource
from agent.model.validate import validate_document
from source_helpers import HttpServer, Recorder, make_pki, wait_for

DOC = {
    "security_groups": [{"id": "sg-web", "rules": [
        {"id": "http", "direction": "ingress", "protocol": "tcp", "port_range": "80/80",
         "source_cidr": "0.0.0.0/0"}]}],
    "instances": [{"id": "i-1", "host": "hv-01", "security_groups": ["sg-web"],
                   "interfaces": [{"name": "tap-i1", "addresses": ["10.0.0.5"]}]}],
}


def write(path: Path, data: dict, as_yaml: bool = False) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(data) if as_yaml else json.dumps(data))
    os.replace(tmp, path)                   # atomic, as an operator's deploy tool would


def with_member(doc: dict, address: str) -> dict:
    new = json.loads(json.dumps(doc))
    new["instances"][0]["interfaces"][0]["addresses"].append(address)
    return new


@pytest.fixture
def served(tmp_path):
    """(server, file) for a JSON document; the server process is stopped afterwards."""
    path = tmp_path / "state.json"
    write(path, DOC)
    server = HttpServer(path, ["--wait-timeout", "2"]).start()
    yield server, path
    server.stop()


@pytest.fixture
def source_of():
    opened = []

    def make(url: str, **options) -> HttpSource:
        src = open_source(url, **options)
        opened.append(src)
        return src
    yield make
    for src in opened:
        src.close()


def test_fetch_returns_the_document_and_its_revision(served, source_of):
    server, _ = served
    src = source_of(server.url)
    data, revision = src.fetch()
    assert data == DOC and revision
    assert src.name == server.url
    validate_document(data, "hv-01")           # what the daemon does with it


def test_yaml_body(tmp_path, source_of):
    path = tmp_path / "state.yaml"
    write(path, DOC, as_yaml=True)
    server = HttpServer(path).start()
    try:
        data, _ = source_of(server.url).fetch()
    finally:
        server.stop()
    assert data == DOC


def test_unchanged_document_is_a_304_and_the_same_data(served, source_of):
    server, path = served
    src = source_of(server.url)
    first = src.fetch()
    assert src.fetch() == first
    assert src.stats["not_modified"] == 1
    write(path, with_member(DOC, "10.0.0.6"))
    assert wait_for(lambda: src.fetch()[1] != first[1], 2)
    assert src.fetch()[0] == with_member(DOC, "10.0.0.6")


def test_long_poll_wakes_within_100ms_of_a_change(served, source_of):
    server, path = served
    src = source_of(server.url)
    src.fetch()
    rec = Recorder()
    src.start(rec)
    time.sleep(0.3)                            # the long-poll is now held by the server
    assert rec.calls == 0
    latencies = []
    for n in range(5):
        before = rec.calls
        changed_at = time.monotonic()
        write(path, with_member(DOC, f"10.0.0.{10 + n}"))
        assert rec.wait(before + 1, 5)
        latencies.append(rec.times[before] - changed_at)
        assert f"10.0.0.{10 + n}" in json.dumps(src.fetch()[0])
    print(f"long-poll wake-up latencies (ms): {[round(x * 1000) for x in latencies]}")
    # ~100 ms on a quiet machine (typically 2-15 ms); the median keeps it honest on a busy one
    assert sorted(latencies)[2] < 0.1 and max(latencies) < 1.0, latencies
    assert src.stats["errors"] == 0


def test_long_poll_timeout_is_a_quiet_304(served, source_of):
    server, _ = served                           # the server holds a wait for 2 s
    src = source_of(server.url)
    src.fetch()
    rec = Recorder()
    src.start(rec)
    time.sleep(4.5)
    assert rec.calls == 0 and src.stats["not_modified"] >= 2 and src.stats["errors"] == 0


def test_server_down_is_a_source_error_and_recovery_follows(served, source_of):
    server, path = served
    src = source_of(server.url)
    src.backoff = Backoff(initial=0.05, maximum=0.2)
    data, _ = src.fetch()
    rec = Recorder()
    src.start(rec)
    server.stop()
    with pytest.raises(SourceError, match="127.0.0.1"):
        src.fetch()
    assert rec.wait(1, 5)                       # the watcher reported the failure
    write(path, with_member(DOC, "10.0.0.7"))
    server.start()                              # same port
    assert rec.wait(2, 5)                       # ... and the recovery
    assert src.fetch()[0] == with_member(DOC, "10.0.0.7")


def test_unreachable_from_the_start(source_of):
    src = source_of("http://127.0.0.1:9/state", connect_timeout=1)
    with pytest.raises(SourceError, match="127.0.0.1:9"):
        src.fetch()


@pytest.mark.parametrize("body, message", [
    ("{not json", "malformed JSON"),
    ("", "empty document"),
])
def test_bad_body_is_a_source_error(tmp_path, source_of, body, message):
    path = tmp_path / "state.json"
    path.write_text(body)
    server = HttpServer(path).start()
    try:
        with pytest.raises(SourceError, match=message):
            source_of(server.url).fetch()
    finally:
        server.stop()


def test_missing_file_is_a_source_error_then_recovers(tmp_path, source_of):
    path = tmp_path / "state.json"
    server = HttpServer(path).start()
    try:
        src = source_of(server.url)
        with pytest.raises(SourceError, match="503"):
            src.fetch()
        write(path, DOC)
        assert wait_for(lambda: _fetch_ok(src), 2)
    finally:
        server.stop()


def _fetch_ok(src) -> bool:
    try:
        src.fetch()
        return True
    except SourceError:
        return False


def test_tls_with_a_required_client_certificate(tmp_path, source_of):
    pki = make_pki(tmp_path)
    path = tmp_path / "state.json"
    write(path, DOC)
    server = HttpServer(path, ["--cert", str(pki.server_cert), "--key", str(pki.server_key),
                               "--client-ca", str(pki.ca)]).start()
    try:
        assert server.url.startswith("https://")
        good = source_of(server.url, ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
        assert good.fetch()[0] == DOC
        with pytest.raises(SourceError):                            # no client certificate
            source_of(server.url, ca_file=pki.ca).fetch()
        with pytest.raises(SourceError, match="certificate verify failed"):   # wrong CA
            source_of(server.url, ca_file=pki.other_ca, cert_file=pki.client_cert,
                      key_file=pki.client_key).fetch()
    finally:
        server.stop()


def test_unreadable_tls_files_are_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="cannot load TLS files"):
        open_source("https://127.0.0.1:1/", ca_file=tmp_path / "missing.pem")


def test_bearer_token_is_sent_and_reread(tmp_path, source_of):
    path = tmp_path / "state.json"
    write(path, DOC)
    server_token, agent_token = tmp_path / "server-token", tmp_path / "agent-token"
    server_token.write_text("s3cret\n")
    agent_token.write_text("s3cret\n")
    server = HttpServer(path, ["--token-file", str(server_token)]).start()
    try:
        with pytest.raises(SourceError, match="401"):
            source_of(server.url).fetch()
        src = source_of(server.url, token_file=agent_token)
        assert src.fetch()[0] == DOC
        server_token.write_text("rotated")            # rotated on both sides, in place
        with pytest.raises(SourceError, match="401"):
            src.fetch()
        agent_token.write_text("rotated")
        assert src.fetch()[0] == DOC
        agent_token.unlink()
        with pytest.raises(SourceError, match="token_file"):
            src.fetch()
    finally:
        server.stop()


def test_backoff_is_bounded_and_jittered():
    b = Backoff(initial=0.1, maximum=2.0)
    delays = [b.delay(n) for n in range(40)]
    assert all(0.05 <= d <= 2.0 for d in delays)
    assert max(delays[10:]) <= 2.0 and min(delays[10:]) >= 1.0
    assert len({round(d, 6) for d in delays}) > 30          # jitter: not in lockstep


def test_close_interrupts_a_held_long_poll(served, source_of):
    server, _ = served
    src = HttpSource(server.url, wait_timeout=30)
    src.fetch()
    src.start(Recorder())
    time.sleep(0.3)
    began = time.monotonic()
    src.close()
    assert time.monotonic() - began < 1
