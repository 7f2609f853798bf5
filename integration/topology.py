"""The integration suite's hypervisor, instances and wires, in Docker containers.

Every container runs with `network_mode: none`; this module wires them the way
sandbox/hypervisor.py wires namespaces, with pyroute2 acting in each container's network
namespace (reached as /proc/<pid>/ns/net: no named namespace is created, and the host's
root namespace is never touched):

* routed instances: veth `tap-<name>` (in the hypervisor) <-> `eth0` (in the instance);
  the instance holds /32 and /128 addresses and default routes via 169.254.1.1 /
  fe80::1; the hypervisor answers by proxy ARP, owns fe80::1 on every tap and routes
  each address to its tap;
* bridged instances: the tap is a port of `br0` (10.1.0.1/24, fd01::1/64) in the
  hypervisor; br_netfilter hands bridged IP traffic to the inet hooks;
* outside: `uplink` (hypervisor, 192.0.2.1/24, 2001:db8:f::1/64) <-> `eth0` of the
  outside container (192.0.2.2, 2001:db8:f::2), which also holds the addresses of
  "remote" instances (other hypervisors' members) and routes the instance networks
  through the hypervisor.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Optional

from pyroute2 import IPRoute

OUTSIDE4, OUTSIDE6 = "192.0.2.2", "2001:db8:f::2"
HV_UPLINK4, HV_UPLINK6 = "192.0.2.1", "2001:db8:f::1"
BRIDGE4, BRIDGE6 = "10.1.0.1", "fd01::1"
REMOTE4, REMOTE6 = "10.9.0.22", "fd09::22"      # a member living on "hv-02" (the outside)
TOOL = "/opt/sgit/tools/sgpkt.py"


class TopologyError(RuntimeError):
    pass


def sh(cmd: list[str], input: Optional[str] = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise TopologyError(f"{' '.join(cmd)}: exit {p.returncode}: {(p.stderr or p.stdout).strip()}")
    return p


@dataclass
class Container:
    service: str
    cid: str

    @property
    def pid(self) -> int:
        return int(sh(["docker", "inspect", "-f", "{{.State.Pid}}", self.cid]).stdout)

    @property
    def netns(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def exec(self, *cmd: str, input: Optional[str] = None, check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess:
        return sh(["docker", "exec", *(["-i"] if input is not None else []), self.cid, *cmd],
                  input=input, check=check, timeout=timeout)

    def sysctl(self, key: str, value: str) -> None:
        # enters only the network namespace: /proc/sys/net is the container's, and the
        # container's own /proc/sys stays read-only as Docker mounts it
        sh(["nsenter", "-t", str(self.pid), "-n", "sysctl", "-qw", f"{key}={value}"])

    def ipr(self) -> IPRoute:
        return IPRoute(netns=self.netns, flags=0)


@dataclass
class Instance(Container):
    name: str = ""
    tap: str = ""
    addresses: list[str] = field(default_factory=list)
    mac: Optional[str] = None
    attachment: str = "routed"

    def addr(self, version: int) -> str:
        return next(a for a in self.addresses if (":" in a) == (version == 6))

    def captures(self) -> list[dict]:
        out = self.exec("cat", "/tmp/sgpkt/capture.jsonl").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def send(self, probes: list[dict]) -> list[str]:
        p = self.exec("python3", TOOL, "send", json.dumps(probes), check=False)
        try:
            return json.loads(p.stdout)
        except json.JSONDecodeError:
            raise TopologyError(f"{self.name}: send failed: {p.stderr.strip() or p.stdout.strip()}") from None


def _veth(a: Container, name_a: str, b: Container, name_b: str, mac_b: Optional[str]) -> None:
    """A veth pair made in a's namespace, the peer created directly in b's."""
    tmp = "sg" + uuid.uuid4().hex[:10]
    with a.ipr() as ipa:
        if ipa.link_lookup(ifname=name_a):
            ipa.link("del", ifname=name_a)
        ipa.link("add", ifname=name_a, kind="veth", peer={"ifname": tmp, "net_ns_pid": b.pid})
        ipa.link("set", ifname=name_a, state="up")
    with b.ipr() as ipb:
        idx = ipb.link_lookup(ifname=tmp)[0]
        kw = {"address": mac_b} if mac_b else {}
        ipb.link("set", index=idx, ifname=name_b, **kw)
        ipb.link("set", index=idx, state="up")


def _addr(c: Container, dev: str, addr: str, plen: int) -> None:
    with c.ipr() as ipr:
        idx = ipr.link_lookup(ifname=dev)[0]
        kw = {"flags": 0x02} if ":" in addr else {}      # IFA_F_NODAD
        ipr.addr("add", index=idx, address=addr, prefixlen=plen, **kw)


def _route(c: Container, dst: str, dev: Optional[str] = None, gateway: Optional[str] = None) -> None:
    with c.ipr() as ipr:
        kw: dict = {"dst": dst}
        if dev:
            kw["oif"] = ipr.link_lookup(ifname=dev)[0]
        if gateway:
            kw["gateway"] = gateway
        if ":" in dst or (gateway and ":" in gateway):
            kw["family"] = 10
        elif dev and not gateway:
            kw["scope"] = 253        # link, as `ip route add A dev D` sets it
        ipr.route("replace", **kw)


class Topology:
    def __init__(self, hv: Container, outside: Instance):
        self.hv = hv
        self.outside = outside
        self.instances: dict[str, Instance] = {}
        self.bridge_ready = False

    # -- building ------------------------------------------------------------------
    def wire_outside(self) -> None:
        hv, out = self.hv, self.outside
        for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
            hv.sysctl(key, "1")
        out.sysctl("net.ipv6.conf.all.accept_dad", "0")
        _veth(hv, "uplink", out, "eth0", None)
        _addr(hv, "uplink", HV_UPLINK4, 24)
        _addr(hv, "uplink", HV_UPLINK6, 64)
        _addr(out, "eth0", OUTSIDE4, 24)
        _addr(out, "eth0", OUTSIDE6, 64)
        _addr(out, "eth0", REMOTE4, 32)
        _addr(out, "eth0", REMOTE6, 128)
        _route(hv, "0.0.0.0/0", gateway=OUTSIDE4)
        _route(hv, "::/0", gateway=OUTSIDE6)
        _route(out, "10.0.0.0/8", gateway=HV_UPLINK4)
        _route(out, "fd00::/8", gateway=HV_UPLINK6)

    def add_instance(self, inst: Instance) -> Instance:
        inst.sysctl("net.ipv6.conf.all.accept_dad", "0")
        inst.sysctl("net.ipv6.conf.default.accept_dad", "0")
        _veth(self.hv, inst.tap, inst, "eth0", inst.mac)
        if inst.attachment == "bridged":
            self._ensure_bridge()
            with self.hv.ipr() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname=inst.tap)[0],
                         master=ipr.link_lookup(ifname="br0")[0])
            for a in inst.addresses:
                _addr(inst, "eth0", a, 64 if ":" in a else 24)
            _route(inst, "0.0.0.0/0", gateway=BRIDGE4)
            _route(inst, "::/0", gateway=BRIDGE6)
        else:
            self.hv.sysctl(f"net.ipv4.conf.{inst.tap}.proxy_arp", "1")
            _addr(self.hv, inst.tap, "fe80::1", 64)
            _route(inst, "169.254.1.1/32", dev="eth0")
            _route(inst, "0.0.0.0/0", dev="eth0", gateway="169.254.1.1")
            _route(inst, "::/0", dev="eth0", gateway="fe80::1")
            for a in inst.addresses:
                plen = 128 if ":" in a else 32
                _addr(inst, "eth0", a, plen)
                _route(self.hv, f"{a}/{plen}", dev=inst.tap)
        self.instances[inst.name] = inst
        return inst

    def _ensure_bridge(self) -> None:
        if self.bridge_ready:
            return
        with self.hv.ipr() as ipr:
            ipr.link("add", ifname="br0", kind="bridge")
            ipr.link("set", ifname="br0", state="up")
        _addr(self.hv, "br0", BRIDGE4, 24)
        _addr(self.hv, "br0", BRIDGE6, 64)
        for key in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"):
            self.hv.sysctl(key, "1")
        self.bridge_ready = True

    # -- traffic -------------------------------------------------------------------
    def warm_up(self) -> None:
        """Fill the neighbour caches (hv <-> every instance) before the first probe."""
        procs = []
        for inst in self.instances.values():
            gw = ["fe80::1%eth0"] if inst.attachment == "routed" else [BRIDGE4, BRIDGE6]
            for target in gw:
                procs.append(subprocess.Popen(["docker", "exec", inst.cid, "ping", "-c", "1", "-W", "1", target],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for a in inst.addresses:
                procs.append(subprocess.Popen(["docker", "exec", self.hv.cid, "ping", "-c", "1", "-W", "1", a],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for p in procs:
            p.wait()

    def node(self, name: str) -> Instance:
        return self.outside if name == "outside" else self.instances[name]


@dataclass
class Probe:
    """One crafted packet opening a new flow: from instance `src` to instance `dst` (or
    `outside`), over IPv4 or IPv6; `src_addr`/`dst_addr` override the addresses."""
    src: str
    dst: str
    proto: str                     # tcp | udp | icmp (icmpv6 over IPv6)
    dport: int = 0
    v6: bool = False
    src_addr: Optional[str] = None
    dst_addr: Optional[str] = None
    flags: str = "S"               # tcp: anything else opens no connection (invalid)
    marker: str = field(default_factory=lambda: "SGM" + uuid.uuid4().hex[:12])

    def __str__(self) -> str:
        port = f":{self.dport}" if self.dport else ""
        via = f" from {self.src_addr}" if self.src_addr else ""
        return f"{self.proto}{'6' if self.v6 and self.proto != 'icmpv6' else ''} {self.src}{via} -> {self.dst}{port}"


@dataclass
class Outcome:
    probe: Probe
    delivered: bool               # the receiver captured the marker
    replied: Optional[bool]       # the sender captured the receiver's answer (None: n/a)
    send_status: str


def _addresses(topo: Topology, p: Probe) -> tuple[str, str]:
    v = 6 if p.v6 else 4
    src = p.src_addr or topo.node(p.src).addr(v)
    dst = p.dst_addr or topo.node(p.dst).addr(v)
    return src, dst


def _reply_seen(p: Probe, src: str, dst: str, caps: list[dict]) -> bool:
    """Did the sender capture an answer from the receiver to this probe? UDP and ICMP
    echoes carry the marker back; a TCP SYN gets a SYN-ACK to the probe's source port."""
    for c in caps:
        if c.get("dir") != "in" or c.get("src") != dst or c.get("dst") != src:
            continue
        if p.proto == "tcp":
            if p.flags != "S":
                return False
            flags = c.get("flags", "")
            if (c.get("proto") == "tcp" and "S" in flags and "A" in flags
                    and c.get("sport") == p.dport and c.get("dport") == _sport(p)):
                return True
        elif c.get("marker") == p.marker:
            return True
    return False


def _sport(p: Probe) -> int:
    return 40000 + int(p.marker[-4:], 16) % 20000


def run_probes(topo: Topology, probes: Iterable[Probe], wait: float = 1.0,
               patience: float = 4.0, expect: Optional[dict[str, bool]] = None) -> list[Outcome]:
    """Send every probe (one `docker exec` per sender), then read what each receiver
    captured. A probe counts as delivered when its marker arrived in the receiver's
    capture. Every probe gets `wait` seconds; the ones expected to pass (`expect`:
    marker -> bool; all when not given) up to `patience`."""
    probes = list(probes)
    expect = expect or {p.marker: True for p in probes}
    by_sender: dict[str, list[tuple[Probe, dict]]] = {}
    for p in probes:
        src, dst = _addresses(topo, p)
        proto = "icmpv6" if p.proto in ("icmp", "icmpv6") and p.v6 else p.proto
        by_sender.setdefault(p.src, []).append(
            (p, {"marker": p.marker, "proto": proto, "src": src, "dst": dst, "dport": p.dport,
                 "flags": p.flags}))
    status: dict[str, str] = {}
    for sender, items in by_sender.items():
        results = topo.node(sender).send([spec for _, spec in items])
        for (p, _), r in zip(items, results):
            status[p.marker] = r
    deadline = time.monotonic() + patience
    time.sleep(wait)
    while True:
        caps = {n: topo.node(n).captures() for n in {p.dst for p in probes} | {p.src for p in probes}}
        got = {n: {c.get("marker") for c in cs if c.get("dir") == "in" and c.get("marker")}
               for n, cs in caps.items()}
        missing = [p for p in probes if expect.get(p.marker) and (
            p.marker not in got[p.dst] or not _reply_seen(p, *_addresses(topo, p), caps[p.src]))]
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    out = []
    for p in probes:
        src, dst = _addresses(topo, p)
        delivered = p.marker in got[p.dst]
        replied = _reply_seen(p, src, dst, caps[p.src]) if delivered else None
        out.append(Outcome(p, delivered, replied, status.get(p.marker, "?")))
    return out


def check(topo: Topology, cases: list[tuple[Probe, bool]], why: str = "") -> None:
    """Send every probe at once; assert each was delivered (True) or not (False), and
    that the answers of delivered new flows came back (stateful return traffic)."""
    expect = {p.marker: want for p, want in cases}
    outcomes = run_probes(topo, [p for p, _ in cases], expect=expect)
    # one more try, with fresh markers, for probes that should have passed but did not:
    # a first packet can be lost to neighbour resolution. A probe expected to be dropped
    # is never retried (a retry could only make it pass).
    again = [i for i, o in enumerate(outcomes) if expect[o.probe.marker] and not (o.delivered and o.replied is not False)]
    if again:
        retry = [dataclasses.replace(outcomes[i].probe, marker="SGM" + uuid.uuid4().hex[:12]) for i in again]
        for i, o in zip(again, run_probes(topo, retry)):
            expect[o.probe.marker] = True
            outcomes[i] = o
    bad = []
    for o in outcomes:
        want = expect[o.probe.marker]
        if o.delivered != want:
            bad.append(f"{o.probe}: expected {'DELIVERED' if want else 'DROPPED'}, "
                       f"receiver {'captured' if o.delivered else 'did not capture'} it (send: {o.send_status})")
        elif want and o.replied is False and (o.probe.proto != "tcp" or o.probe.flags == "S"):
            bad.append(f"{o.probe}: delivered, but its answer did not reach the sender")
    assert not bad, (why + "\n" if why else "") + "\n".join(bad)


class Hold:
    """A long-lived TCP connection (`python3 -m sandbox.probe hold` in the client
    container, echoed by the server's packet tool), exchanging a line every 100 ms."""

    def __init__(self, topo: Topology, client: str, server: str, port: int, v6: bool = False,
                 src: Optional[str] = None):
        self.node = topo.node(client)
        self.dst = topo.node(server).addr(6 if v6 else 4)
        self.log = f"/tmp/hold-{uuid.uuid4().hex[:8]}.log"
        args = f"--dst {self.dst} --port {port} --interval 0.1 --timeout 0.6" + (f" --src {src}" if src else "")
        out = self.node.exec("sh", "-c", f"nohup python3 -m sandbox.probe hold {args} > {self.log} 2>&1 & echo $!")
        self.pid = int(out.stdout.strip())

    def lines(self) -> list[str]:
        return self.node.exec("cat", self.log, check=False).stdout.splitlines()

    def oks(self) -> int:
        return sum(1 for line in self.lines() if line.startswith("OK "))

    def broken(self) -> Optional[str]:
        return next((line for line in self.lines() if line.startswith("BROKEN")), None)

    def wait_up(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.oks() >= 3:
                return
            if self.broken():
                break
            time.sleep(0.2)
        raise AssertionError(f"connection {self.node.name} -> {self.dst} did not come up: {self.lines()[-3:]}")

    def assert_alive(self, since: int, what: str) -> int:
        """The connection still exchanges lines (more than `since`) and never broke."""
        time.sleep(0.6)
        n, broken = self.oks(), self.broken()
        assert broken is None and n > since, f"{what}: the established connection broke: {broken or self.lines()[-3:]}"
        return n

    def wait_broken(self, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            b = self.broken()
            if b:
                return b
            time.sleep(0.2)
        raise AssertionError(f"connection {self.node.name} -> {self.dst} still alive after {timeout}s")

    def stop(self) -> None:
        self.node.exec("kill", str(self.pid), check=False)
