"""`secgroup-agent group clone SRC NEW -c F`: copy a security group inside the document.

The copy keeps the source's type, network, inner access, default-rule flags,
description and rules; it has no members (membership lives on instances). Rules get
fresh ids: the same content-derived form the agent gives rules without an id
(`in-…`/`eg-…`, see agent.model.objects.derive_rule_id), written out explicitly. Rules that
name the source group itself as their peer name the copy instead, so the copy treats
its own members as the source treats its own.

YAML files are edited as text: the new group is rendered with ruamel.yaml (in the
file's indentation, rules in the source's flow or block style) and inserted after the
last group, so every other byte of the file - comments, spacing, key order - is kept.
JSON files are rewritten as JSON. Either way the new document is validated before it
replaces the file (atomically), so the result passes `check`.
"""
from __future__ import annotations

import copy
import io
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional


from agent.errors import AgentError, InputError, InvalidInput
from agent.model.objects import derive_rule_id
from agent.model.schema import RuleDoc
from agent.model.loader import parse_document, read_document
from agent.model.validate import validate_document

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CloneResult:
    path: str
    source: str
    new_id: str
    index: int                  # the copy's position in security_groups
    rules: int

    def summary(self) -> str:
        rules = f"{self.rules} rule{'' if self.rules == 1 else 's'}"
        return f"{self.path}: security_groups[{self.index}] {self.new_id}: copy of {self.source} ({rules}, no members)"


def clone_group(path: str | Path, source: str, new_id: str, host: Optional[str] = None) -> CloneResult:
    """Add a copy of group `source` named `new_id` to the document at `path`."""
    path = Path(path)
    data = read_document(path)
    validate_document(data, host)                       # the file must be valid to begin with
    groups = data.get("security_groups") or []
    src = _check_ids(groups, source, new_id)
    rules = len(groups[src].get("rules") or [])
    text = path.read_text(encoding="utf-8")
    expected = copy.deepcopy(data)
    expected["security_groups"] = groups + [make_copy(groups[src], source, new_id)]
    if _is_json(path, text):
        new_text = _json_text(text, data, make_copy(groups[src], source, new_id))
    else:
        try:
            new_text = _yaml_text(text, src, source, new_id)
        except Exception as exc:        # noqa: BLE001 - ruamel reads what PyYAML read; if not, say so
            raise AgentError(f"cannot edit {path} as YAML text ({type(exc).__name__}: {exc}); "
                             f"it is unchanged") from None
    check_result(path, new_text, expected, host)
    _write(path, new_text)
    log.debug("cloned %s into %s in %s", source, new_id, path)
    return CloneResult(str(path), source, new_id, len(groups), rules)


def check_result(path: Path, new_text: str, expected: dict, host: Optional[str]) -> None:
    """Refuse (AgentError: a bug here, not the user's mistake) a text that would not read
    back as `expected` through the agent's own loader, or would not pass `check`."""
    try:
        reread = parse_document(new_text, str(path))
        validate_document(reread, host)
    except InvalidInput as exc:
        raise AgentError(f"the copy would not pass check ({exc.errors[0]}); {path} is unchanged") from None
    if reread != expected:
        raise AgentError(f"the copy would not read back as written; {path} is unchanged")


def _check_ids(groups: list, source: str, new_id: str) -> int:
    ids = [g.get("id") for g in groups]
    errors = []
    if not new_id.strip() or new_id != new_id.strip():
        errors.append(InputError("NEW", json.dumps(new_id), "must be a non-empty id without surrounding spaces"))
    if new_id in ids:
        errors.append(InputError(f"security_groups[{ids.index(new_id)}].id", new_id,
                                 "already exists; choose another id for the copy"))
    if source not in ids:
        errors.append(InputError("security_groups", source, "no such security group to copy"))
    if errors:
        raise InvalidInput(errors)
    return ids.index(source)


def make_copy(group: Any, source: str, new_id: str) -> Any:
    """The copy of one group's mapping (plain dict or ruamel CommentedMap)."""
    out = copy.deepcopy(group)
    _strip_comments(out)
    out["id"] = new_id
    if "name" in out:
        out["name"] = new_id
    taken: set[str] = set()
    rules = out.get("rules") or []
    for index, rule in enumerate(rules):
        for side in ("source_group", "dest_group"):
            if rule.get(side) == source:
                rule[side] = new_id
        rule_id = _fresh_id(new_id, rule, taken)
        if "id" in rule:
            rule["id"] = rule_id
        elif hasattr(rule, "insert"):
            rule.insert(0, "id", rule_id)
        else:
            rules[index] = {"id": rule_id, **rule}
    return out


def _fresh_id(group_id: str, rule: Any, taken: set[str]) -> str:
    """The agent's content-derived id for `rule` in `group_id`, made unique in `taken`."""
    content = {key: value for key, value in rule.items() if key not in ("id", "description")}
    rule_id = base = derive_rule_id(group_id, RuleDoc.model_validate(content))
    n = 1
    while rule_id in taken:                     # the source held the same rule twice
        n += 1
        rule_id = f"{base}-{n}"
    taken.add(rule_id)
    return rule_id


def _strip_comments(node: Any) -> None:
    ca = getattr(node, "ca", None)
    if ca is not None:
        ca.items.clear()
        ca.comment = None
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        _strip_comments(child)


def _is_json(path: Path, text: str) -> bool:
    return path.suffix.lower() == ".json" or text.lstrip().startswith("{")


def _json_text(text: str, data: dict, group: Any) -> str:
    indent = re.search(r"\n([ \t]+)\S", text)
    data.setdefault("security_groups", []).append(group)
    return json.dumps(data, indent=indent.group(1) if indent else 2, ensure_ascii=False) + "\n"


def _yaml_text(text: str, src: int, source: str, new_id: str) -> str:
    """`text` with the copy of group number `src` inserted after the last group."""
    from ruamel.yaml import YAML
    from ruamel.yaml.util import load_yaml_guess_indent
    reader = YAML()
    reader.preserve_quotes = True                 # "::/0", "yes": written back quoted
    doc, indent, dash_offset = load_yaml_guess_indent(text, yaml=reader)
    indent, dash_offset = indent or 2, dash_offset or 0
    seq = doc["security_groups"]
    group = make_copy(seq[src], source, new_id)
    if hasattr(group, "yaml_add_eol_comment") and not group.fa.flow_style():
        group.yaml_add_eol_comment(f"copy of {source}", "id")
    if seq.fa.flow_style() or not hasattr(seq[0], "lc"):
        return _yaml_rewrite(doc, group, indent, dash_offset)
    lines = text.splitlines(keepends=True)
    dash_col = lines[seq.lc.item(0)[0]].index("-")
    end = _section_end(doc, lines, seq, dash_col)
    rt = YAML()
    rt.indent(mapping=indent, sequence=indent, offset=dash_offset)
    rt.width = 4096
    buf = io.StringIO()
    rt.dump([group], buf)
    block = "".join(" " * (dash_col - dash_offset) + line if line.strip() else line
                    for line in buf.getvalue().splitlines(keepends=True))
    if end > 0 and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    return "".join(lines[:end]) + block + "".join(lines[end:])


def _section_end(doc: Any, lines: list[str], seq: Any, dash_col: int) -> int:
    """The line index just after the last group: before the next top-level key, less
    the blank lines and the comments at or left of the dash column that precede it."""
    keys = list(doc.keys())
    after = keys[keys.index("security_groups") + 1:]
    end = min((doc.lc.key(k)[0] for k in after), default=len(lines))
    last_item = seq.lc.item(len(seq) - 1)[0]
    while end - 1 > last_item:
        line = lines[end - 1]
        stripped = line.lstrip()
        if stripped and not (stripped.startswith("#") and len(line) - len(stripped) <= dash_col):
            break
        end -= 1
    return end


def _yaml_rewrite(doc: Any, group: Any, indent: int, dash_offset: int) -> str:
    """Fallback for a flow-style security_groups: a ruamel round trip of the document."""
    from ruamel.yaml import YAML
    rt = YAML()
    rt.indent(mapping=indent, sequence=max(indent, dash_offset + 2), offset=dash_offset)
    rt.width = 4096
    doc["security_groups"].append(group)
    buf = io.StringIO()
    rt.dump(doc, buf)
    return buf.getvalue()


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        except OSError:
            pass
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise AgentError(f"cannot write {path}: {exc}") from None
