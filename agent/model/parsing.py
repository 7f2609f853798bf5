"""The YAML and JSON parsers of agent.model.loader, with their limits: text in, plain data
out, or InvalidInput (Refused while composing YAML). The loader adds the size limit, the
decoding, and turns whatever else a parser raises into InvalidInput; see its docstring for
what is refused.

* YAML: only libyaml's event parser (or PyYAML's pure-Python one) is used; the nodes are
  composed here (BoundedComposer), counting depth and alias expansion, collecting
  duplicate keys with their paths. Numbers are plain decimal (StrictResolver).
* JSON: the C decoder, with an object hook that notes repeated keys (then reported with
  their paths) and the depth read from the text (`_too_deep`).
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable, Optional

import yaml
from yaml.composer import Composer
from yaml.events import AliasEvent, MappingEndEvent, SequenceEndEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from agent.errors import InputError, InvalidInput

MAX_DEPTH = 64                  # the schema needs 5 levels; extra fields get the rest
MAX_ALIAS_NODES = 100_000       # nodes that alias expansion may add to a document


class Refused(Exception):
    """A limit was hit while composing; carries the error."""

    def __init__(self, error: InputError) -> None:
        super().__init__(str(error))
        self.error = error


def path_text(parts: list) -> str:
    """`security_groups[0].rules[1].policy` from ['security_groups', 0, 'rules', 1, 'policy']."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if isinstance(part, str) and part.isprintable() and part else json.dumps(str(part))
            out += f".{text}" if out else text
    return out


def _line(node_or_event: Any) -> int:
    mark = getattr(node_or_event, "start_mark", None)
    return mark.line + 1 if mark is not None else 0


class BoundedComposer(Composer):
    """PyYAML's composer with limits on depth and alias expansion, and duplicate keys
    collected with their paths. Its recursion is bounded by MAX_DEPTH."""

    def __init__(self, name: str) -> None:
        Composer.__init__(self)
        self.name = name
        self.depth = 0
        self.path: list = []
        self.open: set[int] = set()                     # nodes being composed
        self.measured: dict[int, tuple[int, int]] = {}   # node id -> (nodes, height)
        self.expanded = 0
        self.duplicates: list[InputError] = []

    def refuse(self, where: Any, message: str) -> None:
        at = path_text(self.path[:8]) + ("..." if len(self.path) > 8 else "")
        raise Refused(InputError("", self.name, f"{message} (line {_line(where)}{', at ' + at if at else ''})"))

    def compose_node(self, parent: Optional[Node], index: Any) -> Node:
        if self.check_event(AliasEvent):
            return self._alias(self.get_event())
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                self.refuse(self.peek_event(), f"nested more than {MAX_DEPTH} levels deep")
            return Composer.compose_node(self, parent, index)
        finally:
            self.depth -= 1

    def _alias(self, event: Any) -> Node:
        node = self.anchors.get(event.anchor)
        if node is None:
            self.refuse(event, f"alias *{event.anchor} names no anchor")
        if id(node) in self.open:
            self.refuse(event, f"alias *{event.anchor} refers to itself")
        size, height = self._measure(node)
        self.expanded += size
        if self.expanded > MAX_ALIAS_NODES:
            self.refuse(event, f"aliases expand to more than {MAX_ALIAS_NODES:,} nodes (*{event.anchor})")
        if self.depth + height > MAX_DEPTH:
            self.refuse(event, f"alias *{event.anchor} nests more than {MAX_DEPTH} levels deep")
        return node

    def _measure(self, node: Node) -> tuple[int, int]:
        """(nodes, height) of `node` with aliases expanded; the recursion is bounded by the
        depth limit every alias already obeyed."""
        known = self.measured.get(id(node))
        if known is not None:
            return known
        size, height = 1, 0
        if isinstance(node, (SequenceNode, MappingNode)):
            children = node.value if isinstance(node, SequenceNode) else [n for kv in node.value for n in kv]
            for child in children:
                s, h = self._measure(child)
                size, height = size + s, max(height, h)
            height += 1
        self.measured[id(node)] = (size, height)
        return size, height

    def compose_sequence_node(self, anchor: Optional[str]) -> SequenceNode:
        start = self.get_event()
        tag = start.tag if start.tag not in (None, "!") else self.resolve(SequenceNode, None, start.implicit)
        node = SequenceNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        self.open.add(id(node))
        while not self.check_event(SequenceEndEvent):
            self.path.append(len(node.value))
            node.value.append(self.compose_node(node, len(node.value)))
            self.path.pop()
        node.end_mark = self.get_event().end_mark
        self.open.discard(id(node))
        return node

    def compose_mapping_node(self, anchor: Optional[str]) -> MappingNode:
        start = self.get_event()
        tag = start.tag if start.tag not in (None, "!") else self.resolve(MappingNode, None, start.implicit)
        node = MappingNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        self.open.add(id(node))
        seen: dict[tuple, int] = {}
        while not self.check_event(MappingEndEvent):
            key = self.compose_node(node, None)
            name = key.value if isinstance(key, ScalarNode) else "?"
            self.path.append(name)
            value = self.compose_node(node, key)
            self.path.pop()
            if isinstance(key, ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                ident = (key.tag, key.value)
                if ident in seen:
                    self._duplicate(name, seen[ident], _line(key))
                seen.setdefault(ident, _line(key))
            node.value.append((key, value))
        node.end_mark = self.get_event().end_mark
        self.open.discard(id(node))
        return node

    def _duplicate(self, name: str, first: int, again: int) -> None:
        where = f"lines {first} and {again}" if first != again else f"line {again}"
        self.duplicates.append(InputError(path_text(self.path + [name]), where,
                                          "duplicate key; give each field once"))


class StrictResolver(yaml.resolver.Resolver):
    """YAML 1.1 plain scalars, but numbers are plain decimal: `8_080`, `1:20` (sexagesimal
    80), `0x50` and `017` (octal 15) stay strings, which the checks refuse as numbers."""


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
StrictResolver.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items()}
StrictResolver.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789"))
StrictResolver.add_implicit_resolver(
    _FLOAT, re.compile(r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _loader_class(parser_bases: tuple) -> type:
    class Loader(BoundedComposer, *parser_bases, yaml.constructor.SafeConstructor, StrictResolver):
        def __init__(self, stream: str, name: str) -> None:
            parser_bases[0].__init__(self, stream)
            for base in parser_bases[1:]:
                base.__init__(self)
            BoundedComposer.__init__(self, name)
            yaml.constructor.SafeConstructor.__init__(self)
            StrictResolver.__init__(self)
    return Loader


PY_LOADER = _loader_class((yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser))
C_LOADER = _loader_class((yaml.cyaml.CParser,)) if getattr(yaml, "__with_libyaml__", False) else None


def _parse_yaml(text: str, name: str, loader_class: type) -> Any:
    loader = loader_class(text, name)
    try:
        node = loader.get_single_node()
        if loader.duplicates:
            raise InvalidInput(loader.duplicates)
        return loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def _yaml_error(exc: yaml.YAMLError, name: str) -> InvalidInput:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return InvalidInput([InputError("", name, f"malformed YAML/JSON at {where}: {problem}")])


class _Pairs(dict):
    """A JSON object whose text gave some key more than once."""
    repeated: dict


def _json_object(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    out = _Pairs(obj)
    counts: dict[str, int] = {}
    for key, _ in pairs:
        counts[key] = counts.get(key, 0) + 1
    out.repeated = {k: n for k, n in counts.items() if n > 1}
    return out


_NOT_STRUCTURAL = bytes(c for c in range(256) if c not in b'{}[]"')
_SQUARE_AS_CURLY = bytes.maketrans(b"[]", b"{}")


def _too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """Is a valid JSON text nested more than `limit` levels? Read from the text with
    C-speed byte operations (~10 ms on a 1.7 MB fleet document; walking the parsed data
    took 25-35 ms of every revision the daemon reads): escaped backslashes and quotes
    out, then everything but brackets and quotes; adjacent quotes out (what separated
    two strings was not structural, so their contents just join); what is left inside
    quotes out; then each pass of removing `{}` peels one level off every innermost
    container, so the text empties after exactly as many passes as it has levels."""
    raw = text.encode("utf-8", "surrogatepass")
    raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(_SQUARE_AS_CURLY, _NOT_STRUCTURAL)
    raw = raw.replace(b'""', b"")
    if b'"' in raw:
        raw = b"".join(raw.split(b'"')[::2])
    for _ in range(limit):
        raw = raw.replace(b"{}", b"")
        if not raw:
            return False
    return True


_CONTAINERS = (dict, list, _Pairs)
_TOO_DEEP = object()


def _json_duplicates(data: Any) -> list[InputError]:
    """Every repeated key of parsed JSON with its path, without recursion."""
    errors: list[InputError] = []
    stack: list[tuple[Any, list]] = [(data, [])]
    while stack:
        value, path = stack.pop()
        if isinstance(value, _Pairs):
            errors += [InputError(path_text(path + [k]), f"{n} times", "duplicate key; give each field once")
                       for k, n in value.repeated.items()]
        items = value.items() if isinstance(value, dict) else enumerate(value)
        stack += [(v, path + [k]) for k, v in items if v.__class__ in _CONTAINERS]
    return errors


def _json_hook() -> tuple[Callable[[list], dict], list[bool]]:
    """The object hook of every JSON parse here, and the list that gets an entry whenever
    a parsed object gave a key twice (its value is then a _Pairs, not a plain dict)."""
    repeated: list[bool] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict:
        obj = dict(pairs)               # _json_object's common case inline: one call per object less
        if len(obj) != len(pairs):
            obj = _json_object(pairs)
            repeated.append(True)
        return obj
    return hook, repeated


def json_scanner() -> tuple[Callable[[str, int], tuple[Any, int]], list[bool]]:
    """`scan(text, index) -> (value, end)`: the JSON value at `index`, parsed by the
    decoder a whole document is parsed with, and the list that gets an entry whenever a
    parsed object gave a key twice (then parse the document whole for the errors).
    `scan` raises StopIteration, ValueError or RecursionError on bad text."""
    hook, repeated = _json_hook()
    return json.JSONDecoder(object_pairs_hook=hook).scan_once, repeated


def too_deep(text: str, levels_above: int) -> bool:
    """Is a JSON value found `levels_above` levels deep in a document nested too deep?"""
    return _too_deep(text, MAX_DEPTH - levels_above)


def _parse_json(text: str, name: str) -> Any:
    hook, repeated = _json_hook()
    try:
        data = json.loads(text, object_pairs_hook=hook)
    except RecursionError:
        data = _TOO_DEEP
    if data is _TOO_DEEP or (data.__class__ in _CONTAINERS and _too_deep(text)):
        raise InvalidInput([InputError("", name, f"nested more than {MAX_DEPTH} levels deep")])
    if repeated:
        raise InvalidInput(_json_duplicates(data))
    return data


def strict_json(text: str, name: str) -> Any:
    """A JSON text's data; malformed JSON as InvalidInput."""
    try:
        return _parse_json(text, name)
    except ValueError as exc:
        raise InvalidInput([InputError("", name, f"malformed JSON: {exc}")]) from None



def parse_any(text: str, name: str) -> Any:
    """A YAML or JSON text's data: what looks like JSON by the C JSON parser first, then
    libyaml, then PyYAML's pure-Python parser (its messages independent of libyaml)."""
    if text.lstrip().startswith("{"):
        try:
            return _parse_json(text, name)
        except json.JSONDecodeError:
            pass                        # YAML parses it, or says where it is malformed
    if C_LOADER is not None:
        try:
            return _parse_yaml(text, name, C_LOADER)
        except yaml.YAMLError:
            pass                        # again in pure Python: messages independent of libyaml
    try:
        return _parse_yaml(text, name, PY_LOADER)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, name) from None
