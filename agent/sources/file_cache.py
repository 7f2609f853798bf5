"""The file source's document, parsed again only where the text changed.

A member joining a group anywhere in the fleet changes a few bytes of a 1.7 MB file
(10,000 remote members); parsing it whole costs 40-120 ms in the daemon's loop, and the
fresh items then have to be compared with the previous ones (`==`, ~6 ms) and hashed
again. `TextCache` keeps the last document's text, its parsed data and, for each
top-level list (`instances`, `security_groups`, ...), where each item's text starts and
ends. A new text is compared with the last one (common prefix and suffix, C-speed slice
comparisons); when what changed lies inside one top-level list, only the items it
touches are parsed (by the decoder a whole parse uses, `loader.json_scanner`) and the
others are the previous document's very objects: the source declares `shares_items`, so
the daemon's validation and state hash skip them by identity (as for etcd). Nothing
mutates them.

Exact or nothing: the new items' text must be what a list holds between the kept items
(commas, JSON whitespace), within its bounds, with no key given twice and not nested too
deep; an item is kept only when an unchanged character separates it from the change (a
number `12` followed by an inserted `3` is re-parsed). Anything else - the first read, a
YAML file, a change outside the lists, a malformed or unusual text - is the loader's whole
parse (`parse_document`: its errors, its limits), which is then indexed again.
"""
from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any, Callable, Optional

from agent.model.loader import document_text, json_scanner, parse_document, too_deep

_WS: Callable[[str, int], "re.Match[str]"] = re.compile(r"[ \t\n\r]*").match   # type: ignore[assignment]
# ^ JSON's whitespace (json.decoder.WHITESPACE): always matches, possibly nothing
_CHUNK = 1 << 16
Scan = Callable[[str, int], tuple[Any, int]]


@dataclass(frozen=True)
class _Span:
    """A top-level value's text [start, end); for a list, each item's [starts[i], ends[i])."""
    start: int
    end: int
    starts: Optional[list[int]] = None
    ends: Optional[list[int]] = None

    def shifted(self, delta: int) -> "_Span":
        if self.starts is None or self.ends is None:
            return _Span(self.start + delta, self.end + delta)
        return _Span(self.start + delta, self.end + delta, [x + delta for x in self.starts], [x + delta for x in self.ends])


class _Bad(Exception):
    """Not the easy case: parse the text whole."""


def common_prefix(a: str, b: str) -> int:
    n, i = min(len(a), len(b)), 0
    while i < n and a[i:i + _CHUNK] == b[i:i + _CHUNK]:
        i += _CHUNK
    lo, hi = min(i, n), min(n, i + _CHUNK)       # a[:lo] == b[:lo]; they differ before hi (or hi == n)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def common_suffix(a: str, b: str, limit: int) -> int:
    """The length of the common end of a and b, at most `limit`."""
    la, lb, n = len(a), len(b), 0
    while n < limit and a[la - min(limit, n + _CHUNK):la - n] == b[lb - min(limit, n + _CHUNK):lb - n]:
        n = min(limit, n + _CHUNK)
    lo, hi = n, min(limit, n + _CHUNK)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[la - mid:la - lo] == b[lb - mid:lb - lo]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class TextCache:
    """document(raw, name) -> the parsed document, as parse_document(raw, name) gives it."""

    def __init__(self) -> None:
        self._text: Optional[str] = None
        self._data: Optional[dict] = None
        self._spans: dict[str, _Span] = {}
        self.indexed = False            # the last document came from the index (items shared)

    def document(self, raw: bytes, name: str) -> dict:
        text = document_text(raw, name)             # the size limit, UTF-8
        data = None
        if self._text is not None and self._data is not None:
            data = self._data if text == self._text else self._spliced(text)
        if data is None:
            data = self._indexed(text)
        if data is None:                            # the errors, YAML, anything unusual
            self.indexed = False                    # (the last indexed text stays, to splice from)
            return parse_document(raw, name)
        self._text, self._data, self.indexed = text, data, True
        return data

    def _indexed(self, text: str) -> Optional[dict]:
        try:
            data, self._spans = _scan_document(text)
        except (_Bad, ValueError, StopIteration, RecursionError):
            return None
        return data

    def _spliced(self, text: str) -> Optional[dict]:
        old, data = self._text, self._data
        assert old is not None and data is not None
        p = common_prefix(old, text)
        s = common_suffix(old, text, min(len(old), len(text)) - p)
        q, delta = len(old) - s, len(text) - len(old)
        hit = [k for k, span in self._spans.items() if span.starts is not None and span.start < p and q < span.end]
        if not hit:
            return None
        key, span = hit[0], self._spans[hit[0]]
        try:
            items, spans = _splice(text, span, p, q, delta, data[key])
        except (_Bad, ValueError, StopIteration, RecursionError):
            return None
        self._spans = {k: spans if k == key else (v.shifted(delta) if v.start > span.start else v)
                       for k, v in self._spans.items()}
        return {k: items if k == key else v for k, v in data.items()}


def _splice(text: str, span: _Span, p: int, q: int, delta: int, old: list) -> tuple[list, _Span]:
    """The list whose old text `span` holds the change [p, q) (old offsets), in the new
    text: the items before and after kept, those in between parsed."""
    assert span.starts is not None and span.ends is not None
    starts, ends = span.starts, span.ends
    a = bisect_left(ends, p)                 # items [0, a) end before p: unchanged, and so is what follows them
    b = bisect_right(starts, q)              # items [b, n) start after q
    lo = ends[a - 1] if a else span.start + 1
    hi = starts[b] + delta if b < len(starts) else span.end - 1 + delta
    scan, repeated = json_scanner()
    new, new_starts, new_ends = _middle(text, lo, hi, a > 0, b < len(starts), scan)
    if repeated or any(too_deep(text[x:y], 2) for x, y in zip(new_starts, new_ends)):
        raise _Bad("a key given twice or nested too deep: the whole parse says where")
    items = old[:a] + new + old[b:]
    return items, _Span(span.start, span.end + delta, starts[:a] + new_starts + [x + delta for x in starts[b:]],
                        ends[:a] + new_ends + [x + delta for x in ends[b:]])


def _middle(text: str, lo: int, hi: int, lead: bool, trail: bool, scan: Scan) -> tuple[list, list[int], list[int]]:
    """The items in text[lo:hi]: what a list holds after a kept item (lead: from a comma
    on) and before one (trail: up to a comma), or from `[` / up to `]`."""
    items: list = []
    starts: list[int] = []
    ends: list[int] = []
    pos = _WS(text, lo).end()
    if lead:
        if pos == hi and not trail:
            return items, starts, ends           # `x ]`: the items after x removed
        if text[pos] != ",":
            raise _Bad("no comma after the kept item")
        pos = _WS(text, pos + 1).end()
        if pos == hi and trail:
            return items, starts, ends           # `x , y`
    elif pos == hi:
        return items, starts, ends               # `[ y` or `[ ]`
    while True:
        value, end = scan(text, pos)
        if end > hi:
            raise _Bad("an item runs past the kept ones")
        items.append(value)
        starts.append(pos)
        ends.append(end)
        pos = _WS(text, end).end()
        if pos == hi:
            if trail:
                raise _Bad("no comma before the kept item")
            return items, starts, ends
        if text[pos] != ",":
            raise _Bad("no comma between items")
        pos = _WS(text, pos + 1).end()
        if pos == hi:
            if not trail:
                raise _Bad("a comma before ]")
            return items, starts, ends


def _scan_document(text: str) -> tuple[dict, dict[str, _Span]]:
    """A JSON object's data and the spans of its values (and of the items of its lists),
    or _Bad (or the scanner's exceptions) when the text is not exactly that."""
    scan, repeated = json_scanner()
    pos = _WS(text, 0).end()
    if text[pos:pos + 1] != "{":
        raise _Bad("not a JSON object")
    data: dict = {}
    spans: dict[str, _Span] = {}
    pos = _WS(text, pos + 1).end()
    more = text[pos:pos + 1] != "}"
    while more:
        if text[pos:pos + 1] != '"':
            raise _Bad("no key")
        key, pos = scan(text, pos)
        pos = _WS(text, pos).end()
        if key in data or text[pos:pos + 1] != ":":
            raise _Bad("a key twice, or no colon")
        start = pos = _WS(text, pos + 1).end()
        if text[pos:pos + 1] == "[":
            value, starts, ends, pos = _list(text, pos, scan)
            spans[key] = _Span(start, pos, starts, ends)
        else:
            value, pos = scan(text, pos)
            spans[key] = _Span(start, pos)
        data[key] = value
        pos = _WS(text, pos).end()
        more = text[pos:pos + 1] == ","
        if more:
            pos = _WS(text, pos + 1).end()
    if text[pos:pos + 1] != "}" or _WS(text, pos + 1).end() != len(text) or repeated or too_deep(text, 0):
        raise _Bad("not one JSON object, or a key twice, or too deep")
    return data, spans


def _list(text: str, pos: int, scan: Scan) -> tuple[list, list[int], list[int], int]:
    """The list at `pos` (its `[`): items, their starts and ends, the index after its `]`."""
    items: list = []
    starts: list[int] = []
    ends: list[int] = []
    pos = _WS(text, pos + 1).end()
    if text[pos:pos + 1] == "]":
        return items, starts, ends, pos + 1
    while True:
        value, end = scan(text, pos)
        items.append(value)
        starts.append(pos)
        ends.append(end)
        pos = _WS(text, end).end()
        if text[pos:pos + 1] == "]":
            return items, starts, ends, pos + 1
        if text[pos:pos + 1] != ",":
            raise _Bad("no comma between items")
        pos = _WS(text, pos + 1).end()
