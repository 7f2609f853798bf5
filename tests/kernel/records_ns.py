"""The record tests' small hypervisor: namespaces `sgr<pid><tag>-hv`, `-vm1`, `-vm2`,
vm1 (10.77.1.2) and vm2 (10.77.2.2) routed through hv by tap1 and tap2, and a
hand-written table in the formats of agent/compiler/attribution.py (verdict chains
`v_<n>` with the identity in a comment, `log group ... prefix "sg:<n>:"`, the ct mark
statement), hooked like the datapath (forward_egress at 0, forward_ingress at 10).
Removed by `close()` (the fixtures call it in `finally`); the root namespace is not touched.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from agent.compiler.attribution import ct_mark_statement, log_prefix

ROOT = Path(__file__).resolve().parents[2]
DROP_KEY = "ingress/user/sg-db/no-udp/10/drop"
EGRESS_KEY = "egress/user/sg-app/app-out/1/accept"
INGRESS_KEY = "ingress/user/sg-db/db-in/5/accept"
DOC = """host: hv
security_groups:
  - id: sg-app
    type: custom
    rules:
      - {id: app-out, direction: egress, protocol: all, dest_cidr: 0.0.0.0/0}
  - id: sg-db
    type: custom
    rules:
      - {id: db-in, direction: ingress, priority: 5, protocol: tcp, port_range: 8000/8000, source_cidr: 0.0.0.0/0}
      - {id: no-udp, direction: ingress, priority: 10, policy: drop, protocol: udp, port_range: 1/65535, source_cidr: 0.0.0.0/0}
instances:
  - id: vm1
    security_groups: [sg-app]
    interfaces:
      - {name: tap1, addresses: [10.77.1.2]}
  - id: vm2
    security_groups: [sg-db]
    interfaces:
      - {name: tap2, addresses: [10.77.2.2]}
"""


def table(rate: str = "5/second burst 5 packets") -> str:
    return f"""table inet secgroup_agent {{
  chain v_7 {{
    limit rate {rate} log group 2701 prefix "{log_prefix(7)}" comment "{DROP_KEY}"
    counter drop
  }}
  chain v_5 {{
    counter {ct_mark_statement(5, "egress")} comment "{EGRESS_KEY}"
    accept
  }}
  chain v_3 {{
    counter {ct_mark_statement(3, "ingress")} comment "{INGRESS_KEY}"
    accept
  }}
  chain forward_egress {{
    type filter hook forward priority 0; policy accept;
    ct state established,related accept
    iifname "tap1" jump v_5
  }}
  chain forward_ingress {{
    type filter hook forward priority 10; policy accept;
    ct state established,related accept
    oifname "tap2" tcp dport 8000 jump v_3
    oifname "tap2" meta l4proto udp jump v_7
  }}
}}
"""


SPOOF_KEY = "egress/anti-spoofing-ip/-/-/-/drop"
BRIDGE_TABLE = f"""table bridge secgroup_agent {{
  chain v_9 {{
    counter comment "{SPOOF_KEY}"
    drop
  }}
  chain forward_ports {{
    type filter hook forward priority -300; policy accept;
    iifname "tap1" udp dport 9000 jump v_9
  }}
}}
"""


def writable_proc_sys(cmd: tuple[str, ...]) -> list[str]:
    """`cmd`, run with /proc/sys writable. In a container (Docker) /proc/sys is a
    read-only mount; `ip netns exec` gives the command a mount namespace of its own, where
    remounting it read-write touches nothing outside (as sandbox/hypervisor.py does). The
    record writers set the namespace's conntrack accounting sysctls, as on a host."""
    if not os.statvfs("/proc/sys").f_flag & os.ST_RDONLY:
        return list(cmd)
    return ["sh", "-c", 'mount -o remount,bind,rw /proc/sys && exec "$@"', "sh", *cmd]


class Hypervisor:
    def __init__(self, tag: str, tmp: Path, bridged: bool = False) -> None:
        self.bridged = bridged
        self.prefix = f"sgr{os.getpid()}{tag}"
        self.hv, self.vm1, self.vm2 = (f"{self.prefix}-{n}" for n in ("hv", "vm1", "vm2"))
        self.tmp = tmp
        self.doc = tmp / "state.yaml"
        self.doc.write_text(DOC)
        try:
            self._build()
        except Exception:
            self.close()
            raise

    def _build(self) -> None:
        for ns in (self.hv, self.vm1, self.vm2):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        if self.bridged:        # tap1, tap2 ports of br0; vm1 and vm2 in one /16
            sh("ip", "-n", self.hv, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.hv, "link", "set", "br0", "up")
        for i, vm in ((1, self.vm1), (2, self.vm2)):
            sh("ip", "link", "add", f"tap{i}", "netns", self.hv, "type", "veth", "peer", "name", "eth0", "netns", vm)
            sh("ip", "-n", vm, "addr", "add", f"10.77.{i}.2/{16 if self.bridged else 24}", "dev", "eth0")
            sh("ip", "-n", self.hv, "link", "set", f"tap{i}", "up")
            sh("ip", "-n", vm, "link", "set", "eth0", "up")
            if self.bridged:
                sh("ip", "-n", self.hv, "link", "set", f"tap{i}", "master", "br0")
                continue
            sh("ip", "-n", self.hv, "addr", "add", f"10.77.{i}.1/24", "dev", f"tap{i}")
            sh("ip", "-n", vm, "route", "add", "default", "via", f"10.77.{i}.1")
        self.run(self.hv, "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def apply(self, text: str) -> None:
        path = self.tmp / "table.nft"
        path.write_text(text)
        self.run(self.hv, "nft", "-f", str(path))

    def run(self, ns: str, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        writes = cmd[:1] == ("sysctl",) and "-qw" in cmd
        return subprocess.run(["ip", "netns", "exec", ns, *(writable_proc_sys(cmd) if writes else cmd)],
                              capture_output=True, text=True, check=check, timeout=timeout)

    def agent(self, *args: str) -> subprocess.Popen:
        """`secgroup-agent ARGS` in the hypervisor namespace (stdout, stderr piped)."""
        return subprocess.Popen(["ip", "netns", "exec", self.hv,
                                 *writable_proc_sys((sys.executable, "-m", "agent.cli", *args))],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def close(self) -> None:
        for ns in (self.hv, self.vm1, self.vm2):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def wait_for_line(stream, text: str, limit: int = 50) -> Optional[str]:
    """Read `stream` until a line containing `text` (None: it ended first)."""
    for _ in range(limit):
        line = stream.readline()
        if not line:
            return None
        if text in line:
            return line
    return None


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def udp_probes(hv: Hypervisor, count: int, port: int = 9000) -> None:
    """`count` datagrams vm1 -> vm2, each from its own source port."""
    code = ("import socket\n"
            f"for i in range({count}):\n"
            "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"    s.sendto(b'probe', ('10.77.2.2', {port}))\n"
            "    s.close()\n")
    hv.run(hv.vm1, sys.executable, "-c", code)
