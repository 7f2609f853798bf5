"""file_cache.TextCache: a changed text parsed only where it changed gives exactly what
the loader's whole parse gives (or the same error), and unchanged items are shared."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import InvalidInput
from agent.model.loader import MAX_DEPTH, parse_document
from agent.sources.file_cache import TextCache, common_prefix, common_suffix

BASE = {"host": "hv-01", "security_groups": [{"id": "g1", "rules": [{"port": 12}]}, {"id": "g2", "rules": []}],
        "instances": [{"id": f"i{n}", "security_groups": ["g1"], "n": n} for n in range(40)], "empty": []}


def outcome(fn, raw: bytes):
    try:
        return "ok", json.dumps(fn(raw, "doc.json"))      # json.dumps: 1 and 1.0 differ
    except InvalidInput as exc:
        return "invalid", [str(e) for e in exc.errors]


def same_as_the_whole_parse(before: bytes, after: bytes) -> TextCache:
    cache = TextCache()
    assert outcome(cache.document, before) == outcome(parse_document, before)
    assert outcome(cache.document, after) == outcome(parse_document, after)
    return cache


def test_a_member_change_parses_one_item_and_shares_the_others():
    cache, doc = TextCache(), json.loads(json.dumps(BASE))
    first = cache.document(json.dumps(doc, indent=1).encode(), "d")
    doc["instances"][7]["security_groups"] = ["g2"]
    second = cache.document(json.dumps(doc, indent=1).encode(), "d")
    assert cache.indexed and second == doc
    kept = [a is b for a, b in zip(first["instances"], second["instances"])]
    assert kept.count(False) == 1 and not kept[7]
    assert all(a is b for a, b in zip(first["security_groups"], second["security_groups"]))


@pytest.mark.parametrize("old, new", [
    ('{"a": [12, 5]}', '{"a": [123, 5]}'),          # a number grows after its text
    ('{"a": [1, 25]}', '{"a": [1, 325]}'),           # ... or before it
    ('{"a": [1, 2]}', '{"a": [1, 2,]}'),             # a comma before ]
    ('{"a": [1, 2]}', '{"a": [1,, 2]}'),
    ('{"a": [1, 2]}', '{"a": [1 2]}'),
    ('{"a": [1, 2]}', '{"a": [, 2]}'),
    ('{"a": [1, 2]}', '{"a": [1, 2, 3]}'),
    ('{"a": [1, 2]}', '{"a": []}'),
    ('{"a": [1, 2]}', '{"a": [2]}'),
    ('{"a": [1, 2]}', '{"a": [1]}'),
    ('{"a": [1, 2]}', '{"a": [1, 2], "a": []}'),     # a top-level key twice
    ('{"a": [{"k": 1}]}', '{"a": [{"k": 1, "k": 2}]}'),   # a key twice in a new item
    ('{"a": [1, 2]}', '{"a": [1, "x\ty"]}'),          # a control character in a string
    ('{"a": [1, 2]}', '{"a": [1, 2]} x'),
    ('{"a": [1, 2]}', '{"a": [1, 2], }'),
    ('{"a": [1, 2]}', '{"a": [1, [2]]}'),
    ('{"a": [1, 2]}', '{"a": [1, 2\u00a0]}'),         # not JSON whitespace
    ('{"a": [1, 2]}', 'a: [1, 2]'),                  # YAML
    ('{"a": [1, 2], "b": 1}', '{"a": [1, 2], "b": 2}'),
    ('{"a": [1, 2]}', '{"a": [1, "\u00e9\u00e9"]}'),
])
def test_edits_give_what_the_whole_parse_gives(old, new):
    same_as_the_whole_parse(old.encode(), new.encode())


def test_too_deep_items_are_refused_as_by_the_whole_parse():
    deep = "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2)
    same_as_the_whole_parse(b'{"a": [1, 2]}', ('{"a": [1, %s]}' % deep).encode())
    deeper = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    same_as_the_whole_parse(b'{"a": [1, 2]}', ('{"a": [1, %s]}' % deeper).encode())


def test_after_an_invalid_text_the_next_one_splices_from_the_last_valid():
    cache = TextCache()
    cache.document(b'{"a": [1, 2, 3]}', "d")
    with pytest.raises(InvalidInput):
        cache.document(b'{"a": [1, 2, 3', "d")
    assert not cache.indexed
    assert cache.document(b'{"a": [1, 7, 3]}', "d") == {"a": [1, 7, 3]} and cache.indexed


@given(st.text("ab", max_size=60), st.text("ab", max_size=60), st.integers(0, 300), st.sampled_from([3, 1 << 16]))
def test_common_prefix_and_suffix(a, b, cut, chunk):
    import agent.sources.file_cache as fc
    saved, fc._CHUNK = fc._CHUNK, chunk            # small chunks: the chunked walk and the search within one
    try:
        check_common_ends(a, b, cut)
    finally:
        fc._CHUNK = saved


def check_common_ends(a: str, b: str, cut: int) -> None:
    p = common_prefix(a, b)
    assert a[:p] == b[:p] and (p == min(len(a), len(b)) or a[p] != b[p])
    limit = min(len(a), len(b), cut)
    s = common_suffix(a, b, limit)
    assert s <= limit and a[len(a) - s:] == b[len(b) - s:] and (s == limit or a[len(a) - s - 1] != b[len(b) - s - 1])


PIECES = st.sampled_from(['', ',', ' ', '\n', '[', ']', '{', '}', '"', ':', '1', '0', '.5', 'e', '-', '"x"',
                          '{"id": "z"}', '"id"', 'null', 'true', '\\', '\t', ', {"k": 1}', '"k": 2', '['])


@settings(max_examples=400)
@given(st.data())
def test_random_edits_give_what_the_whole_parse_gives(data):
    text = json.dumps(BASE, indent=data.draw(st.sampled_from([None, 1, 2])))
    cache = TextCache()
    assert outcome(cache.document, text.encode()) == outcome(parse_document, text.encode())
    for _ in range(data.draw(st.integers(1, 4))):        # edits in a row, each against the one before
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 12))
        text = text[:at] + data.draw(PIECES) + text[at + cut:]
        assert outcome(cache.document, text.encode()) == outcome(parse_document, text.encode())
