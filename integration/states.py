"""Desired states of the integration scenarios (SPEC §2 documents as Python data).

BASE: five local instances (three routed, two bridged), one remote member, six groups:

  instance  tap     attachment  groups                        addresses
  i1        tap-i1  routed      sg-web                        10.0.0.11  fd00::11
  i2        tap-i2  routed      sg-web                        10.0.0.12  fd00::12
  i3        tap-i3  routed      sg-db, sg-edge-a, sg-edge-b   10.0.0.13  fd00::13
  b1        tap-b1  bridged     sg-db, sg-ops                 10.1.0.21  fd01::21
  b2        tap-b2  bridged     sg-ops, sg-db                 10.1.0.22  fd01::22
  r1        (hv-02, remote)     sg-web                        10.9.0.22  fd09::22  (lives in `outside`)

  sg-web    custom, inner accept: 80 open to the world, but a drop of 10/8 and fd00::/8
            at the same priority (deny-first) — which members override (intra-group);
            egress: no SMTP.
  sg-db     custom, inner drop: 5432 from sg-web (group peer, remote member included);
            udp/5433 among sg-db members (replication).
  sg-edge-a custom: tcp 9000-9002 accept at priority 5; udp 7000-7003 drop at priority 2.
  sg-edge-b custom: tcp 9001 drop at priority 5 (deny-first across groups); udp 7003
            accept at priority 1 (a smaller number wins whatever its policy).
  sg-ops    default type: ICMP, ICMPv6, SSH, RDP at priority 110 (no HTTP/HTTPS).
  sg-locked enterprise, no rules (used by a variant).
"""
from __future__ import annotations

import copy

ANY4, ANY6 = "0.0.0.0/0", "::/0"


def rule(id, direction, protocol, port=None, policy="accept", priority=1, **peer):
    r = {"id": id, "direction": direction, "policy": policy, "priority": priority, "protocol": protocol}
    if port is not None:
        r["port_range"] = port
    r.update(peer)
    return r


def both(id, direction, protocol, port=None, policy="accept", priority=1):
    """The same rule for IPv4 and IPv6 (a CIDR matches one version only)."""
    key = "source_cidr" if direction == "ingress" else "dest_cidr"
    return [rule(f"{id}4", direction, protocol, port, policy, priority, **{key: ANY4}),
            rule(f"{id}6", direction, protocol, port, policy, priority, **{key: ANY6})]


def iface(name, addresses, attachment="routed", mac=None):
    d = {"name": name, "addresses": addresses}
    if attachment != "routed":
        d["attachment"] = attachment
    if mac:
        d["mac"] = mac
    return d


BASE = {
    "host": "hv-01",
    "security_groups": [
        {"id": "sg-web", "type": "custom", "inner_access": "accept", "rules": [
            *both("web-http", "ingress", "tcp", "80/80"),
            rule("web-no-internal4", "ingress", "all", policy="drop", source_cidr="10.0.0.0/8"),
            rule("web-no-internal6", "ingress", "all", policy="drop", source_cidr="fd00::/8"),
            *both("web-no-smtp", "egress", "tcp", "25/25", policy="drop"),
            *both("web-hold", "ingress", "tcp", "7001/7001"),
        ]},
        {"id": "sg-db", "type": "custom", "inner_access": "drop", "rules": [
            rule("db-from-web", "ingress", "tcp", "5432/5432", source_group="sg-web"),
            rule("db-replication", "ingress", "udp", "5433/5433", source_group="sg-db"),
        ]},
        {"id": "sg-edge-a", "type": "custom", "rules": [
            *both("edge-open", "ingress", "tcp", "9000/9002", priority=5),
            *both("edge-udp-block", "ingress", "udp", "7000/7003", policy="drop", priority=2),
        ]},
        {"id": "sg-edge-b", "type": "custom", "rules": [
            *both("edge-close", "ingress", "tcp", "9001/9001", policy="drop", priority=5),
            *both("edge-udp-7003", "ingress", "udp", "7003/7003", priority=1),
        ]},
        {"id": "sg-ops", "type": "default"},
        {"id": "sg-locked", "type": "enterprise"},
    ],
    "instances": [
        {"id": "i1", "security_groups": ["sg-web"],
         "interfaces": [iface("tap-i1", ["10.0.0.11", "fd00::11"], mac="52:54:00:00:00:11")]},
        {"id": "i2", "security_groups": ["sg-web"],
         "interfaces": [iface("tap-i2", ["10.0.0.12", "fd00::12"])]},
        {"id": "i3", "security_groups": ["sg-db", "sg-edge-a", "sg-edge-b"],
         "interfaces": [iface("tap-i3", ["10.0.0.13", "fd00::13"])]},
        {"id": "b1", "security_groups": ["sg-db", "sg-ops"],
         "interfaces": [iface("tap-b1", ["10.1.0.21", "fd01::21"], "bridged", mac="52:54:00:00:01:21")]},
        {"id": "b2", "security_groups": ["sg-ops", "sg-db"],
         "interfaces": [iface("tap-b2", ["10.1.0.22", "fd01::22"], "bridged")]},
        {"id": "r1", "host": "hv-02", "security_groups": ["sg-web"],
         "interfaces": [iface("tap-r1", ["10.9.0.22", "fd09::22"])]},
    ],
}


def variant(**changes) -> dict:
    """A deep copy of BASE; `changes` maps "group:<id>" / "instance:<id>" to a function
    that edits that object in place."""
    doc = copy.deepcopy(BASE)
    for key, fn in changes.items():
        kind, ident = key.split(":", 1)
        items = doc["security_groups" if kind == "group" else "instances"]
        fn(next(x for x in items if x["id"] == ident))
    return doc


def without_rule(*ids):
    def edit(group):
        group["rules"] = [r for r in group["rules"] if r["id"] not in ids]
    return edit


def set_groups(*groups):
    def edit(instance):
        instance["security_groups"] = list(groups)
    return edit
