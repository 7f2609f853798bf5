#!/usr/bin/env python3
"""The host life cycle at scale (issue 14), measured with real traffic in a sandbox
hypervisor (network namespaces), one run:

    sudo .venv/bin/python bench/lifecycle.py --interfaces 1000 --rules 50

1. `apply -c F` (cold: the full replace), then `run -c F` on the same state; right after
   the process starts, a one-rule change is written: the time from the process start to
   the first packet the change admits (target 2 s).
2. `apply -c F` while the daemon runs: must report `unchanged`.
3. The daemon stopped (SIGTERM), F changed by one rule, the daemon started again: the
   time from the start to the first packet the changed rule admits (target 3 s).
4. Drift: another tool flushes the interface's ingress chain; a sender sends to a port
   the rules drop: the window in which packets got through (target: filtered again
   within 1 s), and the daemon's journal line saying what was rewritten.
5. `wait --iface` against traffic: a change written, `wait --revision R` polled; the
   difference between wait's return and the first admitted packet (target 50 ms).
6. Boot restore: the daemon stopped, the agent's tables deleted (a boot), traffic to an
   admitted port flowing; the unit's boot step in its two halves, each timed: `nft -f
   failclosed.nft` (after it, no packet may arrive: every instance interface dropped),
   then `nft -f ruleset.nft` (after it, the admitted port passes again).
7. The first change after the daemon's own initial apply: tables deleted, a fresh state
   directory, `run -c F` (the cold full replace), then `--changes` one-rule changes,
   each timed by traffic: the first must be as fast as the later ones.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latency as L  # noqa: E402

from agent.service.status import query  # noqa: E402

LOGGER = """
import select, socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
print("READY", flush=True)
end, first, last, n = time.monotonic() + seconds, None, None, 0
while (left := end - time.monotonic()) > 0:
    r, _, _ = select.select([s], [], [], left)
    if r:
        s.recv(64); n += 1; now = time.monotonic(); first = first or now; last = now
print(f"GOT {n} {first or -1} {last or -1}", flush=True)
"""


def agent(sb, tmp: Path, config: Path, log: str):
    return sb.popen(sb.hv, L.PY, "-m", "agent.cli.main", "run", "-c", str(config), "--socket",
                    str(tmp / "agent.sock"), stdout=open(tmp / log, "w"), stderr=subprocess.STDOUT)


def prime(recv, send, port: int) -> None:
    recv.stdin.write(f"{port}\n"); recv.stdin.flush()
    assert recv.stdout.readline().strip() == "READY"
    send.stdin.write(f"{port}\n"); send.stdin.flush()
    assert send.stdout.readline().strip() == "OK"


def arrival(recv) -> float:
    t1 = float(recv.stdout.readline().split()[1])
    if t1 < 0:
        raise SystemExit("never enforced")
    return t1


def stop(p) -> None:
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=120)


def drop_tables(sb) -> None:
    for family in ("inet", "bridge"):
        sb.exec(sb.hv, "nft", "delete", "table", family, "secgroup_agent", check=False)


def boot_restore(sb, state: Path, ns: str, send, recv, port: int) -> dict:
    """Step 6: the boot step's two halves timed against traffic to an admitted port."""
    out: dict = {}
    logger = sb.popen(ns, L.PY, "-c", LOGGER, str(port), "3", stdout=subprocess.PIPE, text=True)
    assert logger.stdout.readline().strip() == "READY"
    send.stdin.write(f"{port}\n"); send.stdin.flush()
    send.stdout.readline()
    drop_tables(sb)                                       # a boot: no table, traffic unfiltered
    time.sleep(0.3)
    t = time.monotonic()
    sb.exec(sb.hv, "nft", "-f", str(state / "failclosed.nft"))
    t_closed = time.monotonic()
    n, first, last = logger.stdout.readline().split()[1:]
    logger.wait()
    out["boot_failclosed_bytes"] = (state / "failclosed.nft").stat().st_size
    out["boot_failclosed_ms"] = (t_closed - t) * 1000
    out["boot_packets_before_closed"] = int(n)
    out["boot_last_packet_after_closed_ms"] = (float(last) - t_closed) * 1000 if int(n) else None
    recv.stdin.write(f"{port}\n"); recv.stdin.flush()
    assert recv.stdout.readline().strip() == "READY"
    t = time.monotonic()
    sb.exec(sb.hv, "nft", "-f", str(state / "ruleset.nft"), timeout=1800)
    t_full = time.monotonic()
    out["boot_full_restore_bytes"] = (state / "ruleset.nft").stat().st_size
    out["boot_full_restore_s"] = t_full - t
    out["boot_admitted_again_after_full_ms"] = (arrival(recv) - t_full) * 1000
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interfaces", type=int, default=1000)
    ap.add_argument("--rules", type=int, default=50)
    ap.add_argument("--changes", type=int, default=5, help="changes after the daemon's initial apply (step 7)")
    a = ap.parse_args()
    doc = json.loads(subprocess.run([str(L.GEN), "--interfaces", str(a.interfaces), "--rules", str(a.rules)],
                                    capture_output=True, text=True, check=True).stdout)
    doc["instance_interfaces"] = ["t0*"]        # gen-config's interface names: the boot table covers them
    gid, nic, addr = L.pick_interface(doc)
    ports = L.usable_ports(doc, gid, nic, addr, 4 + a.changes)
    out: dict = {"size": f"{a.interfaces} x {a.rules}", "load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="sglife") as t, L.Sandbox(f"sgl{os.getpid() % 10000}") as sb:
        tmp = Path(t)
        os.environ["SECGROUP_AGENT_STATE_DIR"] = str(tmp / "state")
        config = tmp / "config.json"
        L.write(config, L.with_port(doc, gid, ports[0]))
        ns = sb.add_instance("inst", nic, [addr])
        recv = sb.popen(ns, L.PY, "-c", L.RECEIVER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        send = sb.popen(sb.outside, L.PY, "-c", L.SENDER, addr, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        text=True)
        procs = [send, recv]
        try:
            t = time.monotonic()
            r = sb.exec(sb.hv, L.PY, "-m", "agent.cli.main", "apply", "-c", str(config), timeout=1800)
            out["cold_apply_s"], out["cold_apply"] = time.monotonic() - t, r.stdout.strip()
            # 1. run on the same state; a one-rule change written right after the start
            prime(recv, send, ports[1])
            t0 = time.monotonic()
            d = agent(sb, tmp, config, "run1.log")
            procs.append(d)
            L.write(config, L.with_port(doc, gid, ports[1]))
            out["start_to_first_change_enforced_s"] = arrival(recv) - t0
            out["start_to_ready_s"] = L.wait_ready(str(tmp / "agent.sock"), d, t0)
            out["started_as"] = query(str(tmp / "agent.sock")).started_as
            time.sleep(2.5)                                   # the daemon saves ~1 s after a commit
            # 2. apply while the daemon runs
            r = sb.exec(sb.hv, L.PY, "-m", "agent.cli.main", "apply", "-c", str(config), timeout=600)
            out["apply_while_running"] = r.stdout.strip()
            # 3. restart with a one-rule difference
            stop(d)
            L.write(config, L.with_port(doc, gid, ports[2]))
            prime(recv, send, ports[2])
            t0 = time.monotonic()
            d = agent(sb, tmp, config, "run2.log")
            procs.append(d)
            out["restart_one_rule_enforced_s"] = arrival(recv) - t0
            L.wait_ready(str(tmp / "agent.sock"), d, t0)
            out["restarted_as"] = query(str(tmp / "agent.sock")).started_as
            # 5. wait --iface against traffic
            prime(recv, send, ports[3])
            time.sleep(0.05)
            new = L.with_port(doc, gid, ports[3])
            from agent.sources.file import revision_of
            rev = revision_of(json.dumps(new).encode())
            w = sb.popen(sb.hv, L.PY, "-m", "agent.cli.main", "wait", "--iface", nic, "--revision", rev,
                         "--socket", str(tmp / "agent.sock"), "--timeout", "60", stdout=subprocess.PIPE, text=True)
            time.sleep(1.5)                                   # wait is up and polling
            tw = L.write(config, new)
            out["wait_output"] = w.stdout.readline().strip()
            tw1 = time.monotonic()
            t1 = arrival(recv)
            out["wait_minus_traffic_ms"] = (tw1 - t1) * 1000
            out["change_to_traffic_ms"] = (t1 - tw) * 1000
            out["wait_rc"] = w.wait()
            # 4. drift: the interface's ingress chain flushed by another tool
            closed = 9                                          # discard: no rule admits it
            logger = sb.popen(ns, L.PY, "-c", LOGGER, str(closed), "4", stdout=subprocess.PIPE, text=True)
            assert logger.stdout.readline().strip() == "READY"
            send.stdin.write(f"{closed}\n"); send.stdin.flush()
            send.stdout.readline()
            time.sleep(0.5)
            tf = time.monotonic()
            sb.exec(sb.hv, "nft", "flush", "chain", "inet", "secgroup_agent", f"in_{nic}")
            n, first, last = logger.stdout.readline().split()[1:]
            out["drift_packets_through"] = int(n)
            out["drift_open_window_ms"] = (float(last) - tf) * 1000 if int(n) else 0.0
            out["drift_first_packet_ms"] = (float(first) - tf) * 1000 if int(n) else None
            time.sleep(0.5)
            out["drift_log"] = [ln for ln in (tmp / "run2.log").read_text().splitlines()
                                if "drift" in ln or "restored" in ln][-3:]
            for log in ("run1.log", "run2.log"):
                out[log] = [ln for ln in (tmp / log).read_text().splitlines()
                            if "start:" in ln or "ready" in ln or "applied (" in ln][:4]
            stop(d)
            out.update(boot_restore(sb, tmp / "state", ns, send, recv, ports[3]))
            # 7. the daemon's own initial apply, then changes
            os.environ["SECGROUP_AGENT_STATE_DIR"] = str(tmp / "state2")
            drop_tables(sb)
            t0 = time.monotonic()
            d = agent(sb, tmp, config, "run3.log")
            procs.append(d)
            out["cold_run_ready_s"] = L.wait_ready(str(tmp / "agent.sock"), d, t0)
            lat = [L.one_change(L.FilePublisher(tmp), doc, gid, p, recv, send) for p in ports[4:]]
            out["changes_after_initial_apply_ms"] = [round(x, 1) for x in lat]
            out["run3.log"] = [ln for ln in (tmp / "run3.log").read_text().splitlines()
                               if "applied (" in ln or "drift" in ln or "lost" in ln][:8]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
                    p.wait()
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
