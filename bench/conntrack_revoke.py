#!/usr/bin/env python3
"""Revocation end to end at 100,000 tracked flows (issue 14, must-show 5), with the
daemon (`secgroup-agent run`) and real traffic in network namespaces of its own:

    sudo .venv/bin/python bench/conntrack_revoke.py --flows 100000 --revoked 1000 --changes 20

The sandbox hypervisor forwards to five routed instances: `victim` (tap-v, 10.0.0.11)
in group sg-victim, whose one rule admits udp/P from anywhere, and o1..o4 (10.0.0.21-24)
in sg-others, admitting udp/5001. From `outside`, a raw socket sends one UDP datagram
per flow (a distinct source port each): `--flows` minus `--revoked` to o1..o4 port 5001
and `--revoked` to the victim's port P. hv's UDP timeout is an hour, so its conntrack
table holds them all (unreplied, `conntrack -C` checks).

Each change moves sg-victim's rule from P to a new port P' (one rule edited, written by
atomic rename at t0). It is timed twice:

* enforced: a sender in `outside` sends to P' every 0.5 ms; the first datagram the victim
  receives (t1 - t0) — the change as traffic sees it;
* revoked: a helper in hv lists the victim's flows (kernel-filtered) every ~10 ms from
  t0; the time until none of the `--revoked` flows to P is left.

After each change the flows to o1..o4 are counted (all must remain), then `--revoked`
new flows to P' are sent for the next change. Prints every change and the medians,
p99 and min-max, with the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latency as L  # noqa: E402

from sandbox.hypervisor import OUTSIDE4  # noqa: E402

VICTIM, OTHERS = "10.0.0.11", ["10.0.0.21", "10.0.0.22", "10.0.0.23", "10.0.0.24"]
OTHER_PORT = 5001

SEND = textwrap.dedent("""
    import socket, struct, sys
    src = socket.inet_aton(sys.argv[1])
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)     # header included
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    for line in sys.stdin:
        dst, dport, n, base = line.split()
        d, dport, n, base = socket.inet_aton(dst), int(dport), int(n), int(base)
        for i in range(n):
            sport = base + i
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, src, d)
            s.sendto(ip + struct.pack("!HHHH", sport, dport, 8, 0), (dst, 0))
        print("SENT", flush=True)
""")

# in hv: "gone ADDR PORT N T0": list ADDR's flows until none of them goes to PORT (or 10 s);
# "count ADDR...": how many flows from or to those addresses
HELPER = textwrap.dedent("""
    import ipaddress, sys, time
    from agent.kernel import conntrack
    print("READY", flush=True)
    for line in sys.stdin:
        words = line.split()
        if words[0] == "gone":
            addr, port, t0 = words[1], int(words[2]), float(words[3])
            polls = 0
            while True:
                left = sum(1 for f in conntrack.list_flows([addr]) if f.dport == port)
                polls += 1
                if left == 0 or time.monotonic() - t0 > 10:
                    break
                time.sleep(0.01)
            print(f"GONE {time.monotonic() - t0} {left} {polls}", flush=True)
        else:
            print(f"COUNT {len(conntrack.list_flows(words[1:]))}", flush=True)
""")


def document(port: int) -> dict:
    def rule(rid: str, p: int) -> dict:
        return {"id": rid, "direction": "ingress", "protocol": "udp", "port_range": f"{p}/{p}",
                "source_cidr": "0.0.0.0/0"}
    insts = [{"id": "victim", "security_groups": ["sg-victim"],
              "interfaces": [{"name": "tap-v", "addresses": [VICTIM]}]}]
    insts += [{"id": f"o{i}", "security_groups": ["sg-others"],
               "interfaces": [{"name": f"tap-o{i}", "addresses": [a]}]} for i, a in enumerate(OTHERS, 1)]
    return {"host": "hv-01",
            "security_groups": [{"id": "sg-victim", "type": "custom", "rules": [rule("victim-port", port)]},
                                {"id": "sg-others", "type": "custom", "rules": [rule("others-port", OTHER_PORT)]}],
            "instances": insts}


def talk(p: subprocess.Popen, line: str) -> str:
    p.stdin.write(line + "\n")
    p.stdin.flush()
    return p.stdout.readline().strip()


def stats(xs: list[float]) -> str:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]
    return f"median {statistics.median(xs):.1f}, p99 {p99:.1f}, [{xs[0]:.1f}-{xs[-1]:.1f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, default=100000)
    ap.add_argument("--revoked", type=int, default=1000)
    ap.add_argument("--changes", type=int, default=20)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    ports = list(range(7000, 7000 + a.changes + 1))
    per_other = -(-(a.flows - a.revoked) // len(OTHERS))
    out: dict = {"load_before": os.getloadavg()[0], "changes": []}
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="sgrev") as t, L.Sandbox(f"sgr{os.getpid() % 10000}") as sb:
        tmp = Path(t)
        os.environ["SECGROUP_AGENT_STATE_DIR"] = str(tmp / "state")
        sb.sysctl(sb.hv, "net.netfilter.nf_conntrack_udp_timeout", "3600")
        sb.sysctl(sb.hv, "net.netfilter.nf_conntrack_udp_timeout_stream", "3600")
        vns = sb.add_instance("victim", "tap-v", [VICTIM])
        for i, addr in enumerate(OTHERS, 1):
            sb.add_instance(f"o{i}", f"tap-o{i}", [addr])
        config, sock = tmp / "config.json", str(tmp / "agent.sock")
        L.write(config, document(ports[0]))
        try:
            t0 = time.monotonic()
            agent = sb.popen(sb.hv, L.PY, "-m", "agent.cli.main", "run", "-c", str(config), "--socket", sock,
                             stdout=open(tmp / "agent.log", "w"), stderr=subprocess.STDOUT)
            procs.append(agent)
            out["first_apply_s"] = L.wait_ready(sock, agent, t0)
            pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            flood = sb.popen(sb.outside, L.PY, "-c", SEND, OUTSIDE4, **pipes)
            helper = sb.popen(sb.hv, L.PY, "-c", HELPER, cwd=str(L.ROOT), **pipes)
            recv = sb.popen(vns, L.PY, "-c", L.RECEIVER, **pipes)
            send = sb.popen(sb.outside, L.PY, "-c", L.SENDER, VICTIM, **pipes)
            procs += [flood, helper, recv, send]
            assert helper.stdout.readline().strip() == "READY"
            for addr in OTHERS:
                talk(flood, f"{addr} {OTHER_PORT} {per_other} 1024")
            talk(flood, f"{VICTIM} {ports[0]} {a.revoked} 1024")
            others = int(talk(helper, "count " + " ".join(OTHERS)).split()[1])
            tracked = int(sb.exec(sb.hv, "conntrack", "-C").stdout.strip())
            out["tracked"], out["others"] = tracked, others
            print(f"hv tracks {tracked} flows ({others} to o1..o4); load {os.getloadavg()[0]:.1f}", flush=True)
            for old, new in zip(ports, ports[1:]):
                victims = int(talk(helper, f"count {VICTIM}").split()[1])
                recv.stdin.write(f"{new}\n")
                recv.stdin.flush()
                assert recv.stdout.readline().strip() == "READY"
                assert talk(send, str(new)) == "OK"
                time.sleep(0.05)
                tw = L.write(config, document(new))
                helper.stdin.write(f"gone {VICTIM} {old} {tw}\n")
                helper.stdin.flush()
                t1 = float(recv.stdout.readline().split()[1])
                gone = helper.stdout.readline().split()
                left_others = int(talk(helper, "count " + " ".join(OTHERS)).split()[1])
                row = {"enforced_ms": (t1 - tw) * 1000 if t1 > 0 else None, "revoked_ms": float(gone[1]) * 1000,
                       "victim_flows_before": victims, "left_on_old_port": int(gone[2]),
                       "others_left": left_others, "load": os.getloadavg()[0]}
                out["changes"].append(row)
                print(json.dumps(row), flush=True)
                talk(flood, f"{VICTIM} {new} {a.revoked} 1024")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
                    p.wait()
            log = (tmp / "agent.log").read_text().splitlines() if (tmp / "agent.log").exists() else []
            out["agent_log_tail"] = [ln for ln in log if "revok" in ln or "applied" in ln][-4:]
    rows = out.pop("changes")
    enforced = [r["enforced_ms"] for r in rows if r["enforced_ms"] is not None]
    revoked = [r["revoked_ms"] for r in rows]
    out.update({"changes": len(rows), "enforced_ms": stats(enforced), "revoked_ms": stats(revoked),
                "never_enforced": len(rows) - len(enforced),
                "revoked_within_1s": sum(1 for r in rows if r["revoked_ms"] <= 1000 and r["left_on_old_port"] == 0),
                "others_untouched": all(r["others_left"] == out["others"] for r in rows),
                "victim_flows_before_each": sorted({r["victim_flows_before"] for r in rows}),
                "load_after": os.getloadavg()[0]})
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
