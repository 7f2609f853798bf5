"""agent.kernel.elements on the real kernel, in a network namespace of its own: element
changes committed over netlink leave exactly what libnftables holds for a set declared
with the resulting elements (compared as `nft -j` element lists and as the raw kernel
elements of `nft --debug=netlink`), a refused batch changes nothing, and a commit does
not depend on the size of the table (unlike libnftables `add element`).

The kernel-side parts run in this file as a script under `ip netns exec` (`main`)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scratch import run_scenario, scratch_namespace

pytestmark = [pytest.mark.kernel,
              pytest.mark.require_root]
NS = f"sgel{os.getpid() % 100000}"
V4C, V6C = "ipv4_addr . inet_proto . inet_service", "ipv6_addr . inet_proto . inet_service"
MAX6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
# name: (type, initial elements, removed, added)
SETS = {
    "a": (V4C, ["10.0.0.0-10.0.0.255 . 6 . 80", "10.0.1.5 . 17 . 53", "10.1.0.1 . 0-255 . 1000-2000",
                "10.0.0.0-10.0.0.255 . 6 . 443", "192.168.0.0-192.168.255.255 . 6 . 443"],
          ["10.0.0.0-10.0.0.255 . 6 . 80", "10.0.1.5 . 17 . 53"],
          ["10.0.0.0-10.0.0.127 . 6 . 80", "10.0.0.128-10.0.0.255 . 17 . 80", "10.0.1.5 . 6 . 53",
           "0.0.0.0-255.255.255.255 . 1 . 0-65535"]),
    "b": (V6C, ["fd00::-fd00::ff . 6 . 22", "fd00::1:5 . 17 . 53-54", f"2001:db8::-2001:db8:{MAX6[10:]} . 6 . 443"],
          ["fd00::-fd00::ff . 6 . 22"],
          ["fd00::-fd00::7f . 6 . 22", "fd00::80-fd00::ff . 6 . 23", f"::-{MAX6} . 58 . 0-65535"]),
    "c": ("ipv4_addr", ["10.0.0.1", "10.0.0.2", "10.0.0.5", "10.2.0.0-10.2.0.255", "10.9.0.0-10.9.255.255",
                        "10.250.0.0-255.255.255.255"],
          ["10.0.0.2", "10.2.0.0-10.2.0.255", "10.250.0.0-255.255.255.255"],
          ["10.0.0.0", "10.0.0.4", "10.0.0.6", "10.2.0.0-10.2.0.127", "10.2.0.128-10.2.0.255",
           "10.251.0.0-255.255.255.255", "0.0.0.0-0.0.0.255"]),
    "d": ("ipv4_addr . inet_proto", ["10.0.0.0-10.0.0.255 . 6", "10.0.0.5 . 17", "10.3.0.0-10.3.0.3 . 0-255"],
          ["10.0.0.0-10.0.0.255 . 6", "10.3.0.0-10.3.0.3 . 0-255"],
          ["10.0.0.0-10.0.0.255 . 0-16", "10.3.0.0-10.3.0.1 . 0-255", "10.3.0.2-10.3.0.3 . 0-255"]),
    "e": ("inet_service", ["22", "80-81", "443"], ["22"], ["23", "82-442", "8000-65535"]),
    "f": ("ipv6_addr", ["fd00::1", "fd00::2", "fd00::10-fd00::1f"], ["fd00::2"],
          ["fd00::3", "fd00::20-fd00::2f", f"fe80::-{MAX6}"]),
}


def table_script(table: str, sets: dict[str, tuple[str, list[str]]]) -> str:
    lines = [f"table inet {table} {{"]
    for name, (typ, elements) in sets.items():
        elems = f" elements = {{ {', '.join(elements)} }};" if elements else ""
        lines.append(f"  set {name} {{ type {typ}; flags interval;{elems} }}")
    return "\n".join(lines + ["}", ""])


def final_elements(initial: list[str], removed: list[str], added: list[str]) -> list[str]:
    return [e for e in initial if e not in removed] + added


# -- run inside the namespace ---------------------------------------------------------
def _nft(*args: str) -> str:
    proc = subprocess.run(["nft", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _state(table: str, name: str, kind: str = "set") -> dict:
    """The elements as nft lists them (JSON, sorted) and as the kernel holds them (raw)."""
    found = json.loads(_nft("-j", "list", kind, "inet", table, name))["nftables"]
    elems = next(o[kind] for o in found if kind in o).get("elem", [])
    raw = re.findall(r"^\s*element (.*)$", _nft("--debug=netlink", "list", kind, "inet", table, name), re.M)
    # libnftables adds an end element at key 0 to a set it fills while empty (nothing
    # matches an end element); whether a set has it depends on its history, not content
    raw = [r for r in raw if not re.fullmatch(r"[0 ]+: 1 \[end\]", r.strip())]
    return {"json": sorted(json.dumps(e, sort_keys=True) for e in elems), "raw": sorted(r.strip() for r in raw)}


def element_change(table: str, name: str, set_type: str, removed, added):
    """Elements leaving and joining the interval set `name` of table inet `table`."""
    from agent.compiler.transaction import ElementChange
    from agent.compiler.ruleset import NftSet
    return ElementChange("inet", table, NftSet(name, set_type, ()), tuple(removed), tuple(added))


def scenario_content() -> dict:
    from agent.kernel.nft import apply_script
    from agent.kernel.elements import commit_element_changes
    apply_script(table_script("sgtest", {n: (t, init) for n, (t, init, _r, _a) in SETS.items()}))
    changes = [element_change("sgtest", n, t, r, a) for n, (t, _i, r, a) in SETS.items()]
    took = commit_element_changes(changes)
    apply_script(table_script("sgref", {n: (t, final_elements(i, r, a)) for n, (t, i, r, a) in SETS.items()}))
    out = {n: {"got": _state("sgtest", n), "want": _state("sgref", n)} for n in SETS}
    apply_script("delete table inet sgtest\ndelete table inet sgref\n")
    return {"took": took, "sets": out}


# verdict maps as the compiler makes them: member-path runs (concatenated, intervals) and
# points (concatenated, exact keys); deletions name the key alone, as agent.compiler.transaction does
MAPS = {
    "m": ("ipv4_addr . inet_proto . inet_service", True,
          ["10.0.0.0-10.0.0.255 . 6 . 80 : accept", "10.1.0.0-10.1.0.255 . 17 . 53 : drop"],
          ["10.0.0.0-10.0.0.255 . 6 . 80"],
          ["10.0.0.0-10.0.0.255 . 6 . 80-90 : drop", "10.2.0.0-10.2.0.255 . 0-255 . 0-65535 : accept"]),
    "p": ("ipv4_addr . inet_proto . inet_service", False, ["10.0.0.1 . 17 . 9 : drop", "10.0.0.3 . 6 . 22 : accept"],
          ["10.0.0.1 . 17 . 9"], ["10.0.0.1 . 17 . 9 : accept", "10.0.0.2 . 6 . 80 : drop"]),
    "q": ("inet_proto . inet_service", True, ["6 . 22 : accept"], [], ["17 . 1000-2000 : drop"]),
    # region maps since issue 16: each box jumps to its line's verdict chain
    "g": ("ipv4_addr . inet_proto . inet_service", True,
          ["10.0.0.0-10.0.0.255 . 6 . 80 : goto v_1", "10.1.0.0-10.1.0.255 . 17 . 53 : goto v_2"],
          ["10.0.0.0-10.0.0.255 . 6 . 80"],
          ["10.0.0.0-10.0.0.255 . 6 . 80 : goto v_2", "10.3.0.0-10.3.0.255 . 0-255 . 0-65535 : jump v_1"]),
    "h": ("ipv4_addr . inet_proto . inet_service", False, ["10.0.0.1 . 17 . 9 : goto v_1"],
          ["10.0.0.1 . 17 . 9"], ["10.0.0.1 . 17 . 9 : goto v_2", "10.0.0.2 . 6 . 80 : goto v_1"]),
}


def map_script(table: str, maps: dict[str, tuple[str, bool, list[str]]]) -> str:
    lines = [f"table inet {table} {{", "  chain v_1 { counter accept; }", "  chain v_2 { counter drop; }"]
    for name, (typ, interval, elements) in maps.items():
        elems = f" elements = {{ {', '.join(elements)} }};" if elements else ""
        lines.append(f"  map {name} {{ type {typ} : verdict;{' flags interval;' if interval else ''}{elems} }}")
    return "\n".join(lines + ["}", ""])


def scenario_maps() -> dict:
    from agent.compiler.transaction import ElementChange, map_key
    from agent.kernel.nft import apply_script
    from agent.kernel.elements import commit_element_changes
    from agent.compiler.ruleset import NftSet
    apply_script(map_script("sgmtest", {n: (t, iv, init) for n, (t, iv, init, _r, _a) in MAPS.items()}))
    took = commit_element_changes([ElementChange("inet", "sgmtest", NftSet(n, t, (), iv, "verdict"), tuple(r), tuple(a))
                                   for n, (t, iv, _i, r, a) in MAPS.items()])
    final = {n: (t, iv, [e for e in init if map_key(e) not in r] + a) for n, (t, iv, init, r, a) in MAPS.items()}
    apply_script(map_script("sgmref", final))
    out = {n: {"got": _state("sgmtest", n, "map"), "want": _state("sgmref", n, "map")} for n in MAPS}
    apply_script("delete table inet sgmtest\ndelete table inet sgmref\n")
    return {"took": took, "sets": out}


def scenario_large(count: int, changed: int) -> dict:
    """Large changes: many messages (each < 64 KB) in one batch."""
    from agent.kernel.nft import apply_script
    from agent.kernel.elements import commit_element_changes
    made = {V4C: lambda i: f"10.{i // 250 % 250}.{i % 250}.0-10.{i // 250 % 250}.{i % 250}.127 . 6 . {i % 60000}",
            "ipv4_addr": lambda i: f"{10 + i // 62500}.{i // 250 % 250}.{i % 250}.{i % 2 * 100}"}
    sets = {f"l{n}": (typ, [f(i) for i in range(count)], [f(i) for i in range(changed)],
                      [f(i) for i in range(count, count + changed)]) for n, (typ, f) in enumerate(made.items())}
    apply_script(table_script("sgtest", {n: (t, init) for n, (t, init, _r, _a) in sets.items()}))
    changes = [element_change("sgtest", n, t, r, a) for n, (t, _i, r, a) in sets.items()]
    took = commit_element_changes(changes)
    apply_script(table_script("sgref", {n: (t, final_elements(i, r, a)) for n, (t, i, r, a) in sets.items()}))
    same = all(_state("sgtest", n) == _state("sgref", n) for n in sets)
    apply_script("delete table inet sgtest\ndelete table inet sgref\n")
    return {"took": took, "same": same}


def scenario_refused() -> dict:
    from agent.errors import KernelError
    from agent.kernel.nft import apply_script
    from agent.kernel.elements import commit_element_changes
    apply_script(table_script("sgtest", {n: (t, init) for n, (t, init, _r, _a) in SETS.items()}))
    before = {n: _state("sgtest", n) for n in SETS}
    good = [element_change("sgtest", n, t, r, a) for n, (t, _i, r, a) in SETS.items()]
    bad = {"missing-concat": element_change("sgtest", "a", V4C, ("10.77.0.1 . 6 . 80",), ()),
           "missing-rbtree": element_change("sgtest", "c", "ipv4_addr", ("10.0.0.3",), ()),
           "overlap-concat": element_change("sgtest", "d", "ipv4_addr . inet_proto", (), ("10.0.0.5-10.0.0.6 . 17",)),
           "overlap-rbtree": element_change("sgtest", "c", "ipv4_addr", (), ("10.0.0.0-10.0.0.1",)),
           "duplicate": element_change("sgtest", "e", "inet_service", (), ("443",)),
           "missing-set": element_change("sgtest", "nosuch", "ipv4_addr", (), ("10.0.0.9",))}
    errors = {}
    for what, change in bad.items():
        try:
            commit_element_changes(good + [change])
            errors[what] = None
        except KernelError as exc:
            errors[what] = str(exc)
    after = {n: _state("sgtest", n) for n in SETS}
    apply_script("delete table inet sgtest\n")
    return {"errors": errors, "unchanged": before == after}


def scenario_timing(sets: int, per_set: int, rounds: int) -> dict:
    """A table like the agent's: region sets (concatenations) and group sets (single
    field, rbtree: libnftables fetches the elements of all of these before any element
    command). Per kind of set: 1 element removed + 1 added, over netlink, then by nft."""
    from agent.kernel.nft import apply_script
    from agent.kernel.elements import commit_element_changes
    kinds = {0: (V4C, lambda s, e: f"10.{s // 250}.{s % 250}.{e % 250} . 6 . {1000 + e}"),
             1: ("ipv4_addr", lambda s, e: f"{10 + e // 250}.{s // 250}.{s % 250}.{e % 250}")}
    lines = ["table inet sgbig {"]
    for s in range(sets):
        typ, element = kinds[s % 2]
        elems = ", ".join(element(s, e) for e in range(per_set))
        lines.append(f"  set s{s} {{ type {typ}; flags interval; elements = {{ {elems} }}; }}")
    apply_script("\n".join(lines + ["}", ""]))
    out: dict = {}
    for kind, (typ, element) in kinds.items():
        target = sets // 2 + kind
        name, netlink, libnft, old = f"s{target}", [], [], element(target, 0)
        for r in range(rounds):
            new, newer = element(target + 1000 * (r + 1), 0), element(target + 1000 * (r + 1), 1)
            netlink.append(commit_element_changes([element_change("sgbig", name, typ, (old,), (new,))]))
            libnft.append(apply_script(f"delete element inet sgbig {name} {{ {new} }}\n"
                                       f"add element inet sgbig {name} {{ {newer} }}\n"))
            old = newer
        out[typ] = {"netlink": netlink, "libnftables": libnft, "elements": len(_state("sgbig", name)["json"])}
    apply_script("delete table inet sgbig\n")
    return out


def scenario_monitor() -> dict:
    """The drift monitor takes a netlink commit for the agent's own (by its thread name:
    run in a PID namespace) and `nft add element` by another process for foreign."""
    from agent.kernel import monitor as nftmon
    from agent.kernel.nft import apply_script
    from agent.kernel.elements import commit_element_changes
    apply_script(table_script("sgmon", {"c": ("ipv4_addr", ["10.0.0.1"])}))
    seen: list = []
    watch = nftmon.TableWatch({("inet", "sgmon")}, lambda what, objects: seen.append(what), lambda: seen.append("overflow"))
    watch.start()
    time.sleep(0.3)
    commit_element_changes([element_change("sgmon", "c", "ipv4_addr", ("10.0.0.1",), ("10.0.0.2",))])
    time.sleep(0.5)
    own = len(seen)
    _nft("add", "element", "inet", "sgmon", "c", "{ 10.0.0.9 }")
    deadline = time.monotonic() + 3
    while len(seen) == own and time.monotonic() < deadline:
        time.sleep(0.05)
    watch.close()
    apply_script("delete table inet sgmon\n")
    return {"own": own, "foreign": len(seen) - own}


def main(argv: list[str]) -> None:
    scenarios = {"content": scenario_content, "maps": scenario_maps, "refused": scenario_refused, "timing": scenario_timing,
                 "monitor": scenario_monitor, "large": scenario_large}
    print(json.dumps(scenarios[argv[0]](*json.loads(argv[1]) if len(argv) > 1 else ())))


# -- the tests -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ns():
    with scratch_namespace(NS) as name:
        yield name


def in_ns(ns: str, scenario: str, *args, prefix: tuple = ()) -> dict:
    return run_scenario(ns, str(Path(__file__).resolve()), scenario, *args, prefix=prefix)


def test_changes_leave_what_libnftables_declares(ns):
    result = in_ns(ns, "content")
    for name, state in result["sets"].items():
        assert state["got"]["json"] == state["want"]["json"], name
        assert state["got"]["raw"] == state["want"]["raw"], name
    assert result["took"] < 1.0


def test_verdict_map_changes_leave_what_libnftables_declares(ns):
    result = in_ns(ns, "maps")
    for name, state in result["sets"].items():
        assert state["got"]["json"] == state["want"]["json"], name
        assert state["got"]["raw"] == state["want"]["raw"], name


def test_large_changes_in_one_batch(ns):
    count, changed = 3000, 2000
    result = in_ns(ns, "large", count, changed)
    print(f"\n2 sets x {count} elements, {changed} removed + {changed} added in each: "
          f"netlink {result['took'] * 1000:.1f} ms")
    assert result["same"]


def test_a_refused_change_changes_nothing(ns):
    result = in_ns(ns, "refused")
    errors = result["errors"]
    assert result["unchanged"]
    assert all(errors.values()), errors
    assert "deleting '10.77.0.1 . 6 . 80' in set a: No such file or directory" in errors["missing-concat"]
    assert "deleting '10.0.0.3' in set c: No such file or directory" in errors["missing-rbtree"]
    assert "adding '10.0.0.5-10.0.0.6 . 17' in set d: File exists" in errors["overlap-concat"]
    assert "adding '10.0.0.0-10.0.0.1' in set c: File exists" in errors["overlap-rbtree"]
    assert "adding '443' in set e: File exists" in errors["duplicate"]
    assert "in set nosuch: No such file or directory" in errors["missing-set"]


def test_own_netlink_commits_are_not_drift(ns):
    if shutil.which("unshare") is None:
        pytest.skip("unshare missing")
    result = in_ns(ns, "monitor", prefix=("unshare", "--pid", "--fork", "--mount-proc"))
    assert result == {"own": 0, "foreign": 1}


def test_commit_cost_does_not_grow_with_the_table(ns):
    sets, per_set, rounds = 300, 300, 3
    result = in_ns(ns, "timing", sets, per_set, rounds)
    print()
    for typ, r in result.items():
        netlink, libnft = min(r["netlink"]), min(r["libnftables"])
        print(f"{sets} sets x {per_set} elements, 1 removed + 1 added in a set of type {typ}: netlink "
              f"{netlink * 1000:.2f} ms, libnftables {libnft * 1000:.1f} ms (best of {rounds}; all ms: "
              f"{[round(t * 1000, 2) for t in r['netlink']]} / {[round(t * 1000, 1) for t in r['libnftables']]})")
        assert r["elements"] == per_set
        assert netlink < libnft


if __name__ == "__main__":
    main(sys.argv[1:])
