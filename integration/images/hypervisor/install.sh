#!/bin/sh
# Runs inside the hypervisor image build: installs the Debian package the way an
# operator would (apt, offline: its dependencies are in the base image), then writes the
# suite's config over the conffile. /opt/sgit-debs holds the package and its +test1
# rebuild (the upgrade scenario), /tmp/files this directory.
set -eu
deb=$(ls /opt/sgit-debs/secgroup-agent_*.deb | grep -v '+test' | head -n1)
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$deb"
install -m 0600 /tmp/files/config.yaml /etc/secgroup-agent/config.yaml
systemctl is-enabled secgroup-agent.service
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
