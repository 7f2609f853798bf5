#!/usr/bin/env python3
"""Logging cost benchmark: a UDP flood dropped by a verdict chain, with and without a
rate-limited log statement and the agent's NFLOG reader, measured in the same run,
interleaved (nolog -> log -> nolog -> log ...), medians with min-max.

Prints figures; it is not a test. Needs root and trafgen (netsniff-ng). Everything
happens in network namespaces `sgbl<pid>-*` created here and deleted at the end (also
on failure); the root namespace's ruleset, routes and sysctls are never touched.

    .venv/bin/python bench/log_flood.py                       # 5 rounds of 5 s windows
    .venv/bin/python bench/log_flood.py --rounds 3 --window 4 --rate 100

Method
* hv routes vm1 (10.77.1.2, tap1) to vm2 (10.77.2.2, tap2). hv's table is in the
  attribution formats (agent/compiler/attribution.py): forward_ingress jumps to `v_7`
  for UDP to tap2. Variant `nolog`: v_7 = `counter drop` (comment on the counter);
  variant `log`: v_7 = `limit rate R/second burst R packets log group 2701 prefix
  "sg:7:" comment ...` then `counter drop`, with `secgroup-agent logs --json` reading
  the group in hv (its output to a file).
* `trafgen` in vm1 sends 60-byte UDP frames to vm2:9000 from 1,000 source ports, one
  worker (`--workers`), as fast as it can (the flood rate is what this machine reaches).
* Per window: v_7's counter read at its start and end (packets decided), the busy CPU
  time of the whole machine (/proc/stat), the reader's CPU time (/proc/PID/stat) and the
  lines it wrote. Figures: decided packets/s, machine CPU-ns per decided packet (the
  cost of one drop, kernel and reader together; other load on the machine is noise
  here: run it on an idle box and read `uptime`), the reader's share of one core, the
  lines per second written against the limit R.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.compiler.attribution import ct_mark_statement, log_prefix  # noqa: E402

KEY = "ingress/user/sg-db/no-udp/10/drop"
HZ = os.sysconf("SC_CLK_TCK")


def table(variant: str, rate: int) -> str:
    first = (f'limit rate {rate}/second burst {rate} packets log group 2701 prefix "{log_prefix(7)}" comment "{KEY}"\n'
             "    counter drop" if variant == "log" else f'counter comment "{KEY}"\n    drop')
    return f"""table inet secgroup_agent
delete table inet secgroup_agent
table inet secgroup_agent {{
  chain v_7 {{
    {first}
  }}
  chain v_5 {{
    {ct_mark_statement(5, "egress")} accept
  }}
  chain forward_ingress {{
    type filter hook forward priority 10; policy accept;
    oifname "tap2" meta l4proto udp jump v_7
  }}
}}
"""


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60, **kw)


class Rig:
    def __init__(self, tmp: Path, workers: int = 1) -> None:
        self.tmp, self.workers = tmp, workers
        p = f"sgbl{os.getpid()}"
        self.hv, self.vm1, self.vm2 = f"{p}-hv", f"{p}-vm1", f"{p}-vm2"
        self.reader: subprocess.Popen | None = None
        self.tg: subprocess.Popen | None = None

    def setup(self) -> None:
        for ns in (self.hv, self.vm1, self.vm2):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for i, vm in ((1, self.vm1), (2, self.vm2)):
            sh("ip", "link", "add", f"tap{i}", "netns", self.hv, "type", "veth", "peer", "name", "eth0", "netns", vm)
            sh("ip", "-n", self.hv, "addr", "add", f"10.77.{i}.1/24", "dev", f"tap{i}")
            sh("ip", "-n", vm, "addr", "add", f"10.77.{i}.2/24", "dev", "eth0")
            sh("ip", "-n", self.hv, "link", "set", f"tap{i}", "up")
            sh("ip", "-n", vm, "link", "set", "eth0", "up")
        sh("ip", "netns", "exec", self.hv, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "-n", self.hv, "neigh", "replace", "10.77.2.2", "lladdr", "02:00:00:00:00:02", "dev", "tap2")
        smac = json.loads(sh("ip", "-n", self.vm1, "-j", "link", "show", "eth0").stdout)[0]["address"]
        dmac = json.loads(sh("ip", "-n", self.hv, "-j", "link", "show", "tap1").stdout)[0]["address"]
        (self.tmp / "udp.trafgen").write_text(
            f"{{ eth(sa={smac}, da={dmac}), ipv4(sa=10.77.1.2, da=10.77.2.2, ttl=64), "
            f"udp(sp=dinc(20000, 20999), dp=9000, csum=0), fill(0x41, 18) }}\n")

    def apply(self, variant: str, rate: int) -> None:
        sh("ip", "netns", "exec", self.hv, "nft", "-f", "-", input=table(variant, rate))

    def counter(self) -> int:
        text = sh("ip", "netns", "exec", self.hv, "nft", "list", "chain", "inet", "secgroup_agent", "v_7").stdout
        return int(re.search(r"counter packets (\d+)", text).group(1))

    def start_reader(self, out: Path) -> None:
        self.reader = subprocess.Popen(["ip", "netns", "exec", self.hv, sys.executable, "-m", "agent.cli", "logs",
                                        "--json"], cwd=ROOT, stdout=out.open("w"), stderr=subprocess.PIPE, text=True)
        assert self.reader.stderr is not None
        if "reading NFLOG" not in self.reader.stderr.readline():
            raise RuntimeError("the reader did not start")

    def stop_reader(self) -> dict:
        """Stop the reader; its summary (counts of lines written and of losses)."""
        summary: dict = {}
        if self.reader is not None:
            self.reader.send_signal(signal.SIGINT)
            try:
                _, err = self.reader.communicate(timeout=10)
                lines = [ln for ln in err.splitlines() if ln.startswith('{"type":"summary"')]
                summary = json.loads(lines[-1]) if lines else {}
            except subprocess.TimeoutExpired:
                self.reader.kill()
            self.reader = None
        return summary

    def start_flood(self) -> None:
        self.tg = subprocess.Popen(["ip", "netns", "exec", self.vm1, "trafgen", "-o", "eth0", "-c",
                                    str(self.tmp / "udp.trafgen"), "--cpus", str(self.workers)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(1.0)

    def stop_flood(self) -> None:
        if self.tg is not None:
            try:
                os.killpg(self.tg.pid, signal.SIGTERM)
                self.tg.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.tg.pid, signal.SIGKILL)
            self.tg = None

    def close(self) -> None:
        self.stop_flood()
        self.stop_reader()
        for ns in (self.hv, self.vm1, self.vm2):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def busy_seconds() -> tuple[float, float]:
    """(all but idle and iowait, softirq) CPU seconds of the machine so far."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / HZ, fields[6] / HZ


def process_seconds(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / HZ


def window(rig: Rig, variant: str, rate: int, seconds: float) -> dict:
    rig.apply(variant, rate)
    out = rig.tmp / f"lines-{variant}.jsonl"
    if variant == "log":
        rig.start_reader(out)
    rig.start_flood()
    try:
        n0, b0, t0 = rig.counter(), busy_seconds(), time.monotonic()
        r0 = process_seconds(rig.reader.pid) if rig.reader else 0.0
        l0 = len(out.read_text().splitlines()) if variant == "log" else 0
        time.sleep(seconds)
        n1, b1, t1 = rig.counter(), busy_seconds(), time.monotonic()
        r1 = process_seconds(rig.reader.pid) if rig.reader else 0.0
        l1 = len(out.read_text().splitlines()) if variant == "log" else 0
    finally:
        rig.stop_flood()
        summary = rig.stop_reader()
    dt = t1 - t0
    lost = sum(summary.get(k, 0) for k in ("kernel_overruns", "kernel_gaps", "queue_full"))
    n = max(1, n1 - n0)
    return {"pps": (n1 - n0) / dt, "ns_per_packet": (b1[0] - b0[0]) / n * 1e9, "softirq_ns": (b1[1] - b0[1]) / n * 1e9,
            "reader_core": (r1 - r0) / dt, "lines_per_s": (l1 - l0) / dt, "lost": lost}


def summary(values: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--rate", type=int, default=100, help="the log statement's limit, per second (default 100)")
    ap.add_argument("--workers", type=int, default=1, help="trafgen workers (default 1)")
    args = ap.parse_args()
    print(f"# {os.uname().release}, {os.cpu_count()} CPUs, {args.workers} trafgen worker(s); "
          f"uptime: {sh('uptime').stdout.strip()}", flush=True)
    results: dict[str, list[dict]] = {"nolog": [], "log": []}
    with tempfile.TemporaryDirectory(prefix="sgbl-") as tmp:
        rig = Rig(Path(tmp), args.workers)
        try:
            rig.setup()
            for r in range(args.rounds):
                for variant in ("nolog", "log"):
                    results[variant].append(w := window(rig, variant, args.rate, args.window))
                    print(f"  round {r + 1} {variant:5s} {w['pps'] / 1e3:7.0f} kpps  {w['ns_per_packet']:6.0f} ns/pkt "
                          f"(softirq {w['softirq_ns']:5.0f})  "
                          f"reader {w['reader_core'] * 100:4.1f} %  {w['lines_per_s']:6.1f} lines/s  lost {w['lost']}", flush=True)
        finally:
            rig.close()
    for variant, rows in results.items():
        print(f"{variant:5s}: {summary([w['pps'] / 1e3 for w in rows], '{:.0f}')} kpps decided, "
              f"{summary([w['ns_per_packet'] for w in rows], '{:.0f}')} CPU-ns/packet (softirq "
              f"{summary([w['softirq_ns'] for w in rows], '{:.0f}')}), reader "
              f"{summary([w['reader_core'] * 100 for w in rows], '{:.1f}')} % of a core, "
              f"{summary([w['lines_per_s'] for w in rows], '{:.1f}')} lines/s (limit {args.rate}/s), "
              f"{sum(w['lost'] for w in rows)} lost")
    ratio = [lg["ns_per_packet"] / nl["ns_per_packet"] for nl, lg in zip(results["nolog"], results["log"])]
    print(f"CPU per packet, log / nolog (paired by round): {summary(ratio, '{:.3f}')}")
    soft = [lg["softirq_ns"] / nl["softirq_ns"] for nl, lg in zip(results["nolog"], results["log"]) if nl["softirq_ns"]]
    if soft:
        print(f"softirq CPU per packet, log / nolog (paired by round): {summary(soft, '{:.3f}')}")
    print(f"# uptime after: {sh('uptime').stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
