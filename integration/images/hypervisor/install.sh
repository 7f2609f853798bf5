#!/bin/sh
# Runs inside the hypervisor image build: installs the unit(s) from systemd/ and the
# initial config the way an operator would. /tmp/units holds systemd/, /tmp/files this
# directory.
set -eu
mkdir -p /etc/secgroup-agent /var/lib/secgroup-agent
install -m 0644 /tmp/files/config.yaml /etc/secgroup-agent/config.yaml
found=""
for u in /tmp/units/*.service /tmp/units/*.socket /tmp/units/*.timer; do
    [ -f "$u" ] || continue
    install -m 0644 "$u" /etc/systemd/system/
    found="$found $(basename "$u")"
done
for f in /tmp/units/*; do           # anything else (env files, tmpfiles.d snippets)
    case "$f" in
        *.service|*.socket|*.timer) ;;
        *.conf) [ -f "$f" ] && install -m 0644 "$f" /etc/secgroup-agent/ ;;
    esac
done
if [ -f /tmp/files/operations.md ]; then
    install -D -m 0644 /tmp/files/operations.md /opt/secgroup-agent/share/doc/operations.md
fi
if [ -f /etc/systemd/system/secgroup-agent.service ]; then
    systemctl enable secgroup-agent.service
fi
echo "units installed:${found:- none}"
