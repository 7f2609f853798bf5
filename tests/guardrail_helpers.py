"""Shared by the lint/diff/clone tests: random small documents (hypothesis), packets at
points of the box space, and sampling of the packets that matter for a list."""
from __future__ import annotations

import ipaddress
import random
from typing import Iterator

from hypothesis import strategies as st

from agent.compiler.boxes import Box
from agent.policy.host_views import fleet_lists
from agent.model.objects import DesiredState
from agent.policy.effective import EffectiveList, Packet
from agent.compiler.match_space import ADDR_MAX, VERSIONS, entry_boxes, list_regions

HOST = "hv-01"
V4 = ["0.0.0.0/0", "10.0.0.0/8", "10.0.0.0/24", "10.0.0.1/32", "10.0.0.2/31", "192.0.2.0/24"]
V6 = ["::/0", "fd00::/8", "fd00::1/128", "2001:db8::/32"]
ADDRESSES = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "192.0.2.7", "fd00::1", "fd00::2", "2001:db8::5"]
PORTS = ["80/80", "22/22", "20/100", "50/150", "1/65535", "443/443", "81/81"]
GROUPS = ["g0", "g1", "g2"]


@st.composite
def rule_docs(draw, group_ids: list[str]) -> dict:
    direction = draw(st.sampled_from(["ingress", "egress"]))
    protocol = draw(st.sampled_from(["tcp", "tcp", "udp", "icmp", "icmpv6", "all"]))
    rule = {"direction": direction, "protocol": protocol,
            "policy": draw(st.sampled_from(["accept", "accept", "drop"])),
            "priority": draw(st.sampled_from([1, 2, 3]))}
    if protocol in ("tcp", "udp"):
        rule["port_range"] = draw(st.sampled_from(PORTS))
        if draw(st.integers(0, 4)) == 0:
            rule["source_port_range"] = draw(st.sampled_from(["1/1023", "1024/65535"]))
    side = "source" if direction == "ingress" else "dest"
    kind = draw(st.sampled_from(["cidr", "cidr", "cidr", "group", "prefix_list"]))
    if kind == "cidr":
        pool = V4 if protocol == "icmp" else V6 if protocol == "icmpv6" else V4 + V6
        rule[f"{side}_cidr"] = draw(st.sampled_from(pool))
    elif kind == "group":
        rule[f"{side}_group"] = draw(st.sampled_from(group_ids))
    else:
        rule[f"{side}_prefix_list"] = "pl-0"
    return rule


@st.composite
def documents(draw, max_rules: int = 6) -> dict:
    n_groups = draw(st.integers(1, 3))
    ids = GROUPS[:n_groups]
    groups = []
    for gid in ids:
        rules = draw(st.lists(rule_docs(ids), max_size=max_rules))
        for k, r in enumerate(rules):
            r["id"] = f"{gid}-r{k}"
        groups.append({"id": gid, "type": draw(st.sampled_from(["custom", "custom", "default"])),
                       "inner_access": draw(st.sampled_from(["accept", "drop"])), "rules": rules})
    instances = []
    pool = draw(st.permutations(ADDRESSES))         # no address on two interfaces (refused)
    for k in range(draw(st.integers(1, 3))):
        n = draw(st.integers(0, 2))
        addrs, pool = list(pool[:n]), pool[n:]
        inst = {"id": f"i{k}", "security_groups": draw(st.lists(st.sampled_from(ids), min_size=1,
                                                                max_size=2, unique=True)),
                "interfaces": [{"name": f"tap{k}", "addresses": addrs}]}
        if draw(st.booleans()):
            inst["host"] = draw(st.sampled_from([HOST, "hv-02"]))
        instances.append(inst)
    plist = draw(st.lists(st.sampled_from(V4 + V6), max_size=3, unique=True))
    return {"host": HOST, "prefix_lists": [{"id": "pl-0", "entries": plist}],
            "security_groups": groups, "instances": instances,
            "anti_spoofing": draw(st.sampled_from([True, True, False]))}


def packet_at(point: tuple[int, ...], version: int, elist: EffectiveList) -> Packet:
    """The new connection at one point of the box space, from/to the interface's own
    address (egress without an own address of that version: a foreign source)."""
    addr = (ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address)(point[0])
    own = [a for a in elist.addresses if a.version == version]
    local = own[0] if own else ipaddress.ip_address("198.18.0.1" if version == 4 else "fe80::1")
    proto = point[1]
    ported = proto in (6, 17)
    icmp_type = 128 if proto == 58 else (8 if proto == 1 else None)
    src, dst = (addr, local) if elist.direction == "ingress" else (local, addr)
    return Packet(src, dst, proto, point[2] if ported else None, point[3] if ported else None, icmp_type)


def corners(box: Box) -> list[tuple[int, ...]]:
    """The low and high corners of a box and its centre."""
    return [tuple(lo for lo, _ in box), tuple(hi for _, hi in box),
            tuple((lo + hi) // 2 for lo, hi in box)]


def region_points(elist: EffectiveList) -> Iterator[tuple[int, int, tuple[int, ...]]]:
    """(version, deciding line, point) at the corners of every first-match region."""
    for v in VERSIONS:
        for line, box in list_regions(elist, v):
            for p in corners(box):
                yield v, line, p


def boundary_points(elist: EffectiveList, version: int, rnd: random.Random, n: int = 40
                    ) -> list[tuple[int, ...]]:
    """Points built from the bounds of the list's own boxes (each bound, and one past
    it, per dimension), combined at random: where first-match decisions change."""
    boxes = [b for e in elist.entries for b in entry_boxes(e, elist, version)]
    top = (ADDR_MAX[version], 255, 65535, 65535)
    values = [sorted({x for b in boxes for x in (b[d][0], b[d][1], b[d][0] - 1, b[d][1] + 1)
                      if 0 <= x <= top[d]} | {0, top[d]}) for d in range(4)]
    return [tuple(rnd.choice(vals) for vals in values) for _ in range(n)]


def all_lists(state: DesiredState) -> dict[tuple[str, str], EffectiveList]:
    return {(port.label, elist.direction): elist for port, _view, elist in fleet_lists(state)}


# a group whose rules `group clone` must copy with their layout (tests of bad input)
CLONE_SOURCE = """\
security_groups:
  - id: sg-a
    rules:
      - {direction: ingress, protocol: tcp, port_range: 22/22, source_cidr: "::/0"}
      - direction: egress
        protocol: all
        dest_cidr: "::/0"
        description: "yes"
instances: []
"""
