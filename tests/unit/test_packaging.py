"""The man pages are current (regenerated from argparse, the schema and docs/config.md), and
the versions agree: `--version`, pyproject.toml and debian/changelog."""
import importlib.machinery
import importlib.util
import re
import tomllib
from pathlib import Path

import pytest

from agent.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def load_generator():
    loader = importlib.machinery.SourceFileLoader("gen_manpages", str(ROOT / "scripts" / "gen-manpages"))
    spec = importlib.util.spec_from_loader("gen_manpages", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["secgroup-agent.8", "secgroup-agent.yaml.5"])
def test_committed_man_page_is_current(name):
    fresh = load_generator().render_all()[name]
    committed = (ROOT / "man" / name).read_text()
    assert committed == fresh, f"man/{name} is stale: run scripts/gen-manpages and commit man/"


def test_man_pages_cover_every_command_and_field():
    from agent.cli.main import build_parser
    from agent.model.schema import DocumentDoc, RuleDoc
    pages = load_generator().render_all()
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    for command in sub.choices:
        assert f".SS {command.replace('-', chr(92) + '-')}\n" in pages["secgroup-agent.8"], command
    for field in list(DocumentDoc.model_fields) + list(RuleDoc.model_fields):
        assert "\\fB" + field.replace("-", "\\-") + "\\fR" in pages["secgroup-agent.yaml.5"], field
    assert "priority\\fR\ninteger; at least 1; at most 100; default 1" in pages["secgroup-agent.yaml.5"]


def test_version_option_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"secgroup-agent {project}"


def test_debian_changelog_carries_the_project_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    first = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    assert re.match(rf"secgroup-agent \({re.escape(project)}(-\d+)?\) ", first), first
