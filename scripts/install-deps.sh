#!/bin/sh
# Idempotent: installs the Debian packages the agent, its tests and the demo need, or
# the packages named as arguments (integration/host-setup.sh names Docker's).
set -eu
PKGS="${*:-nftables python3-nftables python3-venv conntrack netsniff-ng iproute2 iputils-ping ncat etcd-server etcd-client python3-scapy}"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
fi
