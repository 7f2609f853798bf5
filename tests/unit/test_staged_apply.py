"""The keeper's cold load in stages (agent.reconciler.staged) with a fake kernel: the
stages, then the last one as the full commit; the save written while the last stage
commits and published once it took; a refused last stage discards that save and the
whole script is applied instead. (On the real kernel: tests/kernel/test_staged_load_kernel.py.)"""
from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import yaml

from agent.compiler.render import render_ruleset
from agent.model.validate import validate_document
from agent.reconciler import staged
from agent.reconciler.oneshot import apply_once
from agent.reconciler.port import STAGE
from agent.reconciler.stamp import build_token
from agent.reconciler.store import PICKLE_FILE, RESTORE_FILE, StateStore
from fake_kernel import SaveWatchingKernel

WEBSHOP = yaml.safe_load((Path(__file__).parents[2] / "examples" / "webshop.yaml").read_text())


@pytest.fixture(autouse=True)
def stage_small_states(monkeypatch):
    monkeypatch.setattr(staged, "STAGE_FROM", 1)


def desired():
    return validate_document(copy.deepcopy(WEBSHOP), "hv-01")


def test_a_cold_apply_is_staged_and_saved_while_its_last_stage_commits(tmp_path):
    kernel = SaveWatchingKernel(tmp_path, {"full"})
    result = apply_once(desired(), kernel=kernel, store=StateStore(tmp_path))
    whats = [what for what, _ in kernel.commits]
    assert result.mode == "full" and whats[-1] == "full" and set(whats[:-1]) == {STAGE}
    assert kernel.commits[0][1].startswith("create table inet secgroup_agent\n")
    assert kernel.staged_seen == [["applied", "failclosed", "ruleset"]]
    saved = pickle.loads((tmp_path / PICKLE_FILE).read_bytes())[1]
    token = build_token(render_ruleset(saved.ruleset))
    assert saved.token == token == kernel.stamp
    assert f"elements = {{ {token} }}" in (tmp_path / RESTORE_FILE).read_text()
    assert not list(tmp_path.glob(".*"))


def test_a_refused_last_stage_discards_its_save_and_the_whole_script_is_applied(tmp_path):
    kernel = SaveWatchingKernel(tmp_path, {"full"}, refusals=1)
    result = apply_once(desired(), kernel=kernel, store=StateStore(tmp_path))
    whats = [what for what, _ in kernel.commits]
    assert result.mode == "full"
    assert whats[-2:] == ["staged load removal", "full"]       # the partial table deleted, then one transaction
    assert kernel.commits[-1][1].startswith("#!/usr/sbin/nft -f")
    saved = pickle.loads((tmp_path / PICKLE_FILE).read_bytes())[1]
    assert saved.token == kernel.stamp
    assert not list(tmp_path.glob(".*"))
