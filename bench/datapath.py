#!/usr/bin/env python3
"""Datapath benchmark: the new-flow packet rate into an interface whose ingress list
holds N rules that do not match and then one accept that does, divided by the rate into
an interface with that accept alone, measured in the same run, interleaved
(base -> config -> base -> config ...), medians.

Prints figures; it is not a test. Needs root. Everything happens in network namespaces
`sgbdp<pid>-*` created here and deleted at the end (also on failure); the root
namespace's ruleset, routes and sysctls are never touched.

    .venv/bin/python bench/datapath.py                      # N = 0, 1000, 10000; 7 rounds
    .venv/bin/python bench/datapath.py --n 1000 --rounds 3
    .venv/bin/python bench/datapath.py --n 1000 --counters-only        # counters on vs off (issue 16)
    .venv/bin/python bench/datapath.py --memory-only                   # verdict chains' kernel memory

Method
* Sandbox hypervisor (sandbox.hypervisor, routed). Sender i1 (tap-i1, 10.0.0.1); three
  receivers, each in its own security group:
    base   tap-i2 10.0.0.2  the accept alone: udp/9 from 0.0.0.0/0
    drop   tap-i3 10.0.0.3  N drop rules at priority 1, udp/9 from distinct /32 sources
                            in 198.18.0.0/15 (every other address: no two adjacent), then
                            the accept at priority 2
    mixed  tap-i4 10.0.0.4  N accept rules (tcp and udp, distinct /32 sources, distinct
                            ports) at priorities 1..99, then the accept at priority 100
    peers  tap-i5 10.0.0.5  the mixed list plus 20 group-peer rules (drop and accept in
                            turn, tcp/udp ports the probe does not use) at priorities
                            interleaved with it, each naming a group of 1,000 members on
                            other hosts (100.64.0.0/10); the sender is in none of them
  All three are ONE desired-state document per N, applied with the agent
  (`ip netns exec HV .venv/bin/python -m agent.cli.main apply -c F --host bench`), so what is
  measured is what the agent compiles. For reference the same lists are measured in the
  naive layout: the agent's ruleset with the drop/mixed receivers' policy chains replaced
  by one nft rule per line of the effective list, loaded with `nft -f`.
* `trafgen` (netsniff-ng) in i1 sends UDP to <receiver>:9 from 1,000 fixed source ports.
  Nothing replies: every flow stays `new` in hv's conntrack and every packet is
  classified by the receiver's ingress list (the sender's egress list is the same for
  all receivers). Default TX-ring path, one worker (`--cpus 1`); trafgen pins its
  worker to a CPU, the benchmark resets that affinity to all CPUs (pins nothing).
  Started with setsid, stopped with SIGTERM to its process group (signalling only the
  parent leaves the worker running).
* Each receiver counts the packets in an nft counter at its input hook and drops them
  (no ICMP port unreachable, no replies); a helper process inside the receiver reads
  the counter at the start and end of the window (rate = delta / time between reads).
* Per window: flush hv's conntrack, start trafgen, warm up, measure, stop trafgen.
  Order per phase: base, drop, base, mixed, base, drop, ... ending with base. Ratio =
  median(config) / median(base); the paired ratio divides each measurement by the mean
  of the two base windows around it. N = 0 shows the noise floor (all three receivers
  then hold the accept alone).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.compiler.compile import Chain, build_ruleset  # noqa: E402
from agent.model.objects import INGRESS  # noqa: E402
from agent.policy.effective import DEFAULTS, PROTOCOL_FAMILY, PROTOCOL_NUMBERS, USER, build_effective_list  # noqa: E402
from agent.compiler.render import render_ruleset  # noqa: E402
from sandbox.hypervisor import Sandbox, check_tools, run  # noqa: E402
from datapath_attr import counters_off, counters_phase, memory_phase  # noqa: E402
from agent.model.validate import load_state  # noqa: E402

HOST = "bench"
PY = str(ROOT / ".venv" / "bin" / "python")
SENDER = ("i1", "tap-i1", "10.0.0.1")
RECEIVERS = {"base": ("i2", "tap-i2", "10.0.0.2"),
             "drop": ("i3", "tap-i3", "10.0.0.3"),
             "mixed": ("i4", "tap-i4", "10.0.0.4"),
             "peers": ("i5", "tap-i5", "10.0.0.5")}
PEER_GROUPS, PEER_MEMBERS = 20, 1000   # the peers receiver's group-peer rules, members per group
SRC_PORTS = (10000, 10999)          # 1,000 flows
DPORT = 9
RX_TABLE = "sgbrx"
TARGETS = {1000: 0.95, 10000: 0.9}

READER = r"""
import json, sys, time, nftables
n = nftables.Nftables(); n.set_json_output(True)
def read():
    rc, out, err = n.cmd("list counter inet %s rx")
    if rc != 0:
        raise SystemExit(err)
    return next(o["counter"]["packets"] for o in json.loads(out)["nftables"] if "counter" in o)
print("READY", flush=True)
for line in sys.stdin:
    dur = float(line)
    a = time.monotonic(); c1 = read(); t1 = (a + time.monotonic()) / 2
    time.sleep(dur)
    a = time.monotonic(); c2 = read(); t2 = (a + time.monotonic()) / 2
    print(json.dumps({"packets": c2 - c1, "seconds": t2 - t1}), flush=True)
""" % RX_TABLE


# -- the desired-state document ----------------------------------------------------------
def _addr(i: int) -> str:
    """Distinct, pairwise non-adjacent /32s in 198.18.0.0/15 (benchmark range)."""
    return str(ipaddress.IPv4Address("198.18.0.0") + 2 * i + 2)


def _match_rule(priority: int) -> dict:
    return {"id": "zz-match", "direction": "ingress", "policy": "accept", "protocol": "udp",
            "port_range": f"{DPORT}/{DPORT}", "source_cidr": "0.0.0.0/0", "priority": priority}


def group_rules(variant: str, n: int) -> list[dict]:
    if variant == "base":
        return [_match_rule(2)]
    if variant == "drop":
        return [{"id": f"d{i:05d}", "direction": "ingress", "policy": "drop", "priority": 1,
                 "protocol": "udp", "port_range": f"{DPORT}/{DPORT}", "source_cidr": f"{_addr(i)}/32"}
                for i in range(n)] + [_match_rule(2)]
    rules = []
    for i in range(n):
        port = 1000 + (i * 7) % 50000
        rules.append({"id": f"a{i:05d}", "direction": "ingress", "policy": "accept",
                      "priority": 1 + i % 99, "protocol": "tcp" if i % 2 else "udp",
                      "port_range": f"{port}/{port + i % 3}", "source_cidr": f"{_addr(i)}/32"})
    return rules + [_match_rule(100)]


def peer_rules(n: int) -> list[dict]:
    out = group_rules("mixed", n)
    for g in range(PEER_GROUPS):
        port = 20000 + g
        out.append({"id": f"p{g:02d}", "direction": "ingress", "policy": "drop" if g % 2 else "accept",
                    "priority": 1 + (g * 5) % 99, "protocol": "udp" if g % 3 else "tcp",
                    "port_range": f"{port}/{port}", "source_group": f"sg-m{g:02d}"})
    return out


def peer_groups() -> tuple[list[dict], list[dict]]:
    """The groups the peers receiver names, and their members on other hosts."""
    groups = [{"id": f"sg-m{g:02d}", "type": "custom", "rules": []} for g in range(PEER_GROUPS)]
    base = int(ipaddress.IPv4Address("100.64.0.0"))
    members = [{"id": f"r{g:02d}-{m:04d}", "host": "elsewhere", "security_groups": [f"sg-m{g:02d}"],
                "interfaces": [{"name": f"t{g:02d}{m:04d}", "addresses": [str(ipaddress.IPv4Address(base + g * 4096 + m + 1))]}]}
               for g in range(PEER_GROUPS) for m in range(PEER_MEMBERS)]
    return groups, members


def document(n: int) -> dict:
    groups, remote = peer_groups()
    groups = [{"id": "sg-tx", "type": "custom", "rules": []}] + groups
    instances = [{"id": SENDER[0], "host": HOST, "security_groups": ["sg-tx"],
                  "interfaces": [{"name": SENDER[1], "addresses": [SENDER[2]]}]}]
    for variant, (inst, tap, addr) in RECEIVERS.items():
        groups.append({"id": f"sg-{variant}", "type": "custom", "inner_access": "drop",
                       "rules": peer_rules(n) if variant == "peers" else group_rules(variant, n)})
        instances.append({"id": inst, "host": HOST, "security_groups": [f"sg-{variant}"],
                          "interfaces": [{"name": tap, "addresses": [addr]}]})
    return {"host": HOST, "security_groups": groups, "instances": instances + remote}


# -- what the agent compiles, and the naive layout (reference only) ------------------------
def _policy_chain(chains: dict, tap: str) -> str:
    return chains[f"in_{tap}"].rules[-1].split()[-1]          # "goto <policy chain>"


def compiled_summary(config: Path) -> dict[str, str]:
    rs = build_ruleset(load_state(config, HOST))
    inet = rs.tables[0]
    chains = {c.name: c for c in inet.chains}
    sets = {s.name: s for s in inet.sets}
    out = {}
    for variant, (_, tap, _) in RECEIVERS.items():
        policy = _policy_chain(chains, tap)
        used = [w[1:] for r in chains[policy].rules for w in r.split() if w.startswith("@")]
        sizes = ", ".join(f"@{u} {len(sets[u].elements)} elements" for u in used if u in sets)
        out[variant] = f"chain {policy}: {len(chains[policy].rules)} rules ({sizes or 'no set'})"
    return out


def naive_lines(entry, peer_kw: str) -> list[str]:
    """One nft rule per (line, address family) of the effective list."""
    m = entry.match
    out = []
    for net in m.networks:
        if PROTOCOL_FAMILY.get(m.protocol, net.version) != net.version:
            continue
        fam = "ip" if net.version == 4 else "ip6"
        parts = [f"meta nfproto ipv{net.version}" if net.prefixlen == 0 else f"{fam} {peer_kw} {net}"]
        if m.protocol in ("tcp", "udp"):
            if m.sports:
                parts.append(f"{m.protocol} sport {m.sports}")
            parts.append(f"{m.protocol} dport {m.ports}" if m.ports else f"meta l4proto {m.protocol}")
        elif m.protocol != "all":
            parts.append(f"meta l4proto {PROTOCOL_NUMBERS[m.protocol]}")
        out.append(" ".join(parts + [entry.verdict]))
    return out


def naive_script(config: Path) -> tuple[str, dict[str, int]]:
    """The agent's ruleset for `config` with the drop and mixed receivers' policy chains
    replaced by one rule per line (intra-group lines kept, sets they no longer use removed).
    The base receiver keeps the agent's chain. Returns the script and the chains' sizes."""
    state = load_state(config, HOST)
    rs = build_ruleset(state)
    inet = rs.tables[0]
    chains = {c.name: c for c in inet.chains}
    new, dropped, sizes = {}, set(), {}
    for variant in ("drop", "mixed"):
        tap = RECEIVERS[variant][1]
        policy = _policy_chain(chains, tap)
        lines = [r for r in chains[policy].rules if "@grp" in r]
        for e in build_effective_list(state, tap, INGRESS).entries:
            if e.stage in (USER, DEFAULTS):
                lines += naive_lines(e, "saddr")
        lines.append("drop")
        dropped |= {w[1:] for r in chains[policy].rules if "@grp" not in r for w in r.split() if w.startswith("@")}
        new[policy] = Chain(policy, tuple(lines))
        sizes[variant] = len(lines)
    table = replace(inet, chains=tuple(new.get(c.name, c) for c in inet.chains),
                    sets=tuple(s for s in inet.sets if s.name not in dropped))
    return render_ruleset(replace(rs, tables=(table,) + rs.tables[1:])), sizes


# -- the rig ------------------------------------------------------------------------------
def _group_pids(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getpgid(int(d.name)) == pgid:
                    out.append(int(d.name))
            except (ProcessLookupError, PermissionError):
                pass
    return out


class Rig:
    def __init__(self, prefix: str, tmp: Path, trafgen_args: list[str], verbose: bool):
        self.tmp, self.trafgen_args, self.verbose = tmp, trafgen_args, verbose
        self.tg: subprocess.Popen | None = None
        self.readers: dict[str, subprocess.Popen] = {}
        self.tg_cfg: dict[str, Path] = {}
        self.sb = Sandbox(prefix)
        self.hv = self.sb.hv

    def setup(self) -> None:
        self.tx_ns = self.sb.add_instance(*SENDER[:2], [SENDER[2]])
        smac, dmac = self._mac(self.tx_ns, "eth0"), self._mac(self.hv, SENDER[1])
        rx = (f"table inet {RX_TABLE} {{\n\tcounter rx {{\n\t}}\n\tchain in_c {{\n"
              f"\t\ttype filter hook input priority 0; policy accept;\n"
              f"\t\tudp dport {DPORT} counter name rx drop\n\t}}\n}}\n")
        for variant, (inst, tap, addr) in RECEIVERS.items():
            ns = self.sb.add_instance(inst, tap, [addr])
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rx, text=True, check=True)
            reader = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", READER],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
            self.readers[variant] = reader
            if reader.stdout.readline().strip() != "READY":
                raise RuntimeError(f"counter reader in {ns} did not start")
            cfg = self.tmp / f"udp-{variant}.trafgen"
            cfg.write_text(f"{{ eth(sa={smac}, da={dmac}), ipv4(sa={SENDER[2]}, da={addr}, ttl=64), "
                           f"udp(sp=dinc({SRC_PORTS[0]}, {SRC_PORTS[1]}), dp={DPORT}, csum=0), "
                           f"fill(0x41, 18) }}\n")
            self.tg_cfg[variant] = cfg

    def _mac(self, ns: str, dev: str) -> str:
        return json.loads(run(["ip", "-n", ns, "-j", "link", "show", dev]).stdout)[0]["address"]

    def close(self) -> None:
        self.stop_trafgen()
        for reader in self.readers.values():
            if reader.poll() is None:
                reader.stdin.close()
                try:
                    reader.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    reader.kill()
                    reader.wait()
        self.sb.close()

    # configuration -----------------------------------------------------------------
    def apply_agent(self, config: Path) -> float:
        start = time.monotonic()
        p = subprocess.run(["ip", "netns", "exec", self.hv, PY, "-m", "agent.cli.main", "apply", "-c", str(config),
                            "--host", HOST], capture_output=True, text=True, cwd=ROOT, timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"agent apply {config.name} failed: {p.stderr.strip()} {p.stdout.strip()}")
        print(f"  agent: {p.stdout.strip()}", flush=True)
        return time.monotonic() - start

    def apply_nft(self, script: Path) -> float:
        start = time.monotonic()
        run(["ip", "netns", "exec", self.hv, "nft", "-f", str(script)], timeout=900)
        return time.monotonic() - start

    # traffic -------------------------------------------------------------------------
    def start_trafgen(self, variant: str) -> None:
        self.tg = subprocess.Popen(["ip", "netns", "exec", self.tx_ns, "trafgen", "-o", "eth0",
                                    "-c", str(self.tg_cfg[variant]), *self.trafgen_args],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)                 # setsid
        time.sleep(0.2)
        cpus = f"0-{os.cpu_count() - 1}"
        for pid in _group_pids(self.tg.pid):          # undo trafgen's own CPU pinning
            subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], capture_output=True)

    def stop_trafgen(self) -> None:
        if self.tg is None:
            return
        pgid = self.tg.pid
        try:
            os.killpg(pgid, signal.SIGTERM)           # kill -TERM -- -$PGID
        except ProcessLookupError:
            pass
        try:
            self.tg.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.tg.wait()
        for _ in range(50):                           # the worker can outlive the parent briefly
            if not _group_pids(pgid):
                break
            time.sleep(0.1)
        else:
            os.killpg(pgid, signal.SIGKILL)
        self.tg = None

    def tx_packets(self) -> int:
        out = run(["ip", "-n", self.tx_ns, "-s", "-j", "link", "show", "eth0"]).stdout
        return json.loads(out)[0]["stats64"]["tx"]["packets"]

    def measure(self, variant: str, warmup: float, window: float) -> dict:
        run(["ip", "netns", "exec", self.hv, "conntrack", "-F"], check=False)
        self.start_trafgen(variant)
        try:
            time.sleep(warmup)
            tx0, t0 = self.tx_packets(), time.monotonic()
            reader = self.readers[variant]
            reader.stdin.write(f"{window}\n")
            reader.stdin.flush()
            got = json.loads(reader.stdout.readline())
            tx1, t1 = self.tx_packets(), time.monotonic()
            ct = run(["ip", "netns", "exec", self.hv, "conntrack", "-C"], check=False).stdout.strip()
        finally:
            self.stop_trafgen()
        pps = got["packets"] / got["seconds"]
        if pps <= 0:
            raise RuntimeError(f"{variant}: no packet reached the receiver (sent {(tx1 - tx0) / (t1 - t0):.0f} pps)")
        return {"pps": pps, "tx_pps": (tx1 - tx0) / (t1 - t0), "ct": ct}

    def warm_neighbours(self) -> None:
        for _, _, addr in RECEIVERS.values():
            run(["ip", "netns", "exec", self.hv, "ping", "-c1", "-W1", addr], check=False)


# -- the benchmark -------------------------------------------------------------------------
def fmt_k(x: float) -> str:
    return f"{x / 1000:.0f}k"


def run_phase(rig: Rig, label: str, names: dict[str, str], args) -> list[dict]:
    """Interleave base with each configuration; `names` maps receiver variant -> label."""
    others = [v for v in ("drop", "mixed", "peers") if v in names]
    seq = [step for _ in range(args.rounds) for v in others for step in ("base", v)] + ["base"]
    series: list[tuple[str, float]] = []
    line: list[str] = []
    for i, variant in enumerate(seq):
        m = rig.measure(variant, args.warmup, args.window)
        series.append((variant, m["pps"]))
        extra = f" (tx {fmt_k(m['tx_pps'])}, ct {m['ct']})" if args.verbose else ""
        line.append(f"{variant if variant == 'base' else names[variant]} {fmt_k(m['pps'])}{extra}")
        if len(line) == 2 * len(others) or i == len(seq) - 1:
            print(f"  {label}: " + ", ".join(line), flush=True)
            line = []
    base = [pps for v, pps in series if v == "base"]
    out = []
    for v in others:
        rates = [pps for name, pps in series if name == v]
        ratios = [pps / ((series[i - 1][1] + series[i + 1][1]) / 2)
                  for i, (name, pps) in enumerate(series) if name == v]
        out.append({"name": names[v], "phase": label, "median_pps": statistics.median(rates),
                    "min_pps": min(rates), "max_pps": max(rates),
                    "base_median_pps": statistics.median(base), "base_min_pps": min(base),
                    "base_max_pps": max(base),
                    "ratio": statistics.median(rates) / statistics.median(base),
                    "paired_median": statistics.median(ratios), "paired_min": min(ratios),
                    "paired_max": max(ratios), "windows": len(rates)})
    return out


def bench_n(rig: Rig, tmp: Path, n: int, args) -> list[dict]:
    config = tmp / f"bench-{n}.json"
    config.write_text(json.dumps(document(n)))
    for variant, text in compiled_summary(config).items():
        print(f"  agent compiles, {variant} receiver: {text}")
    script, sizes = naive_script(config)
    naive = tmp / f"naive-{n}.nft"
    naive.write_text(script)
    print("  naive layout: " + ", ".join(f"{v} receiver: {k} rules" for v, k in sizes.items()))
    took = rig.apply_agent(config)
    print(f"  (agent apply took {took:.1f} s)")
    rig.warm_neighbours()
    results = run_phase(rig, "agent", {"drop": "drop", "mixed": "mixed", "peers": "peers"}, args)
    took = rig.apply_nft(naive)
    print(f"  (nft -f naive took {took:.1f} s)")
    results += run_phase(rig, "naive", {"drop": "naive-drop", "mixed": "naive-mixed"}, args)
    return results


def bench_counters(rig: Rig, tmp: Path, n: int, args) -> dict:
    """Counters on vs off on the mixed receiver (bench/datapath_attr.py)."""
    config = tmp / f"bench-{n}.json"
    config.write_text(json.dumps(document(n)))
    on = tmp / f"on-{n}.nft"
    on.write_text(render_ruleset(build_ruleset(load_state(str(config), HOST))))
    off = tmp / f"off-{n}.nft"
    off.write_text(counters_off(on.read_text()))
    rig.apply_nft(on)
    rig.warm_neighbours()
    return counters_phase(lambda label: rig.measure("mixed", args.warmup, args.window)["pps"], rig.apply_nft,
                          on, off, args.rounds)


def bench_memory(prefix: str, tmp: Path, args) -> dict:
    big = tmp / "mem.json"
    big.write_text(run([PY, str(ROOT / "scripts" / "gen-config"), "--interfaces", "1000", "--rules", "100"]).stdout)
    on = tmp / "mem-on.nft"
    on.write_text(render_ruleset(build_ruleset(load_state(str(big), None))))
    off = tmp / "mem-off.nft"
    off.write_text(counters_off(on.read_text()))
    return memory_phase(prefix, on, off, args.memory_rounds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[0, 1000, 10000])
    ap.add_argument("--rounds", type=int, default=7, help="windows per configuration and phase")
    ap.add_argument("--window", type=float, default=2.5, help="measurement window, seconds")
    ap.add_argument("--warmup", type=float, default=0.8)
    ap.add_argument("--trafgen", default="--cpus 1", help="trafgen options (default: one worker, TX ring)")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--counters-only", action="store_true", help="only counters on vs off (mixed receiver)")
    ap.add_argument("--memory-only", action="store_true", help="only the kernel memory of counters at 1,000 x 100")
    ap.add_argument("--memory-rounds", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    missing = check_tools("ip", "sysctl", "nft", "trafgen", "taskset", "conntrack", "ping")
    if missing:
        print(f"datapath benchmark: {missing}", file=sys.stderr)
        return 2
    load0 = os.getloadavg()
    print(f"# datapath benchmark: kernel {platform.release()}, {os.cpu_count()} CPUs, "
          f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    print(f"# {run(['nft', '--version']).stdout.strip()}; trafgen {args.trafgen}; window {args.window} s, "
          f"warm-up {args.warmup} s, {args.rounds} windows per configuration, "
          f"{SRC_PORTS[1] - SRC_PORTS[0] + 1} flows")
    results = []
    prefix = f"sgbdp{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="sgbdp") as d:
        tmp = Path(d)
        os.environ["SECGROUP_AGENT_STATE_DIR"] = str(tmp / "state")     # the agent's saves: not /var/lib
        rig = None
        try:
            if args.memory_only:
                mem = bench_memory(prefix, tmp, args)
                print("# verdict chains at gen-config 1000 x 100: SUnreclaim median [min-max] MiB: " + ", ".join(
                    f"{k} {v['median'] / 2 ** 20:.1f} [{v['min'] / 2 ** 20:.1f}-{v['max'] / 2 ** 20:.1f}]"
                    for k, v in mem.items())
                    + f"; counters cost {(mem['on']['median'] - mem['off']['median']) / 2 ** 20:.1f} MiB")
                return 0
            rig = Rig(prefix, tmp, args.trafgen.split(), args.verbose)
            rig.setup()
            for n in args.n:
                print(f"N = {n}", flush=True)
                if args.counters_only:
                    c = bench_counters(rig, tmp, n, args)
                    print(f"# N={n} counters on {c['on_median'] / 1000:.0f}k [{c['on_min'] / 1000:.0f}k-"
                          f"{c['on_max'] / 1000:.0f}k] pps, off {c['off_median'] / 1000:.0f}k [{c['off_min'] / 1000:.0f}k-"
                          f"{c['off_max'] / 1000:.0f}k]: ratio {c['ratio']:.3f}, paired {c['paired_median']:.3f} "
                          f"[{c['paired_min']:.3f}-{c['paired_max']:.3f}] (target >= 0.95: "
                          f"{'met' if c['ratio'] >= 0.95 else 'NOT met'})")
                    continue
                results += [(n, r) for r in bench_n(rig, tmp, n, args)]
        finally:
            if rig is not None:
                rig.close()
            for ns in run(["ip", "netns", "list"]).stdout.split():
                if ns.startswith(f"{prefix}-"):        # only if the sandbox failed half-built
                    run(["ip", "netns", "del", ns], check=False)
    print()
    print(f"{'N':>6}  {'configuration':<12} {'median pps [min-max]':>22}  {'base median [min-max]':>22}  "
          f"{'ratio':>6}  {'paired ratio median [min-max]':>29}")
    for n, r in results:
        print(f"{n:>6}  {r['name']:<12} {fmt_k(r['median_pps']):>6} [{fmt_k(r['min_pps'])}-{fmt_k(r['max_pps'])}]"
              f"{'':>4}  {fmt_k(r['base_median_pps']):>6} [{fmt_k(r['base_min_pps'])}-{fmt_k(r['base_max_pps'])}]"
              f"{'':>4}  {r['ratio']:>6.3f}  {r['paired_median']:>12.3f} [{r['paired_min']:.3f}-{r['paired_max']:.3f}]")
    print()
    for n, r in results:
        if n in TARGETS and r["name"] in ("drop", "mixed", "peers"):
            ok = r["ratio"] >= (0.9 if r["name"] == "peers" else TARGETS[n])
            print(f"target N={n} {r['name']}: ratio {r['ratio']:.3f} (paired {r['paired_median']:.3f}) "
                  f">= {0.9 if r['name'] == 'peers' else TARGETS[n]}: {'met' if ok else 'NOT met'}")
    load1 = os.getloadavg()
    print(f"# load average at the end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if args.json:
        print(json.dumps({"datapath": [{"n": n, **r} for n, r in results]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
