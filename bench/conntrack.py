#!/usr/bin/env python3
"""Conntrack benchmark: listing tracked flows with agent.kernel.conntrack against
`conntrack -L` (and the former pyroute2 listing), and deleting 1,000 of them.

Prints figures; it is not a test. Needs root. Everything happens in two namespaces
`sgbct<pid>-src` and `sgbct<pid>-hv` joined by a veth pair, deleted at the end (also on
failure); the root namespace is never touched.

    .venv/bin/python bench/conntrack.py                       # 10,000 then 100,000 flows
    .venv/bin/python bench/conntrack.py --flows 10000 --runs 3 --pyroute2

Flows: a ruleset with a `ct` rule makes hv track (kernel-facts: no ct rule, no
entries), the UDP timeout in hv is raised to an hour, and `src` sends one UDP datagram
per flow to hv (raw socket, a distinct source/destination port pair each: ports
1024-65535 x 9..), so hv's table holds N real entries (checked with `conntrack -C`).
For each size: (a) `list_flows()` in a process in hv (timed inside, no interpreter
start), (b) `conntrack -L >/dev/null` (the process, as an operator runs it), (c) with
--pyroute2 the former listing, interleaved a, b, c, ... `--runs` times; median [min-max].
Then `delete_flows` of 1,000 listed flows, timed, and a check that exactly those are
gone and every other flow is still there.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv" / "bin" / "python")
SRC4, HV4 = "10.200.0.1", "10.200.0.254"

SEND = textwrap.dedent("""
    import socket, struct, sys
    n, dst, sources = int(sys.argv[1]), socket.inet_aton(sys.argv[2]), int(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)     # header included
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    per = -(-n // sources)
    for i in range(n):
        src, j = socket.inet_aton(f"10.200.{1 + i // per // 250}.{1 + i // per % 250}"), i % per
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, src, dst)
        s.sendto(ip + struct.pack("!HHHH", 1024 + j % 60000, 9 + j // 60000, 8, 0), (sys.argv[2], 0))
""")
VICTIM = "10.200.1.1"           # the first instance's address: its flows are revoked

INNER = textwrap.dedent("""
    import json, subprocess, sys, time
    from agent.kernel import conntrack
    what = sys.argv[1]
    t = time.perf_counter()
    if what == "agent":
        n = len(conntrack.list_flows())
    elif what == "conntrack":
        err = subprocess.run(["conntrack", "-L"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True).stderr
        n = int(err.split("(conntrack-tools): ")[1].split()[0])
    elif what == "pyroute2":
        from pyroute2 import Conntrack
        with Conntrack() as ct:
            n = sum(1 for _ in ct.dump_entries())
    elif what == "instance":
        n = len(conntrack.list_flows([sys.argv[2]]))
    elif what == "delete":
        before = conntrack.list_flows()
        t = time.perf_counter()
        victims = conntrack.list_flows([sys.argv[2]])
        listed = time.perf_counter() - t
        n = conntrack.delete_flows(victims)
        took = time.perf_counter() - t - listed
        left = set(conntrack.list_flows())
        print(json.dumps({"list": listed, "seconds": took, "deleted": n, "victims": len(victims),
                          "victims_left": len(left & set(victims)),
                          "others_left": len(left - set(victims)), "before": len(before)}))
        raise SystemExit
    print(json.dumps({"seconds": time.perf_counter() - t, "n": n}))
""")


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, **kw)


def setup(p: str) -> None:
    sh("ip", "netns", "add", f"{p}-src")
    sh("ip", "netns", "add", f"{p}-hv")
    sh("ip", "-n", f"{p}-hv", "link", "add", "eth0", "type", "veth", "peer", "name", "x0", "netns", f"{p}-src")
    for ns, dev, addr in ((f"{p}-hv", "eth0", HV4), (f"{p}-src", "x0", SRC4)):
        sh("ip", "-n", ns, "addr", "add", f"{addr}/16", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "netns", "exec", f"{p}-hv", "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=3600")
    sh("ip", "netns", "exec", f"{p}-hv", "nft", "-f", "-", input=(
        "table inet ctbench {\n chain in {\n  type filter hook input priority 0; policy accept;\n"
        "  ct state new counter\n }\n}\n"))


def fill(p: str, n: int, sources: int) -> int:
    sh("ip", "netns", "exec", f"{p}-hv", "conntrack", "-F")
    sh("ip", "netns", "exec", f"{p}-src", PY, "-c", SEND, str(n), HV4, str(sources), timeout=600)
    return int(sh("ip", "netns", "exec", f"{p}-hv", "conntrack", "-C").stdout.strip())


def inner(p: str, what: str) -> dict:
    out = sh("ip", "netns", "exec", f"{p}-hv", PY, "-c", INNER, what, VICTIM, cwd=str(ROOT), timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} s [{min(xs):.3f}-{max(xs):.3f}]"


def measure(p: str, n: int, sources: int, runs: int, pyroute2: bool) -> None:
    tracked = fill(p, n, sources)
    print(f"{n} flows sent from {sources} addresses, {tracked} tracked in hv "
          f"(load {os.getloadavg()[0]:.1f})", flush=True)
    kinds = ["agent", "conntrack", "instance"] + ["pyroute2"] * pyroute2
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(runs):
        for k in kinds:
            times[k].append(inner(p, k)["seconds"])
    names = {"agent": "list_flows()", "conntrack": "conntrack -L", "instance": "list_flows([one address])",
             "pyroute2": "pyroute2 (before)"}
    for k in kinds:
        print(f"  {names[k]:26s} {fmt(times[k])}", flush=True)
    for _ in range(min(runs, 3)):
        d = inner(p, "delete")
        print(f"  revoke one address's {d['victims']} of {d['before']}: listed in {d['list'] * 1000:.0f} ms, "
              f"deleted in {d['seconds'] * 1000:.0f} ms ({d['deleted']}), {d['victims_left']} of them left, "
              f"{d['others_left']} others left (load {os.getloadavg()[0]:.1f})", flush=True)
        fill(p, n, sources)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sources", type=int, default=100, help="source addresses the flows come from")
    ap.add_argument("--pyroute2", action="store_true", help="also time the former pyroute2 listing")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    p = f"sgbct{os.getpid()}"
    try:
        setup(p)
        for n in args.flows:
            measure(p, n, args.sources, args.runs, args.pyroute2 and n <= 20000)
    finally:
        for ns in ("src", "hv"):
            subprocess.run(["ip", "netns", "del", f"{p}-{ns}"], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
