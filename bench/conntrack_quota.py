#!/usr/bin/env python3
"""Conntrack quota benchmark: one instance opens many connections; do another
instance's new connections still work? With and without `max_connections`.

Prints figures; it is not a test. Needs root. A sandbox hypervisor (sandbox/hypervisor.py,
namespaces `sgbq<pid>-*`, deleted at the end) with routed instances i1, i2 and the
outside; the agent is applied by its CLI in hv with both instances open and
`max_connections: --quota` on i1 (0: none). The outside drops SYNs to ports 5555-5558
(so i1's flows stay SYN_SENT) and listens on port 80. i1 then opens `--flows`
non-blocking TCP connects; meanwhile and after, i2 connects to the outside's port 80
ten times. `--ct-max` lowers hv's nf_conntrack_max (per namespace, only downwards).

    .venv/bin/python bench/conntrack_quota.py --flows 50000 --quota 1000
    .venv/bin/python bench/conntrack_quota.py --flows 50000 --quota 0 --ct-max 40000
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sandbox.hypervisor import OUTSIDE4, Sandbox, run  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")
FLOOD = """
import resource, socket, sys, time
n, dst = int(sys.argv[1]), sys.argv[2]
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks, t = [], time.monotonic()
for i in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((dst, 5555 + i % 4))
    socks.append(s)
print(f"opened {n} in {time.monotonic() - t:.1f} s", flush=True)
time.sleep(120)
"""
PROBE = """
import socket, sys, time
ok, times = 0, []
for _ in range(10):
    t = time.monotonic()
    try:
        socket.create_connection((sys.argv[1], 80), timeout=2).close()
        ok += 1
        times.append(time.monotonic() - t)
    except OSError:
        pass
print(ok, max(times, default=0))
"""


def document(quota: int) -> dict:
    rules = [{"direction": d, "protocol": "all", f"{'source' if d == 'ingress' else 'dest'}_cidr": "0.0.0.0/0"}
             for d in ("ingress", "egress")]
    nics = {"i1": "10.0.0.11", "i2": "10.0.0.12"}
    insts = [{"id": n, "security_groups": ["sg"], "interfaces": [
        {"name": f"tap-{n}", "addresses": [a], **({"max_connections": quota} if n == "i1" else {})}]}
        for n, a in nics.items()]
    return {"host": "hv", "security_groups": [{"id": "sg", "rules": rules}], "instances": insts}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=50000)
    ap.add_argument("--quota", type=int, default=1000)
    ap.add_argument("--ct-max", type=int, default=0)
    args = ap.parse_args()
    sb = Sandbox(f"sgbq{os.getpid()}")
    listener, floods = None, []
    try:
        for n, a in (("i1", "10.0.0.11"), ("i2", "10.0.0.12")):
            sb.add_instance(n, f"tap-{n}", [a])
        if args.ct_max:
            sb.sysctl(sb.hv, "net.netfilter.nf_conntrack_max", str(args.ct_max))
        path = Path(f"/tmp/sgbq{os.getpid()}.json")
        path.write_text(json.dumps(document(args.quota)))
        run(["ip", "netns", "exec", sb.hv, PY, "-m", "agent.cli.main", "apply", "-c", str(path)], cwd=str(ROOT))
        run(["ip", "netns", "exec", sb.outside, "nft", "-f", "-"], input=(
            "table inet bh {\nchain in {\ntype filter hook input priority 0; policy accept;\n"
            "tcp dport 5555-5558 drop\n}\n}\n"))
        listener = subprocess.Popen(["ip", "netns", "exec", sb.outside, PY, "-c",
                                     "import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,"
                                     " socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 80)); s.listen(4096);"
                                     " time.sleep(600)"])
        time.sleep(0.5)
        per = 15000                       # fds per process (this machine's hard limit: 20,000)
        for start in range(0, args.flows, per):
            floods.append(subprocess.Popen(["ip", "netns", "exec", sb.instances["i1"]["ns"], PY, "-c", FLOOD,
                                            str(min(per, args.flows - start)), OUTSIDE4],
                                           stdout=subprocess.PIPE, text=True))
        opened = [f.stdout.readline().strip() for f in floods]
        print(f"i1: {'; '.join(opened)} (quota {args.quota or 'none'}, "
              f"ct max {args.ct_max or 'default'}, load {os.getloadavg()[0]:.1f})", flush=True)
        time.sleep(1)
        count = run(["ip", "netns", "exec", sb.hv, "conntrack", "-C"]).stdout.strip()
        mine = run(["ip", "netns", "exec", sb.hv, "conntrack", "-L", "-s", "10.0.0.11"], check=False).stderr
        probe = run(["ip", "netns", "exec", sb.instances["i2"]["ns"], PY, "-c", PROBE, OUTSIDE4], timeout=60)
        ok, worst = probe.stdout.split()
        ruleset = run(["ip", "netns", "exec", sb.hv, "nft", "list", "table", "inet", "secgroup_agent"]).stdout
        dropped = re.search(r"ct count over \d+ counter packets (\d+)", ruleset)
        print(f"hv tracks {count} entries, i1's: {mine.strip().splitlines()[-1]}")
        print(f"i2 -> outside:80: {ok}/10 connected (slowest {float(worst) * 1000:.0f} ms); "
              f"quota drops: {dropped.group(1) if dropped else '-'} packets")
    finally:
        for proc in floods + [listener]:
            if proc is not None:
                proc.kill()
                proc.wait()
        sb.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
