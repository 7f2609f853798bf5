#!/usr/bin/env python3
"""Change-to-enforced latency of `secgroup-agent run`, measured with real traffic, and
the daemon's resident memory. Everything runs in network namespaces of its own.

    sudo .venv/bin/python bench/latency.py --interfaces 10 --rules 50 --changes 20

The desired state comes from scripts/gen-config (or --config F). One local
interface gets a real instance namespace; a bench rule (priority 1, from 192.0.2.0/24,
the `outside` namespace, one port) is added to one of its groups. Each change moves that
rule to a new port P (one where the bench rule decides and nothing else admits P) and is
written to the watched file by atomic rename at time t0; t1 is when traffic from
`outside` to P is first seen through the firewall (CLOCK_MONOTONIC is shared by all
namespaces). Latency = t1 - t0: inotify, read, validate, compile, plan, commit, plus the
probe's interval. `--probe` (bench/latency_probes.py) says how t1 is seen:

  tcp (default for --change rule; the bench rule is a tcp rule): a listener in the
      instance listens on P before the change; a prober in `outside` tries a fresh
      non-blocking connect to P every 10 ms, each given 8 ms; t1 = the first handshake
      completed, seen by the prober (the SYN admitted by the rule, the SYN-ACK back as an
      established flow). The figure includes up to 10 ms of the prober's interval
      (t0 is put at a random phase of it: ~5 ms on average).
  udp (default for --change member; the rule is a udp rule): a sender in `outside` sends
      to P every 0.5 ms; t1 = the first datagram's arrival in the instance (< 0.5 ms of
      interval in the figure).

`--change member` measures a membership change instead: every group of the document gets
a rule admitting P (udp, or tcp with --probe tcp) from the group `sg-probe` (so every local policy chain names it),
and each change makes a remote instance holding the `outside` address join `sg-probe`
(after it left it in a change that is not timed); with `--remote N` the document has N
more members on other hosts (gen-config --remote).

`--source etcd` (or `file,etcd`) has the daemon follow an etcd instead of the file: etcd
(Debian's etcd-server) runs in the `outside` namespace, the initial document is
published there (`secgroup-agent publish`'s layout), and each join is ONE put of the key
`instances/bench-member`, as a controller would write it (t0 is taken just before the
request; etcd's commit is in the figure). With several sources the joins are run in
`--rounds` rounds alternating the sources, each round a fresh sandbox and daemon, so
the figures of the sources are interleaved in time:

    sudo .venv/bin/python bench/latency.py --remote 10000 --change member --source file,etcd \
        --changes 30 --rounds 3
"""
from __future__ import annotations

import argparse
import copy
import ipaddress
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from agent.model.objects import EGRESS, INGRESS  # noqa: E402
from agent.policy.effective import PROTOCOL_NUMBERS, Packet, build_effective_list, evaluate  # noqa: E402
from sandbox.hypervisor import OUTSIDE4, Sandbox, check_tools  # noqa: E402
from bench.latency_probes import PROBES, RECEIVER, SENDER, Probe, UdpProbe, kill, make_probe  # noqa: E402,F401
from agent.service.status import query  # noqa: E402
from agent.model.validate import validate_document  # noqa: E402

GEN = Path(__file__).resolve().parents[1] / "scripts" / "gen-config"
PY = sys.executable

WRITER = """
import json, sys, time
from agent.distribution.publish import publish
from agent.sources.client import ClientOptions
from agent.sources.etcd_gateway import EtcdGateway, b64
from agent.sources.etcd_layout import parse_etcd_spec
spec = sys.argv[1]; target = parse_etcd_spec(spec)
gw = EtcdGateway(list(target.endpoints), ClientOptions.from_kwargs(spec, {}))
for line in sys.stdin:
    what, arg = line.split(" ", 1)
    if what == "publish":
        publish(arg.strip(), spec, target); print("OK", flush=True)
    else:
        key, value = json.loads(arg)
        t0 = time.monotonic()
        gw.txn([], [{"request_put": {"key": b64(target.prefix + "/" + key), "value": b64(value)}}])
        print(f"T0 {t0}", flush=True)
"""


class FilePublisher:
    """Changes by atomic rename of the watched file."""

    def __init__(self, tmp: Path) -> None:
        self.config = tmp / "config.json"
        self.spec = str(self.config)

    def start(self, sb: Sandbox, doc: dict) -> None:
        write(self.config, doc)

    def put(self, doc: dict) -> float:
        return write(self.config, doc)

    def close(self) -> None:
        pass


class EtcdPublisher:
    """Changes as puts of the member's key into an etcd in the outside namespace."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.etcd = None
        self.writer: subprocess.Popen | None = None
        self.spec = ""

    def start(self, sb: Sandbox, doc: dict) -> None:
        from source_helpers import Etcd
        self.etcd = Etcd(host=OUTSIDE4, netns=sb.outside,
                         args=("--max-txn-ops", "100000", "--max-request-bytes", str(64 << 20))).start()
        self.spec = f"etcd://{self.etcd.endpoint}/bench"
        self.writer = sb.popen(sb.outside, PY, "-c", WRITER, self.spec, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
        path = self.tmp / "publish.json"
        path.write_text(json.dumps(doc))
        self._say(f"publish {path}")

    def _say(self, line: str) -> str:
        assert self.writer is not None and self.writer.stdin and self.writer.stdout
        self.writer.stdin.write(line + "\n")
        self.writer.stdin.flush()
        return self.writer.stdout.readline().strip()

    def put(self, doc: dict) -> float:
        from agent.sources.etcd_layout import canonical
        member = next(i for i in doc["instances"] if i["id"] == "bench-member")
        answer = self._say("put " + json.dumps(["instances/bench-member", canonical(member).decode()]))
        return float(answer.split()[1])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.kill()
            self.writer.wait()
        if self.etcd is not None:
            self.etcd.destroy()


def bench_rule(port: int, protocol: str = "udp") -> dict:
    return {"id": "bench-probe", "direction": "ingress", "policy": "accept", "priority": 1,
            "protocol": protocol, "port_range": f"{port}/{port}", "source_cidr": "192.0.2.0/24"}


PROBE_GROUP, IDLE_GROUP, MEMBER_PORT = "sg-probe", "sg-probe-idle", 64999
WARMUP = 0              # untimed joins after each daemon start (--warmup)


def with_member(doc: dict, joined: bool, protocol: str = "udp") -> dict:
    """`doc` with every group admitting `protocol`/MEMBER_PORT from sg-probe, and the remote
    instance holding the outside address in sg-probe (joined) or in an unnamed group."""
    new = copy.deepcopy(doc)
    for g in new["security_groups"]:
        g["rules"] = g["rules"] + [{"id": "bench-member", "direction": "ingress", "policy": "accept",
                                    "priority": 1, "protocol": protocol,
                                    "port_range": f"{MEMBER_PORT}/{MEMBER_PORT}", "source_group": PROBE_GROUP}]
    new["security_groups"] += [{"id": PROBE_GROUP, "rules": []}, {"id": IDLE_GROUP, "rules": []}]
    new["instances"] = new["instances"] + [{
        "id": "bench-member", "host": "elsewhere", "security_groups": [PROBE_GROUP if joined else IDLE_GROUP],
        "interfaces": [{"name": "bench0", "addresses": [OUTSIDE4]}]}]
    return new


def with_port(doc: dict, gid: str, port: int, protocol: str = "udp") -> dict:
    new = copy.deepcopy(doc)
    group = next(g for g in new["security_groups"] if g["id"] == gid)
    group["rules"] = [r for r in group["rules"] if r.get("id") != "bench-probe"] + [bench_rule(port, protocol)]
    return new


def usable_ports(doc: dict, gid: str, nic: str, addr: str, count: int, protocol: str = "udp") -> list[int]:
    """count + 1 ports where the bench rule decides (no priority-1 drop of other rules wins)
    and nothing else admits the port (so it opens exactly when the rule moves there). For
    tcp the instance's SYN-ACK must leave as an established flow."""
    proto = PROTOCOL_NUMBERS[protocol]
    src, dst = ipaddress.ip_address(OUTSIDE4), ipaddress.ip_address(addr)
    base = validate_document(doc)
    closed = build_effective_list(base, nic, INGRESS)
    if protocol == "tcp":
        reply = Packet(dst, src, proto, 61000, 40000, None, state="established")
        if evaluate(build_effective_list(base, nic, EGRESS), reply).verdict != "accept":
            raise SystemExit(f"{nic}: an established tcp reply is not accepted on egress")
    out = []
    for port in range(61000, 65000):
        packet = Packet(src, dst, proto, 40000, port, None)
        if evaluate(closed, packet).verdict == "accept":
            continue
        d = evaluate(build_effective_list(validate_document(with_port(doc, gid, port, protocol)), nic, INGRESS),
                     packet)
        if d.verdict == "accept" and d.entry.rule_id == "bench-probe":
            out.append(port)
            if len(out) == count + 1:
                return out
    raise SystemExit(f"no {protocol} port where the bench rule decides")


def write(path: Path, doc: dict) -> float:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    t0 = time.monotonic()
    os.rename(tmp, path)
    return t0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pick_interface(doc: dict) -> tuple[str, str, str]:
    inst = doc["instances"][0]
    nic = inst["interfaces"][0]
    addr = next(a for a in nic["addresses"] if ":" not in a)
    return inst["security_groups"][0], nic["name"], addr


def measure(doc: dict, changes: int, tmp: Path, member: bool = False, source: str = "file",
            probe: str = "udp") -> dict:
    gid, nic, addr = pick_interface(doc)
    ports = [MEMBER_PORT] * (changes + 1 + WARMUP) if member else usable_ports(doc, gid, nic, addr, changes + WARMUP, probe)
    sock = str(tmp / "agent.sock")
    pub = EtcdPublisher(tmp) if source == "etcd" else FilePublisher(tmp)
    with Sandbox(f"sgb{os.getpid() % 10000}") as sb:
        try:
            pub.start(sb, with_member(doc, False, probe) if member else with_port(doc, gid, ports[0], probe))
            return _measured(sb, pub, doc, (gid, nic, addr), ports, sock, tmp, member, probe)
        finally:
            pub.close()


def _measured(sb: Sandbox, pub, doc: dict, where: tuple[str, str, str], ports: list[int], sock: str,
              tmp: Path, member: bool, protocol: str) -> dict:
    gid, nic, addr = where
    ns = sb.add_instance("inst", nic, [addr])
    t = time.monotonic()
    verbose = ["-v"] if os.environ.get("BENCH_KEEP") else []
    agent, probe = None, None
    try:
        agent = sb.popen(sb.hv, PY, "-m", "agent.cli.main", *verbose, "run", "-c", pub.spec, "--socket", sock,
                         stdout=open(tmp / "agent.log", "w"), stderr=subprocess.STDOUT, cwd=str(ROOT))
        probe = make_probe(protocol, sb, ns, addr)
        first = wait_ready(sock, agent, t)
        if member:
            def change(_port: int) -> float:
                return one_join(pub, doc, sock, probe, protocol)
        else:
            def change(port: int) -> float:
                return timed_change(pub, with_port(doc, gid, port, protocol), port, probe)
        for p in ports[1:1 + WARMUP]:       # untimed: the first changes after a start
            change(p)
        if WARMUP:
            time.sleep(2.0)                  # and the daemon's first save, done when idle
        lat = [change(p) for p in ports[1 + WARMUP:]]
        return {"first_apply_s": first, "latencies_ms": lat, "rss_mb": rss_mb(agent.pid),
                "status": query(sock)}
    finally:
        if probe is not None:
            probe.close()
        kill(agent)


def wait_ready(sock: str, agent: subprocess.Popen, t: float) -> float:
    while True:
        try:
            if query(sock, timeout=1).ready:
                return time.monotonic() - t
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if agent.poll() is not None:
            raise SystemExit("the agent exited")
        time.sleep(0.05)


def timed_change(pub, new: dict, port: int, probe: Probe) -> float:
    """Arm the probe on `port`, publish `new` (t0), wait for the first admitted traffic (t1)."""
    probe.arm(port)
    # Nothing may arrive before the change; the random part puts t0 at a random phase of
    # the probe's interval (the tcp prober's ticks start at arm()).
    time.sleep(0.05 + random.uniform(0, 0.01))
    t0 = pub.put(new)
    t1 = probe.arrival()
    if t1 < 0:
        raise SystemExit(f"port {port}: never enforced ({probe.protocol} probe)")
    if t1 < t0:
        raise SystemExit(f"port {port}: {probe.protocol} traffic admitted before the change")
    return (t1 - t0) * 1000


def one_change(pub, doc: dict, gid: str, port: int, recv, send, new: dict | None = None) -> float:
    """The udp one-rule change over a receiver and a sender started by the caller."""
    return timed_change(pub, new or with_port(doc, gid, port), port, UdpProbe.of(recv, send))


def one_join(pub, doc: dict, sock: str, probe: Probe, protocol: str = "udp") -> float:
    """The member leaves (not timed; waited for until the daemon reports the revision
    applied), then joins: the first traffic admitted through sg-probe's set."""
    before = query(sock).revision
    pub.put(with_member(doc, False, protocol))
    deadline = time.monotonic() + 30
    while query(sock).revision == before and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    return timed_change(pub, with_member(doc, True, protocol), MEMBER_PORT, probe)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interfaces", type=int, default=10)
    ap.add_argument("--rules", type=int, default=50)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--config", help="use this desired state instead of gen-config's")
    ap.add_argument("--remote", type=int, default=0, help="gen-config --remote (members on other hosts)")
    ap.add_argument("--change", choices=["rule", "member"], default="rule",
                    help="rule: one rule moves to a new port; member: a remote member joins a peer group")
    ap.add_argument("--probe", choices=sorted(PROBES),
                    help="how enforcement is seen: tcp (connect every 10 ms; default for --change rule) "
                         "or udp (datagram every 0.5 ms; default for --change member)")
    ap.add_argument("--source", default="file", help="file, etcd, or file,etcd (interleaved in rounds)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds per source (changes are split among them)")
    ap.add_argument("--warmup", type=int, default=0,
                    help="untimed changes after each daemon start (its first save and settle)")
    a = ap.parse_args()
    global WARMUP
    WARMUP = a.warmup
    a.probe = a.probe or ("tcp" if a.change == "rule" else "udp")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # the cleanup runs on a kill too
    sources = a.source.split(",")
    if set(sources) - {"file", "etcd"}:
        raise SystemExit(f"--source: file or etcd, not {a.source}")
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespaces)")
    missing = check_tools("ip", "sysctl")
    if missing:
        raise SystemExit(f"latency benchmark: {missing}")
    if a.config:
        doc = json.loads(Path(a.config).read_text()) if a.config.endswith(".json") else \
            __import__("yaml").safe_load(Path(a.config).read_text())
    else:
        doc = json.loads(subprocess.run([str(GEN), "--interfaces", str(a.interfaces), "--rules", str(a.rules),
                                         "--remote", str(a.remote)], capture_output=True, text=True, check=True).stdout)
    per_round = max(1, a.changes // max(1, a.rounds))
    results: dict[str, list[dict]] = {s: [] for s in sources}
    for n in range(a.rounds):
        for source in sources:
            with tempfile.TemporaryDirectory(prefix="sgbench") as tmp:
                os.environ["SECGROUP_AGENT_STATE_DIR"] = str(Path(tmp) / "state")   # not /var/lib
                r = measure(doc, per_round, Path(tmp), member=a.change == "member", source=source,
                            probe=a.probe)
                if os.environ.get("BENCH_LOG"):
                    print((Path(tmp) / "agent.log").read_text()[-3000:])
                if os.environ.get("BENCH_KEEP"):      # the daemon's debug log, kept
                    keep = Path(os.environ["BENCH_KEEP"]) / f"agent-{source}-{n + 1}.log"
                    keep.write_text((Path(tmp) / "agent.log").read_text())
            lat = r["latencies_ms"]
            print(f"round {n + 1} {source}, {a.probe} probe: p50 {percentile(lat, .5):.1f} ms, max {max(lat):.1f} ms, "
                  f"load {os.getloadavg()[0]:.2f}; " + " ".join(f"{x:.0f}" for x in lat), flush=True)
            results[source].append(r)
    for source, runs in results.items():
        report(a, source, runs)
    return 0


def report(a: argparse.Namespace, source: str, runs: list[dict]) -> None:
    r = runs[-1]
    lat, rs = [x for run in runs for x in run["latencies_ms"]], r["status"].to_dict()["ruleset"]
    print(f"change: {a.change} through {source}; probe: {PROBES[a.probe]}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"size: {a.interfaces} interfaces x {a.rules} rules/group, {a.remote} remote -> {rs['chains']} chains, "
          f"{rs['rules']} rules, {rs['sets']} sets, {rs['elements']} elements")
    print("first (full) apply, start to ready: " + ", ".join(f"{run['first_apply_s']:.2f}" for run in runs) + " s")
    print(f"change-to-enforced ({a.probe} probe) over {len(lat)} changes: p50 {percentile(lat, .5):.1f} ms, "
          f"p99 {percentile(lat, .99):.1f} ms, max {max(lat):.1f} ms, mean {statistics.mean(lat):.1f} ms, "
          f"min {min(lat):.1f} ms")
    print("daemon resident memory after the changes: " + ", ".join(f"{run['rss_mb']:.0f}" for run in runs) + " MB")


if __name__ == "__main__":
    sys.exit(main())
