#!/bin/sh
# Idempotent: installs the Debian packages the agent, its tests and the demo need, or
# the packages named as arguments (integration/host-setup.sh names Docker's).
set -eu
# Default set, by what calls them: nftables (nft), python3-nftables (libnftables binding),
# python3-venv (.venv), iproute2 (ip), procps (sysctl), kmod (modprobe br_netfilter),
# iputils-ping (ping), conntrack, netsniff-ng (trafgen, bench/datapath.py), util-linux
# (taskset, unshare), mount (a writable /proc/sys in a container's namespaces), time
# (/usr/bin/time, bench/apply.py), etcd-server and etcd-client (etcd source tests,
# bench/fanout.py), systemd (systemd-analyze verify of the unit), ncat, python3-scapy
# (crafted ARP/ND/DHCP frames in the first-hop guard's kernel tests).
PKGS="${*:-nftables python3-nftables python3-venv iproute2 procps kmod iputils-ping conntrack netsniff-ng util-linux mount time etcd-server etcd-client systemd ncat python3-scapy}"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
fi
