#!/bin/sh
# Idempotent host preparation for `make integration`: Debian's docker engine,
# docker-compose 1.29 and mmdebstrap, and a running dockerd (started here, in the
# background, when none answers; it keeps running afterwards so that cached images
# stay useful). Touches nothing else on the host.
set -eu
sh "$(dirname "$0")/../scripts/install-deps.sh" docker.io docker-compose mmdebstrap
if ! docker info >/dev/null 2>&1; then
    log=/var/log/sgit-dockerd.log
    echo "starting dockerd (log: $log)"
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl start docker || true
    fi
    if ! docker info >/dev/null 2>&1; then
        setsid nohup dockerd >"$log" 2>&1 </dev/null &
    fi
    i=0
    until docker info >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -gt 60 ]; then
            echo "dockerd did not come up; last lines of $log:" >&2
            tail -20 "$log" >&2 || true
            exit 1
        fi
        sleep 1
    done
fi
