"""The etcd source's DocumentCache: each document equals keys_document() of the same keys,
a revision that changes some values re-parses only those, and the shared objects let
validate_update(..., shared=True) reach validate_document's state."""
from __future__ import annotations

import copy

import pytest

from agent.model.validate import validate_document
from agent.model.validate_incremental import validate_update
from agent.sources import SourceError
from agent.sources.etcd_layout import DocumentCache, canonical, document_keys, keys_document

DOC = {
    "host": "hv-01",
    "security_groups": [
        {"id": "sg-db", "rules": [{"id": "pg", "direction": "ingress", "protocol": "tcp",
                                   "port_range": "5432/5432", "source_group": "sg-web"}]},
        {"id": "sg-web", "rules": []}],
    "instances": [
        {"id": f"i-{n:02d}", "host": "hv-01" if n < 2 else "hv-02",
         "security_groups": ["sg-db" if n % 2 else "sg-web"],
         "interfaces": [{"name": f"tap{n}", "addresses": [f"10.0.0.{n + 10}"]}]} for n in range(12)],
}


def _joined(kvs: dict, n: int, group: str) -> dict:
    inst = copy.deepcopy(DOC["instances"][n])
    inst["security_groups"] = [group]
    return {**kvs, f"/p/instances/i-{n:02d}": canonical(inst)}


def test_a_changed_value_is_parsed_alone_and_the_rest_is_shared():
    cache, kvs = DocumentCache(), document_keys(DOC, "/p")
    first = cache.document(kvs, "/p", "etcd://x:1/p")
    assert first == keys_document(kvs, "/p", "etcd://x:1/p")
    changed = _joined(kvs, 3, "sg-web")
    second = cache.document(changed, "/p", "etcd://x:1/p")
    assert second == keys_document(changed, "/p", "etcd://x:1/p")
    same = [a is b for a, b in zip(first["instances"], second["instances"])]
    assert same == [n != 3 for n in range(12)]
    assert first["instances"][3]["security_groups"] == ["sg-db"]     # the old document is intact
    assert all(a is b for a, b in zip(first["security_groups"], second["security_groups"]))


def test_keys_coming_and_going_and_bad_values():
    cache, kvs = DocumentCache(), document_keys(DOC, "/p")
    cache.document(kvs, "/p", "s")
    fewer = {k: v for k, v in kvs.items() if k != "/p/instances/i-05"}
    assert cache.document(fewer, "/p", "s") == keys_document(fewer, "/p", "s")
    bad = {**kvs, "/p/instances/i-04": b"{not json"}
    with pytest.raises(SourceError, match="i-04"):
        cache.document(bad, "/p", "s")
    with pytest.raises(SourceError, match="i-04"):            # not cached: reported again
        cache.document(bad, "/p", "s")
    wrong_id = {**kvs, "/p/instances/i-04": b'{"id": "i-99"}'}
    with pytest.raises(SourceError, match="does not match the key"):
        cache.document(wrong_id, "/p", "s")
    assert cache.document(kvs, "/p", "s") == keys_document(kvs, "/p", "s")


def test_shared_documents_validate_incrementally_to_the_full_state():
    cache, kvs = DocumentCache(), document_keys(DOC, "/p")
    validated = validate_update(cache.document(kvs, "/p", "s"), None, None, shared=True)
    for n, group in ((3, "sg-web"), (7, "sg-web"), (3, "sg-db"), (10, "sg-db")):
        kvs = _joined(kvs, n, group)
        doc = cache.document(kvs, "/p", "s")
        validated = validate_update(doc, None, validated, shared=True)
        assert validated.mode == "incremental"
        assert validated.state == validate_document(doc, None)


def test_the_incremental_state_hash_is_state_hash():
    from agent.service.records import StateHasher, state_hash
    cache, kvs, hasher = DocumentCache(), document_keys(DOC, "/p"), StateHasher()
    for n, group in ((None, None), (3, "sg-web"), (7, "sg-web"), (3, "sg-db")):
        if n is not None:
            kvs = _joined(kvs, n, group)
        doc = cache.document(kvs, "/p", "s")
        assert hasher(doc) == state_hash(doc)
    assert hasher({1: "x"}) == state_hash({1: "x"})
