"""docs/config.md's field reference is the schema's: every field of every model has a row
(no more, no fewer), with the type and default the schema gives (the same words as the
man page, scripts/gen-manpages), and something in the column of what is refused."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from agent.model.schema import DocumentDoc

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "config.md"
ROW = re.compile(r"^\| `(?P<field>[a-z_]+)` \| (?P<type>.+?) \| (?P<default>.+?) \| (?P<refused>.*) \|$")


def generator() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("gen_manpages", str(ROOT / "scripts" / "gen-manpages"))
    spec = importlib.util.spec_from_loader("gen_manpages", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


GEN = generator()
SCHEMA = DocumentDoc.model_json_schema()
DEFS = SCHEMA["$defs"]
SECTIONS = {**GEN.SECTIONS_BY_MODEL, "AllowedAddressDoc": "instances[].interfaces[].allowed_addresses[]"}


def documented() -> dict[str, dict[str, dict[str, str]]]:
    """{section: {field: {type, default, refused}}} of the reference's tables."""
    text = DOC.read_text().split("\n## Field reference\n", 1)[1]
    out: dict[str, dict[str, dict[str, str]]] = {}
    section = None
    for line in text.splitlines():
        heading = re.fullmatch(r"### `(.+)`", line)
        if heading:
            section = out.setdefault(heading.group(1), {})
            continue
        m = ROW.match(line)
        if m and section is not None:
            assert m["field"] not in section, f"docs/config.md: {m['field']} twice"
            section[m["field"]] = {k: m[k].replace("\\|", "|").strip() for k in ("type", "default", "refused")}
    return out


def expected_default(spec: dict, required: bool) -> str | None:
    """The default the row must show (None: the schema has none worth showing)."""
    if required:
        return "required"
    value = spec.get("default")
    if value in (None, [], ""):
        return None
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_every_model_has_a_section_and_no_other() -> None:
    assert set(documented()) == set(SECTIONS.values())


@pytest.mark.parametrize("model", sorted(SECTIONS), ids=str)
def test_every_field_type_and_default_as_the_schema_says(model: str) -> None:
    spec = SCHEMA if model == "DocumentDoc" else DEFS[model]
    rows = documented()[SECTIONS[model]]
    assert set(rows) == set(spec["properties"]), f"docs/config.md {SECTIONS[model]}: fields differ from the schema"
    required = set(spec.get("required", []))
    for field, fspec in spec["properties"].items():
        row = rows[field]
        assert row["type"] == GEN.type_text(fspec, DEFS), (field, row["type"])
        want = expected_default(fspec, field in required)
        if want is not None:
            assert row["default"] == want, (field, row["default"])
        else:
            assert row["default"] != "required", field
        assert row["refused"], f"docs/config.md: {field}: say what is refused"
