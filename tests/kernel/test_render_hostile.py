"""No byte of a document reaches the nft script except as a validated, re-formatted value
(issue 12): every string field of a document, with every ASCII character (printable and
control) and a few unicode ones put in its middle, is either refused or renders a script
that is plain ASCII and that `nft -c -f` accepts (in a scratch network namespace,
deleted also on failure). Free-text fields (descriptions, names, ids that only name
things in messages) do not change the script at all."""
from __future__ import annotations

import copy
import hashlib
import itertools
import os
import string
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.compiler.compile import build_ruleset
from agent.errors import InvalidInput
from agent.compiler.render import render_ruleset
from agent.model.validate import validate_document

pytestmark = pytest.mark.kernel

BASE: dict = {
    "host": "hv-01",
    "prefix_lists": [{"id": "pl-1", "name": "office", "entries": ["203.0.113.0/24", "2001:db8::/48"]}],
    "security_groups": [
        {"id": "sg-web", "name": "web", "description": "web tier", "rules": [
            {"id": "web-http", "direction": "ingress", "protocol": "tcp", "port_range": "80/80",
             "source_cidr": "0.0.0.0/0", "description": "http"},
            {"id": "web-office", "direction": "ingress", "protocol": "tcp", "port_range": "22/22",
             "source_prefix_list": "pl-1"},
            {"id": "web-db", "direction": "egress", "protocol": "udp", "port_range": "53/53",
             "source_port_range": "1024/65535", "dest_group": "sg-db", "policy": "drop"}]},
        {"id": "sg-db", "type": "default", "network": "vpc", "rules": [
            {"id": "db-in", "direction": "ingress", "protocol": "tcp", "port_range": "5432/5432",
             "source_group": "sg-web", "nic_type": "intranet"}]}],
    "instances": [
        {"id": "web-1", "security_groups": ["sg-web"], "interfaces": [
            {"name": "tap-web1", "mac": "02:00:00:00:00:01", "addresses": ["10.0.1.11", "fd00:1::11"]}]},
        {"id": "db-1", "security_groups": ["sg-db"], "interfaces": [
            {"name": "tap-db1", "attachment": "bridged", "addresses": ["10.0.2.21"]}]},
        {"id": "db-2", "host": "hv-02", "security_groups": ["sg-db"], "interfaces": [
            {"name": "tap-db2", "addresses": ["10.0.2.22"]}]}],
}
CHARACTERS = [chr(i) for i in range(0x80)] + ["\u00e9", "\u2028", "\u202e", "\ufeff", "\U0001f600", "\u0663"]
FREE_TEXT = {"name", "description", "id"}          # but group ids: they name sets
SCRIPT_CHARS = set(string.printable) - set("\r\x0b\x0c")


def string_paths(node: Any, path: tuple = ()) -> list[tuple]:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    out = []
    for key, value in items:
        out += [path + (key,)] if isinstance(value, str) else string_paths(value, path + (key,))
    return out


def variant(doc: dict, path: tuple, char: str, suffix: bool) -> dict:
    """`char` in the middle of the value, or after `%` at its end (an IPv6 scope)."""
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        node = node[key]
    value = node[path[-1]]
    node[path[-1]] = value + "%" + char if suffix else value[:1] + char + value[1:]
    return out


def is_free_text(path: tuple) -> bool:
    """Descriptions, group and prefix-list names, instance ids (not group ids: they name
    sets; not rule ids: they name verdict chains in their comments, docs/observability.md;
    not interface names: they are matched)."""
    return path[-1] in FREE_TEXT and "interfaces" not in path and path[:1] + path[2:] != ("security_groups", "id") \
        and "rules" not in path


def render(doc: dict) -> str | None:
    try:
        return render_ruleset(build_ruleset(validate_document(doc)))
    except InvalidInput as exc:
        assert exc.errors
        return None


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    """digest -> script of every variant that validates; asserts on the way that each is
    plain ASCII and that free-text fields leave the script as it was."""
    base = render(BASE)
    assert base is not None
    out = {hashlib.sha256(base.encode()).hexdigest(): base}
    for path in string_paths(BASE):
        for char, suffix in itertools.product(CHARACTERS, (False, True)):
            script = render(variant(BASE, path, char, suffix))
            if script is None:
                continue
            assert set(script) <= SCRIPT_CHARS, (path, repr(char))
            if is_free_text(path):
                assert script == base, (path, repr(char))
            out[hashlib.sha256(script.encode()).hexdigest()] = script
    return out


def test_every_string_field_was_tried_with_every_character() -> None:
    paths = string_paths(BASE)
    assert len(paths) >= 30
    kinds = {p[-1] for p in paths}
    assert {"name", "description", "id", "host", "mac", "addresses", "entries", "source_cidr",
            "port_range", "source_group", "dest_group", "source_prefix_list"} <= kinds | {p[-2] for p in paths if len(p) > 1}


def test_scripts_pass_nft_check_in_a_scratch_namespace(scripts: dict[str, str], tmp_path: Path) -> None:
    assert len(scripts) > 100           # group ids, hosts and interface names do vary it
    for digest, script in scripts.items():
        (tmp_path / f"{digest}.nft").write_text(script)
    ns = f"sgh{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        proc = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c",
                               'for f in "$1"/*.nft; do nft -c -f "$f" || echo "FAILED $f"; done', "sh",
                               str(tmp_path)], capture_output=True, text=True, timeout=600)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert "FAILED" not in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stderr
