"""Issue 16 parts of bench/datapath.py: counters on vs off, and the kernel memory of
the verdict chains (imported by it; run `bench/datapath.py --counters` / `--memory`).

* counters on/off: the agent's ruleset for the benchmark document as compiled ("on":
  every verdict chain `counter [ct mark set ...] VERDICT comment ...`) and the same
  ruleset with the verdict chains' `counter` and `ct mark set` statements removed
  ("off"), both loaded with `nft -f`, alternated window by window on the mixed receiver
  (on, off, on, off, ... ending with on): ratio = median(on) / median(off), and the paired
  ratio of each off window to the mean of the on windows around it (inverted).
* memory: `gen-config --interfaces 1000 --rules 100`, rendered on and off, each loaded into
  a fresh namespace `sgbdp<pid>-mem`: SUnreclaim (/proc/meminfo) before the load and
  after it settled, alternated, `--memory-rounds` each; the difference of the medians is
  what the counters and connection marks of the verdict chains cost (the chains
  themselves are in both).
"""
from __future__ import annotations

import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

_MARK = re.compile(r"^counter (?:ct mark set ct mark and \S+ or \S+ )?")


def counters_off(script: str) -> str:
    """A rendered ruleset with the verdict chains' counters and marks removed."""
    out, in_verdict = [], False
    for line in script.splitlines():
        if line.startswith("\tchain "):
            in_verdict = bool(re.match(r"\tchain v_\d+ \{", line))
        elif in_verdict and line.startswith("\t\t"):
            body = _MARK.sub("", line[2:])
            line = "\t\t" + (body if not body.startswith("comment ") else "continue " + body)
        out.append(line)
    return "\n".join(out) + "\n"


def counters_phase(measure: Callable[[str], float], load: Callable[[Path], float], on: Path, off: Path,
                   rounds: int) -> dict:
    """Alternate the two rulesets; `measure(label)` gives one window's pps."""
    series: list[tuple[str, float]] = []
    for i in range(2 * rounds + 1):
        label = "on" if i % 2 == 0 else "off"
        load(on if label == "on" else off)
        series.append((label, measure(label)))
        print(f"  counters {label}: {series[-1][1] / 1000:.0f}k pps", flush=True)
    on_r = [p for lab, p in series if lab == "on"]
    off_r = [p for lab, p in series if lab == "off"]
    paired = [((series[i - 1][1] + series[i + 1][1]) / 2) / p for i, (lab, p) in enumerate(series) if lab == "off"]
    return {"on_median": statistics.median(on_r), "on_min": min(on_r), "on_max": max(on_r),
            "off_median": statistics.median(off_r), "off_min": min(off_r), "off_max": max(off_r),
            "ratio": statistics.median(on_r) / statistics.median(off_r),
            "paired_median": statistics.median(paired), "paired_min": min(paired), "paired_max": max(paired)}


def sunreclaim() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("SUnreclaim:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no SUnreclaim in /proc/meminfo")


def settle(timeout: float = 40.0) -> int:
    prev = sunreclaim()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1.0)
        cur = sunreclaim()
        if abs(cur - prev) < 4096:
            return cur
        prev = cur
    return prev


def memory_phase(prefix: str, on: Path, off: Path, rounds: int) -> dict:
    """SUnreclaim taken by loading each script into a fresh namespace, alternated."""
    got: dict[str, list[int]] = {"on": [], "off": []}
    ns = f"{prefix}-mem"
    for _ in range(rounds):
        for label, script in (("on", on), ("off", off)):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            try:
                before = settle()
                subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", str(script)], check=True, timeout=900)
                after = settle()
            finally:
                subprocess.run(["ip", "netns", "del", ns], check=False)
            got[label].append(after - before)
            print(f"  memory {label}: SUnreclaim +{(after - before) / 2 ** 20:.1f} MiB", flush=True)
            settle()
    return {label: {"median": statistics.median(v), "min": min(v), "max": max(v)} for label, v in got.items()}
