"""agent.model.loader: the depth limit of JSON documents, read from the text, is exactly
the nesting of the parsed data (MAX_DEPTH levels pass, one more is refused), whatever
brackets, quotes and backslashes the strings hold."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import InvalidInput
from agent.model.loader import MAX_DEPTH, parse_json

TRICKY = ["[", "]", "{", "}", '"', "\\", '\\"', "\\\\", '"[', "]}\\", "\u00e9[", "a\nb"]


def depth(data) -> int:
    if isinstance(data, dict):
        return 1 + max((depth(v) for v in data.values()), default=0)
    if isinstance(data, list):
        return 1 + max((depth(v) for v in data), default=0)
    return 0


def nested(levels: int, leaf) -> dict:
    data = leaf
    for i in range(levels - 1):
        data = {TRICKY[i % len(TRICKY)]: data} if i % 2 else [data, TRICKY[i % len(TRICKY)]]
    return {"top": data}


@pytest.mark.parametrize("levels", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, MAX_DEPTH + 5])
@pytest.mark.parametrize("indent", [None, 2])
def test_the_limit_is_exact(levels: int, indent) -> None:
    text = json.dumps(nested(levels, "]]]}}}\\\"[["), indent=indent)
    if levels <= MAX_DEPTH:
        assert depth(parse_json(text, "doc")) == levels
    else:
        with pytest.raises(InvalidInput, match="nested more than"):
            parse_json(text, "doc")


json_values = st.recursive(st.none() | st.integers() | st.sampled_from(TRICKY) | st.text(max_size=4),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from(TRICKY), kids,
                                                                                      max_size=3), max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(value=json_values, pad=st.integers(0, MAX_DEPTH))
def test_text_depth_is_data_depth(value, pad: int) -> None:
    data = nested(pad + 1, value) if pad else {"v": value}
    text = json.dumps(data, ensure_ascii=False)
    if depth(data) <= MAX_DEPTH:
        assert parse_json(text, "doc") == data
    else:
        with pytest.raises(InvalidInput, match="nested more than"):
            parse_json(text, "doc")
