"""The one-shot apply's save written by a forked child during the commit
(agent.reconciler.forked, StateStore.stage/publish/discard): the same files as the
inline save after the commit, none of them when the commit raises, the inline save when
fork fails."""
from __future__ import annotations

import copy
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from agent.errors import KernelError
from agent.model.validate import validate_document
from agent.reconciler import forked
from agent.reconciler.keeper import FULL, INCREMENTAL, Keeper
from agent.reconciler.oneshot import apply_once
from agent.reconciler.store import FAILCLOSED_FILE, PICKLE_FILE, RESTORE_FILE, STALE_SECONDS, StateStore
from fake_kernel import FakeKernel, SaveWatchingKernel

WEBSHOP = yaml.safe_load((Path(__file__).parents[2] / "examples" / "webshop.yaml").read_text())
NAMES = {FAILCLOSED_FILE, RESTORE_FILE, PICKLE_FILE}


def state(doc=WEBSHOP):
    return validate_document(copy.deepcopy(doc), "hv-01")


def without_anti_spoofing() -> dict:
    doc = copy.deepcopy(WEBSHOP)
    doc["anti_spoofing"] = False
    return doc


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def inline_save(directory: Path, kernel: FakeKernel, desired, context) -> dict[str, bytes]:
    """What the one-shot apply wrote before this change: adopt, apply, then the save in
    the process (against a copy of the kernel and of the state directory)."""
    keeper = Keeper(kernel, store=StateStore(directory))
    keeper.adopt()
    keeper.apply(desired, "apply")
    keeper.context = context
    keeper.saving()()                       # Keeper.save, which some tests forbid
    return files(directory)


@pytest.fixture
def no_inline_save(monkeypatch):
    """Keeper.save fails the test: the files must come from the child."""
    def refuse(self):
        raise AssertionError("saved inline")
    monkeypatch.setattr(Keeper, "save", refuse)


def test_a_full_replace_is_saved_by_the_child_as_the_inline_save_would(tmp_path, no_inline_save):
    k, context = FakeKernel(), {"validated": "document r1"}
    reference = inline_save(tmp_path / "inline", copy.deepcopy(k), state(), context)
    (tmp_path / "child").mkdir()
    k = SaveWatchingKernel(tmp_path / "child")
    assert apply_once(state(), kernel=k, store=StateStore(tmp_path / "child"), context=context).mode == FULL
    written = files(tmp_path / "child")
    assert set(written) == NAMES and k.stamp is not None and k.stamp.encode() in written[RESTORE_FILE]
    assert written == reference
    assert k.staged_seen == [["applied", "failclosed", "ruleset"]]       # during the commit
    again = Keeper(k, store=StateStore(tmp_path / "child"))
    assert again.adopt() == "adopted" and again.context == context


def test_an_incremental_commit_is_saved_by_the_child_too(tmp_path, no_inline_save):
    k, store = FakeKernel(), StateStore(tmp_path / "child")
    apply_once(state(), kernel=k, store=store, context="r1")
    k.refuse |= {"elements", "changes"}                  # the nft script, not netlink
    shutil.copytree(tmp_path / "child", tmp_path / "inline")
    reference = inline_save(tmp_path / "inline", copy.deepcopy(k), state(without_anti_spoofing()), "r2")
    assert apply_once(state(without_anti_spoofing()), kernel=k, store=store, context="r2").mode == INCREMENTAL
    assert files(tmp_path / "child") == reference and k.commits[-1][0] == INCREMENTAL


@pytest.mark.parametrize("refused, force", [({"full"}, True), ({"elements", "changes", "incremental", "full"}, False)])
def test_a_refused_commit_keeps_the_previous_files_and_leaves_no_temporary_ones(tmp_path, refused, force):
    k, store = FakeKernel(), StateStore(tmp_path)
    apply_once(state(), kernel=k, store=store, context="r1")
    before = files(tmp_path)
    k.refuse |= refused
    with pytest.raises(KernelError):
        apply_once(state(without_anti_spoofing()), kernel=k, store=store, context="r2", force=force)
    assert files(tmp_path) == before
    assert Keeper(k, store=store).adopt() == "adopted"


def test_fork_failure_saves_inline_after_the_commit(tmp_path, monkeypatch):
    def no_fork():
        raise OSError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(forked.os, "fork", no_fork)
    saves = []
    real_save = Keeper.save
    monkeypatch.setattr(Keeper, "save", lambda self: (saves.append(self.token), real_save(self)))
    k = FakeKernel()
    assert apply_once(state(), kernel=k, store=StateStore(tmp_path / "a"), context="r1").mode == FULL
    assert saves == [k.stamp] and set(files(tmp_path / "a")) == NAMES


def test_a_failed_child_is_followed_by_the_inline_save(tmp_path, monkeypatch):
    def broken(self, *args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(StateStore, "stage", broken)      # in the child only: save() calls it inline too
    saved = []
    monkeypatch.setattr(Keeper, "save", lambda self: saved.append(self.token))
    k = FakeKernel()
    apply_once(state(), kernel=k, store=StateStore(tmp_path), context="r1")
    assert saved == [k.stamp] and not list(tmp_path.iterdir())


def test_staged_files_replace_the_saved_ones_only_when_published(tmp_path):
    k = FakeKernel()
    keeper = Keeper(k, store=StateStore(tmp_path))
    keeper.apply(state())
    keeper.save()
    before = files(tmp_path)
    keeper.apply(state(without_anti_spoofing()))
    snapshot = keeper._snapshot(keeper.token, keeper.applied, keeper.memo, keeper.addresses, keeper.state, None)
    staged = keeper.store.stage(*snapshot())
    assert files(tmp_path).items() >= before.items() and len(os.listdir(tmp_path)) == 6
    assert StateStore(tmp_path).load().token != keeper.token          # a crash now: the old save
    StateStore.discard(staged)
    assert files(tmp_path) == before
    keeper.store.publish(keeper.store.stage(*snapshot()))
    assert StateStore(tmp_path).load().token == keeper.token and set(os.listdir(tmp_path)) == NAMES


def test_a_crashed_save_s_temporary_files_are_removed_once_stale(tmp_path):
    k = FakeKernel()
    keeper = Keeper(k, store=StateStore(tmp_path))
    keeper.apply(state())
    stale, recent = tmp_path / f".{RESTORE_FILE}.crashed", tmp_path / f".{PICKLE_FILE}.under_way"
    stale.write_text("left by a crash")
    recent.write_text("another save's")
    old = time.time() - STALE_SECONDS - 60
    os.utime(stale, (old, old))
    keeper.save()
    assert not stale.exists() and recent.exists() and set(os.listdir(tmp_path)) == NAMES | {recent.name}
