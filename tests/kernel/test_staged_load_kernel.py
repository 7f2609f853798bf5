"""The cold load in stages (agent.reconciler.staged) on the real kernel, in a namespace
of its own: the staged table is object for object what `nft -f` of the whole stamped
script loads; the keeper's staged apply is a full apply (its stamp is the whole
script's, a second apply changes nothing); a table that already exists is not staged
into (nor deleted); a refused last stage leaves no partial table and the keeper replaces
in full instead.

The kernel-side parts run in this file as a script under `ip netns exec` (`main`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from scratch import run_scenario, scratch_namespace, table_blocks

pytestmark = [pytest.mark.kernel,
              pytest.mark.require_root]
ROOT = Path(__file__).resolve().parents[2]
NS = f"sgstg{os.getpid() % 100000}"


# -- run inside the namespace ---------------------------------------------------------
def _state(doc: str):
    from agent.model.validate import load_state
    return load_state(doc, json.loads(Path(doc).read_text())["host"])


def scenario_equal(doc: str) -> dict:
    """Staged, then the whole stamped script in the same (emptied) namespace."""
    from agent.compiler.render import render_flush
    from agent.kernel.nft import apply_script
    from agent.reconciler.port import RealKernel
    from agent.reconciler.stamp import render_stamped
    from agent.reconciler import staged as staged_mod
    stages: list[str] = []
    kernel = RealKernel()
    real_commit = kernel.commit
    kernel.commit = lambda script, what: (stages.append(what), real_commit(script, what))[1]   # type: ignore[method-assign]
    done = staged_mod.apply_staged(kernel, _state(doc))
    assert done is not None
    staged = table_blocks()
    apply_script(render_flush(done.ruleset.owned))
    apply_script(render_stamped(done.script, done.token))
    return {"stages": len(stages), "staged": staged, "whole": table_blocks()}


def scenario_keeper(doc: str, state_dir: str) -> dict:
    """The one-shot apply's keeper (its save written while the last stage commits),
    then a second start adopting what it saved."""
    from agent.compiler.render import render_ruleset
    from agent.reconciler import keeper as keeper_mod, staged as staged_mod
    from agent.reconciler.port import RealKernel
    from agent.reconciler.stamp import build_token
    from agent.reconciler.store import StateStore
    staged_mod.STAGE_FROM = 1
    state = _state(doc)
    first = keeper_mod.Keeper(RealKernel(), store=StateStore(Path(state_dir)), stage_saves=True)
    first.adopt()
    result = first.apply(state, "r1")
    saved_early = first.saved_early()
    stamp = RealKernel().read_stamp()
    again = keeper_mod.Keeper(RealKernel(), store=StateStore(Path(state_dir)))
    found = again.adopt()
    second = again.apply(state, "r2")
    return {"mode": result.mode, "stamp_is_whole": stamp == build_token(render_ruleset(first.applied)),
            "saved_early": saved_early, "found": found, "second": second.mode,
            "left": sorted(p.name for p in Path(state_dir).iterdir())}


def scenario_existing(doc: str) -> dict:
    from agent.kernel.nft import apply_script
    from agent.reconciler.port import RealKernel
    from agent.reconciler.staged import apply_staged
    apply_script("table inet secgroup_agent {\n\tchain foreign {\n\t\tcounter\n\t}\n}\n")
    done = apply_staged(RealKernel(), _state(doc))
    kept = "chain foreign" in subprocess.run(["nft", "list", "table", "inet", "secgroup_agent"],
                                             capture_output=True, text=True).stdout
    apply_script("delete table inet secgroup_agent\n")
    return {"staged": done is not None, "kept": kept}


def scenario_refused_final(doc: str, state_dir: str) -> dict:
    """The last stage refused (a rule the kernel does not take): no partial table; the
    keeper then replaces the table in full."""
    from agent.compiler import staging
    from agent.reconciler import keeper as keeper_mod, staged as staged_mod
    from agent.reconciler.port import RealKernel
    from agent.reconciler.store import StateStore
    real = staging.render_final
    staged_mod.render_final = lambda rs, st: real(rs, st).replace("}\n", "\tchain broken {\n\t\tgoto nowhere\n\t}\n}\n", 1)
    done = staged_mod.apply_staged(RealKernel(), _state(doc))
    partial = RealKernel().tables_present((("inet", "secgroup_agent"),))
    staged_mod.STAGE_FROM = 1
    keeper = keeper_mod.Keeper(RealKernel(), store=StateStore(Path(state_dir)), stage_saves=True)
    result = keeper.apply(_state(doc), "r1")
    saved_early = keeper.saved_early()
    present = RealKernel().tables_present((("inet", "secgroup_agent"),))
    return {"staged": done is not None, "partial": partial, "mode": result.mode, "present": present,
            "saved_early": saved_early, "left": sorted(p.name for p in Path(state_dir).iterdir())}


# -- the tests ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ns():
    with scratch_namespace(NS) as name:
        yield name


@pytest.fixture(scope="module")
def doc(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("staged") / "doc.json"
    gen = subprocess.run([str(ROOT / "scripts" / "gen-config"), "--interfaces", "40", "--rules", "12",
                          "--remote", "30"], capture_output=True, text=True, check=True)
    path.write_text(gen.stdout)
    return str(path)


def _flush(ns: str) -> None:
    for family in ("inet", "bridge"):
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", family, "secgroup_agent"],
                       capture_output=True)


def test_staged_table_is_the_whole_scripts(ns, doc):
    got = run_scenario(ns, __file__, "equal", doc)
    _flush(ns)
    assert got["stages"] == 5                      # four stages and the last one
    assert len(got["staged"]) > 100
    assert got["staged"] == got["whole"]


def test_keeper_staged_apply_is_a_full_apply_and_a_second_changes_nothing(ns, doc):
    with tempfile.TemporaryDirectory() as state_dir:
        got = run_scenario(ns, __file__, "keeper", doc, state_dir)
    _flush(ns)
    assert got == {"mode": "full", "stamp_is_whole": True, "saved_early": True, "found": "adopted",
                   "second": "unchanged", "left": ["applied.pickle", "failclosed.nft", "ruleset.nft"]}


def test_existing_table_is_not_staged_into_nor_deleted(ns, doc):
    got = run_scenario(ns, __file__, "existing", doc)
    _flush(ns)
    assert got == {"staged": False, "kept": True}


def test_refused_last_stage_leaves_no_partial_table(ns, doc):
    with tempfile.TemporaryDirectory() as state_dir:
        got = run_scenario(ns, __file__, "refused_final", doc, state_dir)
    _flush(ns)
    assert got == {"staged": False, "partial": False, "mode": "full", "present": True,
                   "saved_early": True, "left": ["applied.pickle", "failclosed.nft", "ruleset.nft"]}


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    name, args = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(globals()[f"scenario_{name}"](*args)))
