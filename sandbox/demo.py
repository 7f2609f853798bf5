"""`make demo`: a sandbox hypervisor in network namespaces, the agent applying
examples/demo.yaml, real traffic, and a table of expected and observed verdicts.

The topology comes from the document: one namespace per local instance, its taps named
as configured. The flows to try are the document's extension field `x_demo_flows`.
"""
from __future__ import annotations

import ipaddress
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

from agent.model.objects import EGRESS, INGRESS, DesiredState
from agent.policy.effective import PROTOCOL_NUMBERS, Packet, build_effective_list, evaluate
from sandbox.probe import probe
from agent.model.loader import read_document
from sandbox.hypervisor import OUTSIDE4, OUTSIDE6, Sandbox, SandboxError, require_tools
from agent.model.validate import validate_document

PREFIX = f"sgdemo{os.getpid() % 10000}"


@dataclass(frozen=True)
class Flow:
    src_name: str
    dst_name: str
    proto: str
    port: int
    v6: bool
    src: Optional[str]
    note: str


def expected(state: DesiredState, flow: Flow, src: str, dst: str) -> tuple[str, str]:
    """The verdict the semantics engine gives: sender's egress, then receiver's ingress."""
    proto = PROTOCOL_NUMBERS["icmpv6" if flow.proto == "icmp" and flow.v6 else flow.proto]
    packet = Packet(ipaddress.ip_address(src), ipaddress.ip_address(dst), proto,
                    40000 if flow.port else None, flow.port or None, 8 if proto == 1 else None)
    for name, direction in ((flow.src_name, EGRESS), (flow.dst_name, INGRESS)):
        if name == "outside":
            continue
        nic = state.instance_by_id[name].interfaces[0]
        d = evaluate(build_effective_list(state, nic.name, direction), packet)
        e = d.entry
        who = f"{e.group_id}/{e.rule_id}" if e.rule_id else (f"{e.stage} ({e.group_id})" if e.group_id else e.stage)
        if d.verdict == "drop":
            return "drop", f"{nic.name} {direction}: {who}"
        last = f"{nic.name} {direction}: {who}"
    return "accept", last


def address(state: DesiredState, name: str, v6: bool) -> str:
    if name == "outside":
        return OUTSIDE6 if v6 else OUTSIDE4
    addrs = state.instance_by_id[name].interfaces[0].addresses
    return str(next(a for a in addrs if a.version == (6 if v6 else 4)))


def build_sandbox(state: DesiredState) -> Sandbox:
    sb = Sandbox(PREFIX)
    for inst in state.local_instances:
        nic = inst.interfaces[0]
        sb.add_instance(inst.id, nic.name, [str(a) for a in nic.addresses], nic.mac, nic.attachment)
    return sb


def run_flows(sb: Sandbox, state: DesiredState, flows: list[Flow]) -> list[tuple]:
    rows = []
    ns = {i.id: f"{PREFIX}-{i.id}" for i in state.local_instances} | {"outside": sb.outside}
    for f in flows:
        src = f.src or address(state, f.src_name, f.v6)
        dst = address(state, f.dst_name, f.v6)
        if f.src:
            sb.ip(ns[f.src_name], "addr", "add", f"{f.src}/32", "dev", "eth0")
        want, why = expected(state, f, src, dst)
        proto = "icmpv6" if f.proto == "icmp" and f.v6 else f.proto
        got = probe(sb, ns[f.src_name], ns[f.dst_name], dst, proto, f.port, timeout=1.0,
                    src=f.src).delivered
        rows.append((f, src, dst, want, why, "accept" if got else "drop"))
    return rows


def print_table(rows: list[tuple]) -> int:
    fmt = "{:>2}  {:<40} {:<8} {:<8} {:<4} {}"
    print(fmt.format("#", "flow", "expected", "observed", "ok", "decided by / why"))
    bad = 0
    for i, (f, src, dst, want, why, got) in enumerate(rows, 1):
        ok = want == got
        bad += not ok
        port = f":{f.port}" if f.port else ""
        flow = f"{f.proto} {src} -> {dst}{port}"
        print(fmt.format(i, flow, want.upper(), got.upper(), "yes" if ok else "NO", why))
        print(fmt.format("", "", "", "", "", f"  ({f.note})"))
    print(f"\n{len(rows) - bad} of {len(rows)} flows behaved as the semantics say.")
    return bad


def main(argv: Optional[list[str]] = None) -> int:
    path = (argv or sys.argv[1:] or ["examples/demo.yaml"])[0]
    data = read_document(path)
    state = validate_document(data)
    flows = [Flow(d["from"], d["to"], d["proto"], int(d.get("port", 0)), bool(d.get("v6")),
                  d.get("src"), d.get("note", "")) for d in data.get("x_demo_flows", [])]
    require_tools("ip", "sysctl", "ping", "nft")
    print(f"building a sandbox hypervisor ({len(state.local_instances)} instances) in namespaces {PREFIX}-*")
    with build_sandbox(state) as sb:
        start = time.monotonic()
        out = sb.exec(sb.hv, sys.executable, "-m", "agent.cli.main", "apply", "-c", path, "--host", state.host)
        print(f"secgroup-agent apply: {out.stdout.strip()} ({(time.monotonic() - start) * 1000:.0f} ms)\n")
        bad = print_table(run_flows(sb, state, flows))
    print("sandbox removed")
    return 1 if bad else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SandboxError as exc:         # a missing tool names its package; no traceback
        print(f"demo: {exc}", file=sys.stderr)
        sys.exit(1)
