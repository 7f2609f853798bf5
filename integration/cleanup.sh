#!/bin/sh
# Removes what an integration run created: the compose project's containers, networks
# and volumes (pytest-docker does this at the end of the session; this is the backstop
# for a run that was killed). Usage: cleanup.sh PROJECT. No named network namespace is
# ever created (the suite reaches containers' namespaces through /proc/PID/ns/net), and
# the veth pairs live and die with the containers' namespaces.
set -u
project=${1:?usage: cleanup.sh PROJECT}
cd "$(dirname "$0")"
docker-compose -f docker-compose.yml -p "$project" down -v --remove-orphans -t 1 >/dev/null 2>&1 || true
ids=$(docker ps -aq --filter "label=com.docker.compose.project=$project")
[ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1
nets=$(docker network ls -q --filter "label=com.docker.compose.project=$project")
[ -n "$nets" ] && docker network rm $nets >/dev/null 2>&1
exit 0
