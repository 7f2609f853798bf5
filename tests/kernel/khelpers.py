"""The kernel tests' hypervisor: a Sandbox (sandbox/hypervisor.py) with four instances and the
outside namespace, a probe responder in each (sandbox/probe.py `Responder`), the agent
applied by its CLI inside the hypervisor namespace, and the semantics engine
(agent/policy/effective.py) as the reference for every verdict observed.

Nothing here touches the root namespace: every object lives in namespaces named
`<prefix>-*`, and `Topology.close()` removes them (the fixtures call it in `finally`).
"""
from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Union

from agent.model.objects import DROP, EGRESS, INGRESS, DesiredState
from agent.policy.effective import PROTOCOL_NUMBERS, Packet, build_effective_list, evaluate
from sandbox.probe import ProbeResult, ProbeSpec, Responder, probe_many
from agent.policy.revocation import Flow
from sandbox.hypervisor import OUTSIDE4, OUTSIDE6, Sandbox, check_tools, run
from agent.model.validate import validate_document

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
HOST = "hv-test"
TABLE = "secgroup_agent"
PORTS = (22, 80, 443, 3389, 5432, 7001, 7002, 7003, 8080, 8081, 9999)
REMOTE4, REMOTE6 = "198.51.100.7", "2001:db8:77::7"     # a remote member; outside holds it
DROP_TIMEOUT = 0.8          # how long a probe waits before it counts as dropped
INSTANCES = ("i1", "i2", "i3", "i4")
ANY = ("0.0.0.0/0", "::/0")


def kernel_skip_reason() -> Optional[str]:
    """Why the kernel tests cannot run here besides root (tests/conftest.py: require_root);
    None: they can."""
    missing = check_tools("ip", "nft", "ping", "sysctl", "conntrack")
    if missing:
        return f"kernel tests: {missing}"
    try:
        import nftables  # noqa: F401
    except ImportError:
        return "kernel tests need the nftables Python binding (python3-nftables)"
    return None


# -- documents -----------------------------------------------------------------------
def rule(direction: str, protocol: str = "all", policy: str = "accept", priority: int = 1,
         ports: Optional[str] = None, rid: Optional[str] = None, **peer: str) -> dict:
    """One rule; the peer as cidr=, group= or pl= (source_* on ingress, dest_* on egress)."""
    side = "source" if direction == INGRESS else "dest"
    names = {"cidr": f"{side}_cidr", "group": f"{side}_group", "pl": f"{side}_prefix_list"}
    out = {"direction": direction, "protocol": protocol, "policy": policy, "priority": priority}
    if ports:
        out["port_range"] = ports
    if rid:
        out["id"] = rid
    out.update({names[k]: v for k, v in peer.items()})
    return out


def both(direction: str, protocol: str = "all", policy: str = "accept", priority: int = 1,
         ports: Optional[str] = None, rid: Optional[str] = None) -> list[dict]:
    """The same rule for 0.0.0.0/0 and ::/0 (icmp/icmpv6 only for their own family)."""
    cidrs = {"icmp": ANY[:1], "icmpv6": ANY[1:]}.get(protocol, ANY)
    return [rule(direction, protocol, policy, priority, ports,
                 f"{rid}-{'v6' if ':' in c else 'v4'}" if rid else None, cidr=c) for c in cidrs]


def group(gid: str, *rules: Union[dict, list], type: str = "custom", **kw) -> dict:
    flat: list[dict] = []
    for r in rules:
        flat += r if isinstance(r, list) else [r]
    return {"id": gid, "type": type, "rules": flat, **kw}


# -- topology --------------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    name: str
    ns: str
    tap: str
    v4: str
    v6: str
    mac: str
    spoof4: str
    spoof6: str


class Topology:
    """A hypervisor namespace with instances i1..i4 (all routed or all bridged) and
    the outside namespace, which also holds the remote member's addresses."""

    def __init__(self, attachment: str, prefix: str, workdir: Path):
        self.attachment = attachment
        self.workdir = workdir
        self.applied: Optional[str] = None        # the document last applied (JSON text)
        self.responders: dict[str, Responder] = {}
        self.sb = Sandbox(prefix)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        sb = self.sb
        net4, net6 = ("10.1.0", "fd01::") if self.attachment == "bridged" else ("10.0.0", "fd00::")
        self.nodes: dict[str, Node] = {}
        for n, name in enumerate(INSTANCES, 1):
            node = Node(name, "", f"tap-{name}", f"{net4}.{10 + n}", f"{net6}{10 + n}",
                        f"52:54:00:00:00:{n:02x}", f"{net4}.{90 + n}", f"{net6}{90 + n}")
            ns = sb.add_instance(name, node.tap, [node.v4, node.v6], node.mac, self.attachment)
            # the spoofing probes bind to an address the instance does not hold
            sb.sysctl(ns, "net.ipv4.ip_nonlocal_bind", "1")
            sb.sysctl(ns, "net.ipv6.ip_nonlocal_bind", "1")
            self.nodes[name] = replace(node, ns=ns)
        sb.ip(sb.outside, "addr", "add", f"{REMOTE4}/32", "dev", "eth0")
        # deprecated at once: never picked as a source unless a socket binds to it
        sb.ip(sb.outside, "-6", "addr", "add", f"{REMOTE6}/128", "dev", "eth0", "nodad", "preferred_lft", "0")
        self.ns = {name: node.ns for name, node in self.nodes.items()} | {"out": sb.outside,
                                                                            "remote": sb.outside}
        with ThreadPoolExecutor(len(self.nodes) + 1) as pool:
            started = {ns: pool.submit(Responder, ns, PORTS) for ns in set(self.ns.values())}
            for ns, fut in started.items():
                self.responders[ns] = fut.result()

    def close(self) -> None:
        for r in self.responders.values():
            r.close()
        self.responders.clear()
        self.sb.close()

    @property
    def hv(self) -> str:
        return self.sb.hv

    # -- addresses ------------------------------------------------------------------
    def addr(self, name: str, version: int) -> str:
        if name == "out":
            return OUTSIDE6 if version == 6 else OUTSIDE4
        if name == "remote":
            return REMOTE6 if version == 6 else REMOTE4
        node = self.nodes[name]
        return node.v6 if version == 6 else node.v4

    def spoof_addr(self, name: str, version: int) -> str:
        node = self.nodes[name]
        return node.spoof6 if version == 6 else node.spoof4

    # -- desired state --------------------------------------------------------------
    def doc(self, groups: list[dict], members: dict[str, list[str]],
            remote: Optional[dict[str, list[str]]] = None, prefix_lists: tuple = (),
            attachments: Optional[dict[str, str]] = None, **top) -> dict:
        """A document: `members` maps local instances (i1..i4) to their groups;
        `remote` maps remote instance ids to groups (they hold REMOTE4/REMOTE6);
        `attachments` overrides the attachment of some instances' interfaces."""
        instances = []
        for name, groups_of in members.items():
            node = self.nodes[name]
            nic = {"name": node.tap, "mac": node.mac, "addresses": [node.v4, node.v6]}
            if attachments and name in attachments:
                nic["attachment"] = attachments[name]
            instances.append({"id": name, "security_groups": list(groups_of), "interfaces": [nic]})
        for rid, groups_of in (remote or {}).items():
            instances.append({"id": rid, "host": "hv-elsewhere", "security_groups": list(groups_of),
                              "interfaces": [{"name": f"tap-{rid}", "addresses": [REMOTE4, REMOTE6]}]})
        # instance_interfaces [] unless given: the instances a document leaves out play
        # other hosts here (with the default patterns their taps would be dropped,
        # docs/fail-closed.md; tests/kernel/test_kernel_fail_closed.py tests that)
        out = {"host": HOST, "attachment": self.attachment, "security_groups": groups,
               "instances": instances, "instance_interfaces": [], **top}
        if prefix_lists:
            out["prefix_lists"] = list(prefix_lists)
        return out

    def state(self, doc: dict) -> DesiredState:
        return validate_document(doc, HOST)

    # -- the agent, inside the hypervisor namespace ----------------------------------
    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", self.hv, PYTHON, "-m", "agent.cli.main", *args],
                   check=False, timeout=timeout, cwd=str(ROOT))

    def write(self, doc: dict) -> Path:
        text = json.dumps(doc, indent=1, sort_keys=True)
        path = self.workdir / f"{self.attachment}-{abs(hash(text)):x}.json"
        path.write_text(text)
        return path

    def apply(self, doc: dict, cached: bool = True) -> Optional[subprocess.CompletedProcess]:
        """`secgroup-agent apply` in the hypervisor namespace (skipped when this very
        document is the last one applied and `cached`); fails the test on exit != 0."""
        text = json.dumps(doc, sort_keys=True)
        if cached and text == self.applied:
            return None
        self.applied = None
        proc = self.cli("apply", "-c", str(self.write(doc)), "--host", HOST)
        assert proc.returncode == 0, f"apply failed ({proc.returncode}): {proc.stderr}{proc.stdout}"
        self.applied = text
        return proc

    def forget(self) -> None:
        """The kernel was changed behind `apply`'s back: the next apply must run."""
        self.applied = None

    def nft_list(self, family: str = "inet", stateless: bool = False) -> Optional[str]:
        """The table's listing; `stateless`: without counter values (`nft -s`), which
        background packets (neighbour discovery of the instances) move at any time."""
        proc = run(["ip", "netns", "exec", self.hv, "nft", *(["-s"] if stateless else []), "list", "table", family,
                    TABLE], check=False)
        return proc.stdout if proc.returncode == 0 else None

    def hv_python(self, code: str) -> object:
        """Run `code` (which prints one JSON document) in the hypervisor namespace."""
        proc = run(["ip", "netns", "exec", self.hv, PYTHON, "-c", code], check=True, cwd=str(ROOT))
        return json.loads(proc.stdout)

    def flows(self) -> list[Flow]:
        """agent.kernel.conntrack.list_flows() in the hypervisor namespace."""
        rows = self.hv_python(
            "import json; from agent.kernel.conntrack import list_flows\n"
            "print(json.dumps([[str(f.src), str(f.dst), f.protocol, f.sport, f.dport, f.icmp_type,"
            " f.icmp_id] for f in list_flows()]))")
        return [Flow(ipaddress.ip_address(r[0]), ipaddress.ip_address(r[1]), *r[2:]) for r in rows]

    def delete_flows(self, flows: list[Flow]) -> int:
        """agent.kernel.conntrack.delete_flows(flows) in the hypervisor namespace."""
        rows = json.dumps([[str(f.src), str(f.dst), f.protocol, f.sport, f.dport, f.icmp_type, f.icmp_id]
                           for f in flows])
        return self.hv_python(
            "import ipaddress, json; from agent.kernel.conntrack import delete_flows; from agent.policy.revocation import Flow\n"
            f"rows = json.loads({rows!r})\n"
            "print(delete_flows(Flow(ipaddress.ip_address(r[0]), ipaddress.ip_address(r[1]), *r[2:])"
            " for r in rows))")

    # -- traffic ----------------------------------------------------------------------
    def probe(self, src: str, dst: str, proto: str, port: int = 0, version: int = 4,
              src_addr: Optional[str] = None, timeout: float = DROP_TIMEOUT) -> ProbeResult:
        if src in ("out", "remote") and src_addr is None:     # outside holds both: say which
            src_addr = self.addr(src, version)
        spec = ProbeSpec(self.ns[src], self.ns[dst], self.addr(dst, version), _l4(proto, version),
                         port, src_addr)
        return probe_many(self.responders, [spec], timeout)[0]

    def hold(self, src: str, dst: str, port: int, version: int = 4) -> "Hold":
        return Hold(self, src, dst, port, version)


def _l4(proto: str, version: int) -> str:
    return "icmpv6" if proto == "icmp" and version == 6 else proto


# -- the reference: agent.policy.effective -------------------------------------------------------
def policy_verdict(state: DesiredState, src: str, dst: str, packet: Packet) -> tuple[str, str]:
    """The semantics engine's verdict for a new connection: the sender's egress list,
    then the receiver's ingress list (where they are local instances), like
    sandbox/demo.py's `expected`. Returns (verdict, what decided it)."""
    why = "no local list (outside to outside)"
    for name, direction in ((src, EGRESS), (dst, INGRESS)):
        inst = state.instance_by_id.get(name)
        if inst is None or inst not in state.local_instances:
            continue
        nic = inst.interfaces[0]
        d = evaluate(build_effective_list(state, nic.name, direction), packet)
        e = d.entry
        who = f"{e.group_id}/{e.rule_id}" if e.rule_id else \
            (f"{e.stage} ({e.group_id})" if e.group_id else e.stage)
        why = f"{nic.name} {direction}: {who}"
        if d.verdict == DROP:
            return DROP, why
    return "accept", why


def packet_for(src_addr: str, dst_addr: str, proto: str, port: int, src_mac: Optional[str] = None) -> Packet:
    version = ipaddress.ip_address(dst_addr).version
    l4 = _l4(proto, version)
    number = PROTOCOL_NUMBERS[l4]
    return Packet(ipaddress.ip_address(src_addr), ipaddress.ip_address(dst_addr), number,
                  40000 if l4 in ("tcp", "udp") else None, port if l4 in ("tcp", "udp") else None,
                  {"icmp": 8, "icmpv6": 128}.get(l4), src_mac)


@dataclass(frozen=True)
class Case:
    """One flow to try. `want`: the verdict the clause promises ("accept"/"drop", or
    per IP version {4: ..., 6: ...}); `spoof`: send from an address the sender does not
    hold; `src_mac`: the MAC the sender's frames carry (for the reference only)."""
    src: str
    dst: str
    proto: str
    port: int = 0
    want: Union[str, dict, None] = None
    versions: tuple[int, ...] = (4, 6)
    spoof: bool = False
    src_mac: Optional[str] = None

    def expand(self) -> list[tuple[int, str]]:
        return [(v, self.want.get(v) if isinstance(self.want, dict) else self.want) for v in self.versions]


def C(src: str, dst: str, proto: str, port: int = 0, want=None, **kw) -> Case:
    return Case(src, dst, proto, port, want, **kw)


def expand_cases(topo: Topology, state: DesiredState, cases: list[Case]):
    rows = []
    for case in cases:
        for version, want in case.expand():
            src_addr = topo.spoof_addr(case.src, version) if case.spoof else topo.addr(case.src, version)
            dst_addr = topo.addr(case.dst, version)
            packet = packet_for(src_addr, dst_addr, case.proto, case.port, case.src_mac)
            ref, why = policy_verdict(state, case.src, case.dst, packet)
            bind = case.spoof or case.src in ("out", "remote")      # outside holds both addresses
            spec = ProbeSpec(topo.ns[case.src], topo.ns[case.dst], dst_addr, _l4(case.proto, version),
                             case.port, src_addr if bind else None)
            label = f"{case.src}->{case.dst} {_l4(case.proto, version)}{f'/{case.port}' if case.port else ''} " \
                    f"{src_addr}->{dst_addr}"
            rows.append((label, want, ref, why, spec))
    return rows


def check_cases(topo: Topology, doc: dict, cases: list[Case], timeout: float = DROP_TIMEOUT
                ) -> list[tuple[Case, int, str]]:
    """Apply `doc`, send every case (IPv4 and IPv6) at once, and require for each:
    the clause's promise == the semantics engine's verdict == what the kernel did.
    Returns (case, IP version, what the kernel did) for every flow sent."""
    topo.apply(doc)
    state = topo.state(doc)
    rows = expand_cases(topo, state, cases)
    results = probe_many(topo.responders, [r[4] for r in rows], timeout)
    report, bad = [], 0
    for (label, want, ref, why, _spec), res in zip(rows, results):  # noqa: B007
        got = "accept" if res.delivered else "drop"
        # a one-way probe that was never sent proves nothing about a drop
        sent = res.delivered or res.sent == "ok" or \
            (_spec.proto == "tcp" and res.sent in ("no send report", "failed timed out"))
        ok = sent and got == ref and (want is None or want == ref)
        bad += not ok
        report.append(f"{'ok ' if ok else 'BAD'} {label:<58} promised={want or '-':<6} "
                      f"policy={ref:<6} kernel={got:<6} {why}; {res.detail}")
    assert bad == 0, f"{bad} of {len(rows)} flows disagree ({topo.attachment}):\n" + "\n".join(report)
    sent = [(case, version) for case in cases for version, _ in case.expand()]
    return [(case, version, "accept" if res.delivered else "drop")
            for (case, version), res in zip(sent, results)]


def assert_connection(topo: Topology, src: str, dst: str, proto: str, port: int = 0, version: int = 4,
                      src_addr: Optional[str] = None, timeout: float = 2.0) -> None:
    """Neutron style: a new connection from `src` reaches `dst` (the receiver saw it)."""
    res = topo.probe(src, dst, proto, port, version, src_addr, timeout)
    assert res.delivered, f"{src} -> {dst} {proto}/{port} IPv{version}: expected to pass, {res.detail}"


def assert_no_connection(topo: Topology, src: str, dst: str, proto: str, port: int = 0, version: int = 4,
                         src_addr: Optional[str] = None, timeout: float = DROP_TIMEOUT) -> None:
    """Neutron style: a new connection from `src` does not reach `dst` within `timeout`."""
    res = topo.probe(src, dst, proto, port, version, src_addr, timeout)
    assert not res.delivered, f"{src} -> {dst} {proto}/{port} IPv{version}: expected to be dropped, {res.detail}"


# -- long-lived connections --------------------------------------------------------------
@dataclass
class Hold:
    """`python -m sandbox.probe hold` from `src` to the responder of `dst`: one line every
    100 ms, each echoed; `broken_at` is when an echo failed to come back in 0.5 s."""
    topo: Topology
    src: str
    dst: str
    port: int
    version: int = 4
    sport: Optional[int] = None
    oks: list[float] = field(default_factory=list)
    broken_at: Optional[float] = None
    broken_why: str = ""

    def __post_init__(self) -> None:
        self.up = threading.Event()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.topo.ns[self.src], PYTHON, "-m", "sandbox.probe", "hold",
             "--dst", self.topo.addr(self.dst, self.version), "--port", str(self.port),
             "--interval", "0.1", "--timeout", "0.5"]
            + (["--src", self.topo.addr(self.src, self.version)] if self.src in ("out", "remote") else []),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=str(ROOT))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            words = line.split()
            now = time.monotonic()
            if words[:1] == ["UP"]:
                self.sport = int(words[1])
            elif words[:1] == ["OK"]:
                self.oks.append(now)
                self.up.set()
            elif words[:1] == ["BROKEN"]:
                self.broken_at, self.broken_why = now, " ".join(words[1:])
                self.up.set()

    def wait_up(self, timeout: float = 3.0) -> None:
        assert self.up.wait(timeout) and self.broken_at is None, \
            f"hold {self.src}->{self.dst}:{self.port} did not come up: {self.broken_why}"

    def alive_after(self, t: float) -> bool:
        return self.broken_at is None and any(ok > t for ok in self.oks)

    def flow(self) -> Flow:
        return Flow(ipaddress.ip_address(self.topo.addr(self.src, self.version)),
                    ipaddress.ip_address(self.topo.addr(self.dst, self.version)), 6, self.sport, self.port)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
