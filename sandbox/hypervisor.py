"""A sandbox hypervisor in network namespaces, for the demo, the kernel tests and the
benchmarks. Nothing here touches the root namespace: every object lives in namespaces
named `<prefix>-...`, and `Sandbox.close()` deletes them all (also after a failure).

Topology: namespace `<p>-hv` is the hypervisor. Each instance is a namespace whose
`eth0` is one end of a veth pair; the other end, in hv, carries the tap's name.
* routed: the instance holds /32 and /128 addresses with a default route via
  169.254.1.1 / fe80::1 (hv answers by proxy ARP / owns fe80::1 on every tap), hv routes
  each address to its tap (the Calico model);
* bridged: taps are ports of the Linux bridge `br0` in hv (10.1.0.1/24, fd01::1/64),
  instances sit on that subnet; br_netfilter hands bridged IP traffic to the inet hooks.
An `outside` namespace hangs off hv's `uplink` (192.0.2.0/24, 2001:db8:f::/64) and
routes the instances' networks through hv.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Optional, Sequence

log = logging.getLogger(__name__)

OUTSIDE4, OUTSIDE6 = "192.0.2.2", "2001:db8:f::2"
HV_UPLINK4, HV_UPLINK6 = "192.0.2.1", "2001:db8:f::1"
BRIDGE4, BRIDGE6 = "10.1.0.1", "fd01::1"


# The Debian package of every system tool the demo, the kernel tests and the benchmarks
# call (scripts/install-deps.sh installs them all).
TOOL_PACKAGES = {
    "ip": "iproute2", "sysctl": "procps", "modprobe": "kmod", "ping": "iputils-ping",
    "nft": "nftables", "conntrack": "conntrack", "trafgen": "netsniff-ng", "etcd": "etcd-server",
    "etcdctl": "etcd-client", "taskset": "util-linux", "unshare": "util-linux", "mount": "mount",
    "/usr/bin/time": "time",
}


class SandboxError(RuntimeError):
    pass


class MissingToolError(SandboxError):
    """A system tool is not installed; the message names its Debian package."""


def missing_tool_message(tool: str) -> str:
    package = TOOL_PACKAGES.get(tool, tool)
    return (f"`{tool}` is not installed: install the Debian package {package} "
            f"(apt-get install {package}, or `make deps` for all of them)")


def check_tools(*tools: str) -> Optional[str]:
    """The one-line error for the first of `tools` that is not on PATH (None: all are)."""
    for tool in tools:
        if shutil.which(tool) is None:
            return missing_tool_message(tool)
    return None


def require_tools(*tools: str) -> None:
    """MissingToolError for the first of `tools` that is not on PATH."""
    message = check_tools(*tools)
    if message:
        raise MissingToolError(message)


def run(cmd: Sequence[str], check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    except FileNotFoundError:
        raise MissingToolError(missing_tool_message(cmd[0])) from None
    if check and proc.returncode != 0:
        raise SandboxError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


@dataclass
class Sandbox:
    prefix: str
    namespaces: list[str] = field(default_factory=list)
    instances: dict[str, dict] = field(default_factory=dict)
    bridge_ready: bool = False

    # -- life cycle --------------------------------------------------------------
    def __post_init__(self) -> None:
        require_tools("ip", "sysctl")
        try:
            self._build_base()
        except BaseException:
            self.close()                    # nothing half-built is left behind
            raise

    def _build_base(self) -> None:
        self.hv = self.add_namespace("hv")
        for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
            self.sysctl(self.hv, key, "1")
        self.outside = self.add_namespace("out")
        self._veth(self.hv, "uplink", self.outside, "eth0")
        self.ip(self.hv, "addr", "add", f"{HV_UPLINK4}/24", "dev", "uplink")
        self.ip(self.hv, "-6", "addr", "add", f"{HV_UPLINK6}/64", "dev", "uplink", "nodad")
        self.ip(self.outside, "addr", "add", f"{OUTSIDE4}/24", "dev", "eth0")
        self.ip(self.outside, "-6", "addr", "add", f"{OUTSIDE6}/64", "dev", "eth0", "nodad")
        # hv's default route leads outside; proxy ARP answers for 169.254.1.1 only
        # when hv has a route for it.
        self.ip(self.hv, "route", "add", "default", "via", OUTSIDE4)
        self.ip(self.hv, "-6", "route", "add", "default", "via", OUTSIDE6)
        self.ip(self.outside, "route", "add", "10.0.0.0/8", "via", HV_UPLINK4)
        self.ip(self.outside, "-6", "route", "add", "fd00::/7", "via", HV_UPLINK6)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            run(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()

    def add_namespace(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        run(["ip", "netns", "del", ns], check=False)     # a leftover of a killed run
        run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        self.ip(ns, "link", "set", "lo", "up")
        # No duplicate address detection on the interfaces created here: while a
        # link-local address is tentative, neighbour solicitations are not sent at all,
        # so the first IPv6 packets would wait ~1 s (br0, the instances' eth0).
        self._sysctl(ns, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        return ns

    # -- helpers -----------------------------------------------------------------
    def exec(self, ns: str, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        require_tools("ip", cmd[0])         # `ip netns exec` reports a missing one as exit 1
        return run(["ip", "netns", "exec", ns, *cmd], check=check, timeout=timeout)

    def popen(self, ns: str, *cmd: str, **kw) -> subprocess.Popen:
        require_tools("ip", cmd[0])
        return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)

    def ip(self, ns: str, *args: str) -> None:
        run(["ip", "-n", ns, *args])

    def sysctl(self, ns: str, key: str, value: str) -> None:
        self._sysctl(ns, f"{key}={value}")

    def _sysctl(self, ns: str, *settings: str) -> None:
        if not os.statvfs("/proc/sys").f_flag & os.ST_RDONLY:
            self.exec(ns, "sysctl", "-qw", *settings)
            return
        # In a container /proc/sys is a read-only mount (Docker). `ip netns exec` runs the
        # command in a mount namespace of its own (a slave of ours): remounting /proc/sys
        # writable there changes no mount outside it, and the settings only `ns`.
        require_tools("sysctl", "mount")
        self.exec(ns, "sh", "-c", 'mount -o remount,bind,rw /proc/sys && exec sysctl -qw "$@"',
                  "sysctl", *settings)

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str, mac_b: Optional[str] = None) -> None:
        tmp = f"v{os.getpid() % 100000}{len(self.namespaces)}x"
        run(["ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", tmp])
        run(["ip", "-n", ns_a, "link", "set", tmp, "netns", ns_b])
        self.ip(ns_b, "link", "set", tmp, "name", name_b)
        if mac_b:
            self.ip(ns_b, "link", "set", name_b, "address", mac_b)
        self.ip(ns_a, "link", "set", name_a, "up")
        self.ip(ns_b, "link", "set", name_b, "up")

    # -- instances -----------------------------------------------------------------
    def add_instance(self, name: str, tap: str, addresses: Sequence[str], mac: Optional[str] = None,
                     attachment: str = "routed") -> str:
        ns = self.add_namespace(name)
        self._veth(self.hv, tap, ns, "eth0", mac)
        if attachment == "bridged":
            self._attach_bridged(ns, tap, addresses)
        else:
            self._attach_routed(ns, tap, addresses)
        self.instances[name] = {"ns": ns, "tap": tap, "addresses": list(addresses), "attachment": attachment}
        return ns

    def _attach_routed(self, ns: str, tap: str, addresses: Sequence[str]) -> None:
        self.sysctl(self.hv, f"net.ipv4.conf.{tap}.proxy_arp", "1")
        # answer proxied ARP requests at once (the default delays broadcast ones by a
        # random 0-0.8 s, longer than a probe waits for an expected drop)
        self.sysctl(self.hv, f"net.ipv4.neigh.{tap}.proxy_delay", "0")
        self.ip(self.hv, "-6", "addr", "add", "fe80::1/64", "dev", tap, "nodad")
        self.ip(ns, "route", "add", "169.254.1.1", "dev", "eth0")
        self.ip(ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        self.ip(ns, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
        for addr in addresses:
            v6 = ":" in addr
            plen = "128" if v6 else "32"
            fam = ["-6"] if v6 else []
            self.ip(ns, *fam, "addr", "add", f"{addr}/{plen}", "dev", "eth0", *(["nodad"] if v6 else []))
            self.ip(self.hv, *fam, "route", "add", f"{addr}/{plen}", "dev", tap)

    def _ensure_bridge(self) -> None:
        if self.bridge_ready:
            return
        if shutil.which("modprobe"):        # built in on some kernels (CONFIG_BRIDGE_NETFILTER=y)
            run(["modprobe", "br_netfilter"], check=False)      # in a container: already loaded, or not
        if not os.path.isdir("/proc/sys/net/bridge"):
            raise SandboxError("bridged instances need br_netfilter, which is not loaded: "
                               + ("run `modprobe br_netfilter` on the host" if shutil.which("modprobe")
                                  else missing_tool_message("modprobe")))
        self.ip(self.hv, "link", "add", "br0", "type", "bridge")
        self.ip(self.hv, "link", "set", "br0", "up")
        self.ip(self.hv, "addr", "add", f"{BRIDGE4}/24", "dev", "br0")
        self.ip(self.hv, "-6", "addr", "add", f"{BRIDGE6}/64", "dev", "br0", "nodad")
        for key in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"):
            self.sysctl(self.hv, key, "1")
        self.bridge_ready = True

    def _attach_bridged(self, ns: str, tap: str, addresses: Sequence[str]) -> None:
        self._ensure_bridge()
        self.ip(self.hv, "link", "set", tap, "master", "br0")
        for addr in addresses:
            v6 = ":" in addr
            fam = ["-6"] if v6 else []
            self.ip(ns, *fam, "addr", "add", f"{addr}/{'64' if v6 else '24'}", "dev", "eth0",
                    *(["nodad"] if v6 else []))
        self.ip(ns, "route", "add", "default", "via", BRIDGE4)
        self.ip(ns, "-6", "route", "add", "default", "via", BRIDGE6)
