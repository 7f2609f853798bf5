"""`secgroup-agent lint`: the security-group model's own precautions, checked (pure).

Kinds and severities (docs/guard-rails.md tells the reasons):

    shadowed            warning  a rule that never decides a packet (exact; agent.guardrails.lint_shadow)
    duplicate           warning  the same match and verdict twice in one group
    exposed             warning  accept from anywhere on an administrative port (ssh, rdp, ...)
                        error    ... on a database, cache or cluster-API port, or protocol all
    group-per-instance  info     single-member groups with identical rules
    too-many-rules      warning  an effective list over --max-rules lines; a group naming
                                 more than --max-peer-groups groups as peers
    unused              info     groups without members, prefix lists no rule names, rules
                                 that apply to no interface or match no packet
    one-family          warning  a drop of 0.0.0.0/0 (or ::/0) whose traffic a later line still
                                 accepts in the other IP family (agent.guardrails.lint_family)
    unguarded           warning  an interface with `spoofing_guard: false` (no first-hop
                                 guard, no anti-spoofing)

Every instance of the document is judged as if it were local: lint is a fleet tool.
"""
from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from dataclasses import dataclass
import time
from typing import Any, Iterable, Mapping, Optional

from agent.compiler.attribution import VerdictId
from agent.policy.host_views import Port, fleet_lists
from agent.guardrails.lint_family import one_family_findings
from agent.guardrails.lint_shadow import RuleUse, analyse_rules
from agent.model.objects import DesiredState, Group, Peer, Rule
from agent.policy.effective import DEFAULTS, INTRA_GROUP, USER, EffectiveList, peer_networks, rule_order

log = logging.getLogger(__name__)

INFO, WARNING, ERROR = "info", "warning", "error"
SEVERITIES = (INFO, WARNING, ERROR)
RANK = {s: i for i, s in enumerate(SEVERITIES)}
SHADOWED, DUPLICATE, EXPOSED = "shadowed", "duplicate", "exposed"
GROUP_PER_INSTANCE, TOO_MANY_RULES, UNUSED = "group-per-instance", "too-many-rules", "unused"
ONE_FAMILY = "one-family"
UNGUARDED = "unguarded"
NEVER_HIT = "never-hit"
KINDS = (SHADOWED, DUPLICATE, EXPOSED, ONE_FAMILY, GROUP_PER_INSTANCE, TOO_MANY_RULES, UNUSED, UNGUARDED, NEVER_HIT)

ADMIN_PORTS = {22: "ssh", 23: "telnet", 3389: "rdp", 5900: "vnc"}
DATA_PORTS = {1433: "mssql", 2375: "docker", 2379: "etcd", 3306: "mysql", 5432: "postgresql",
              5984: "couchdb", 6379: "redis", 9042: "cassandra", 9200: "elasticsearch",
              11211: "memcached", 27017: "mongodb"}
DEFAULT_EXPOSED_PORTS = tuple(sorted(ADMIN_PORTS | DATA_PORTS))
CLOUD_MAX_RULES = 1000


@dataclass(frozen=True)
class Finding:
    kind: str
    severity: str
    group: Optional[str]
    rule: Optional[str]
    message: str
    interfaces: tuple[str, ...] = ()
    covered_by: tuple[str, ...] = ()
    related: tuple[str, ...] = ()          # other groups / prefix lists involved

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "severity": self.severity, "group": self.group,
                "rule": self.rule, "interfaces": list(self.interfaces),
                "covered_by": list(self.covered_by), "related": list(self.related),
                "message": self.message}

    @property
    def where(self) -> str:
        if self.group and self.rule:
            return f"{self.group}/{self.rule}"
        return self.group or ", ".join(self.interfaces) or ", ".join(self.related) or "-"


@dataclass(frozen=True)
class LintOptions:
    exposed_ports: tuple[int, ...] = DEFAULT_EXPOSED_PORTS
    max_rules: int = 200
    max_peer_groups: int = 20
    never_hit: Optional[Mapping[str, float]] = None     # verdict key -> no hit since (agent.compiler.counters)


def lint(state: DesiredState, options: LintOptions = LintOptions()) -> list[Finding]:
    """Every finding, most severe first."""
    lists = list(fleet_lists(state))
    uses = analyse_rules(lists)
    duplicates = duplicate_findings(state)
    twins = {(f.group, f.rule) for f in duplicates}
    findings = [*shadowed_findings(state, uses, twins), *duplicates,
                *exposed_findings(state, options.exposed_ports),
                *group_per_instance_findings(state), *too_many_findings(state, lists, options),
                *unused_findings(state, uses), *one_family_findings(state, lists, _one_family),
                *unguarded_findings(state), *never_hit_findings(state, options.never_hit or {})]
    return sorted(findings, key=_order)


def never_hit_findings(state: DesiredState, never: Mapping[str, float]) -> list[Finding]:
    """User rules whose verdict chain counted nothing since the counters were first read
    (an info: a rule for rare traffic is fine; one that never matches may be dead)."""
    rules = {(r.group_id, r.id): r for g in state.groups for r in g.rules}
    since: dict[tuple[str, str], float] = {}
    for key, t in never.items():
        vid = VerdictId.from_key(key)
        if vid.stage == "user" and (vid.group, vid.rule) in rules:
            since[(vid.group, vid.rule)] = min(t, since.get((vid.group, vid.rule), t))
    return [Finding(NEVER_HIT, INFO, g, r, f"never hit since {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t))} UTC "
                    "(its kernel counter has not moved)") for (g, r), t in sorted(since.items())]


def _one_family(rule: Rule, interfaces: tuple[str, ...], openers: tuple[str, ...], twin: int) -> Finding:
    what = rule.protocol + (f" {rule.ports}" if rule.ports else "")
    side = "from" if rule.direction == "ingress" else "to"
    whole = "::/0" if twin == 6 else "0.0.0.0/0"
    return Finding(ONE_FAMILY, WARNING, rule.group_id, rule.id,
                   f"drops {rule.direction} {what} {side} {rule.peer.value} only: IPv{twin} {what} stays "
                   f"open by {', '.join(openers)}; add the {whole} twin rule",
                   interfaces=interfaces, covered_by=openers)


def unguarded_findings(state: DesiredState) -> list[Finding]:
    """Interfaces whose first-hop guard and anti-spoofing are off (`spoofing_guard: false`)."""
    return [Finding(UNGUARDED, WARNING, None, None,
                    f"spoofing_guard is off on instance {inst.id}: it may send router advertisements, "
                    "DHCP replies, ARP/ND for any address and packets from any source address "
                    "(meant for routing appliances)", interfaces=(nic.name,))
            for inst in state.instances for nic in inst.interfaces if not nic.spoofing_guard]


def _order(f: Finding) -> tuple:
    return -RANK[f.severity], KINDS.index(f.kind), f.group or "", f.rule or "", f.interfaces, f.message


def reaches(findings: Iterable[Finding], fail_on: str) -> bool:
    return any(RANK[f.severity] >= RANK[fail_on] for f in findings)


# --- shadowed, duplicate ----------------------------------------------------------

def shadowed_findings(state: DesiredState, uses: dict[tuple[str, str], RuleUse],
                      twins: set) -> list[Finding]:
    """Shadowed rules; a duplicate's later twin is reported as a duplicate only."""
    out = []
    for g in state.groups:
        for r in g.rules:
            use = uses.get((g.id, r.id))
            if use is None or not use.shadowed or (g.id, r.id) in twins:
                continue
            n = len(use.interfaces)
            out.append(Finding(SHADOWED, WARNING, g.id, r.id,
                               f"never decides a packet: earlier lines match all it matches on "
                               f"every interface that uses it ({n}); covered by "
                               f"{', '.join(use.covered_by)}",
                               interfaces=use.interfaces, covered_by=use.covered_by))
    return out


def _content(r: Rule, self_id: Optional[str] = None) -> tuple:
    peer = Peer("group", "(self)") if r.peer == Peer("group", self_id) else r.peer
    return r.direction, r.policy, r.protocol, r.ports, r.sports, peer, r.nic_type


def duplicate_findings(state: DesiredState) -> list[Finding]:
    """The later of two rules of one group with the same match and verdict (priority
    aside: the later one in evaluation order is reported)."""
    out = []
    for g in state.groups:
        seen: dict[tuple, Rule] = {}
        for r in sorted(g.rules, key=rule_order):
            first = seen.setdefault(_content(r), r)
            if first is r:
                continue
            prio = f" (priority {first.priority} and {r.priority})" if first.priority != r.priority else ""
            out.append(Finding(DUPLICATE, WARNING, g.id, r.id,
                               f"same match and verdict as {g.id}/{first.id}{prio}; remove one",
                               covered_by=(f"{g.id}/{first.id}",)))
    return out


# --- exposed ----------------------------------------------------------------------

def world_networks(state: DesiredState, peer: Peer) -> list[str]:
    """'0.0.0.0/0' and/or '::/0' where the peer (a CIDR or a prefix list) holds all of it."""
    if peer.kind == "group":
        return []
    nets = peer_networks(state, peer)
    out = []
    for v, name in ((4, "0.0.0.0/0"), (6, "::/0")):
        merged = ipaddress.collapse_addresses([n for n in nets if n.version == v])
        if any(n.prefixlen == 0 for n in merged):
            out.append(name)
    return out


def port_name(port: int) -> str:
    name = ADMIN_PORTS.get(port) or DATA_PORTS.get(port)
    return f"{port} ({name})" if name else str(port)


def exposed_ports_of(rule: Rule, ports: Iterable[int]) -> list[int]:
    if rule.direction != "ingress" or rule.policy != "accept":
        return []
    if rule.protocol == "all":
        return sorted(ports)
    if rule.protocol not in ("tcp", "udp"):
        return []
    return sorted(p for p in ports if rule.ports is None or p in rule.ports)


def exposed_findings(state: DesiredState, ports: tuple[int, ...]) -> list[Finding]:
    out = []
    for g in state.groups:
        for r in g.rules:
            hits = exposed_ports_of(r, ports)
            world = world_networks(state, r.peer) if hits else []
            if not world:
                continue
            what = f"{r.protocol} {r.ports}" if r.ports else \
                ("all protocols" if r.protocol == "all" else f"{r.protocol} (all ports)")
            severity = ERROR if r.protocol == "all" or any(p in DATA_PORTS for p in hits) else WARNING
            out.append(Finding(EXPOSED, severity, g.id, r.id,
                               f"accepts {what} from anywhere ({', '.join(world)}): exposes "
                               f"{_port_list(hits)}"))
        out += _default_group_exposure(g, ports)
    return out


def _port_list(ports: list[int], limit: int = 6) -> str:
    shown = ", ".join(port_name(p) for p in ports[:limit])
    return shown + (f" and {len(ports) - limit} more" if len(ports) > limit else "")


def _default_group_exposure(g: Group, ports: tuple[int, ...]) -> list[Finding]:
    hits = [p for p in (22, 3389) if p in ports] if g.type == "default" else []
    if not hits:
        return []
    return [Finding(EXPOSED, WARNING, g.id, None,
                    f"type default: its default rules accept tcp {_port_list(hits)} from anywhere "
                    f"(0.0.0.0/0, ::/0) at priority 110")]


# --- group-per-instance, too-many-rules, unused -----------------------------------

def _signature(g: Group) -> tuple:
    rules = frozenset(_content(r, g.id) + (r.priority,) for r in g.rules)
    return g.type, g.network, g.inner_access, g.allow_http, g.allow_https, rules


def group_per_instance_findings(state: DesiredState) -> list[Finding]:
    alike: dict[tuple, list[Group]] = {}
    for g in state.groups:
        if len(state.members.get(g.id, ())) == 1:
            alike.setdefault(_signature(g), []).append(g)
    out = []
    for groups in alike.values():
        if len(groups) < 2:
            continue
        who = ", ".join(f"{g.id} ({state.members[g.id][0].id})" for g in groups)
        out.append(Finding(GROUP_PER_INSTANCE, INFO, groups[0].id, None,
                           f"{len(groups)} single-member groups with identical rules: {who}; "
                           f"one shared group would do",
                           related=tuple(g.id for g in groups[1:])))
    return out


def too_many_findings(state: DesiredState, lists: list[tuple[Port, DesiredState, EffectiveList]],
                      options: LintOptions) -> list[Finding]:
    out = []
    for port, _view, elist in lists:
        n = sum(1 for e in elist.entries if e.stage in (INTRA_GROUP, USER, DEFAULTS))
        if n > options.max_rules:
            out.append(Finding(TOO_MANY_RULES, WARNING, None, None,
                               f"{elist.direction}: {n} rules in the effective list "
                               f"(threshold {options.max_rules}; the cloud maximum is {CLOUD_MAX_RULES})",
                               interfaces=(port.label,)))
    for g in state.groups:
        peers = sorted({r.peer.value for r in g.rules if r.peer.kind == "group"})
        if len(peers) > options.max_peer_groups:
            out.append(Finding(TOO_MANY_RULES, WARNING, g.id, None,
                               f"names {len(peers)} groups as peers (threshold {options.max_peer_groups})",
                               related=tuple(peers)))
    return out


def unused_findings(state: DesiredState, uses: dict[tuple[str, str], RuleUse]) -> list[Finding]:
    named = Counter(r.peer.value for g in state.groups for r in g.rules if r.peer.kind == "group")
    out = []
    for g in state.groups:
        if not state.members.get(g.id):
            peer = f"; {named[g.id]} rule(s) name it as a peer and match nothing" if named[g.id] else ""
            out.append(Finding(UNUSED, INFO, g.id, None, f"has no member instances{peer}"))
            continue
        out += _unused_rules(state, g, uses)
    lists = {r.peer.value for g in state.groups for r in g.rules if r.peer.kind == "prefix_list"}
    for pl_id, _nets in state.prefix_lists:
        if pl_id not in lists:
            out.append(Finding(UNUSED, INFO, None, None, f"prefix list {pl_id} is named by no rule",
                               related=(pl_id,)))
    return out


def _unused_rules(state: DesiredState, g: Group, uses: dict[tuple[str, str], RuleUse]) -> list[Finding]:
    nics = [nic for inst in state.members[g.id] for nic in inst.interfaces]
    out = []
    for r in g.rules:
        use = uses.get((g.id, r.id))
        if use is None:
            why = f"no member has an {r.nic_type} interface" if nics else "no member has an interface"
            out.append(Finding(UNUSED, INFO, g.id, r.id, f"applies to no interface: {why}"))
        elif use.empty:
            family = {"icmp": "IPv4 ", "icmpv6": "IPv6 "}.get(r.protocol, "")
            out.append(Finding(UNUSED, INFO, g.id, r.id,
                               f"matches no packet: its peer {r.peer} holds no {family}address",
                               interfaces=use.interfaces))
    return out


def render_text(findings: list[Finding]) -> str:
    lines = [f"{f.severity:<8} {f.kind:<18} {f.where}: {f.message}" for f in findings]
    count = Counter(f.severity for f in findings)
    summary = ", ".join(f"{count[s]} {s}" for s in reversed(SEVERITIES) if count[s])
    lines.append(f"{len(findings)} finding(s): {summary}" if findings else "no findings")
    return "\n".join(lines) + "\n"


def parse_ports(text: str) -> tuple[int, ...]:
    """'22,5432,8000-8100' replaces the default list; '+8080,+9000' adds to it."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError("no ports given")
    extend = all(t.startswith("+") for t in items)
    ports = set(DEFAULT_EXPOSED_PORTS) if extend else set()
    for item in items:
        lo, _, hi = item.lstrip("+").partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"{item}: not a port or a range lo-hi")
        lo_n, hi_n = int(lo), int(hi or lo)
        if not 1 <= lo_n <= hi_n <= 65535:
            raise ValueError(f"{item}: ports must be within 1..65535, low to high")
        ports.update(range(lo_n, hi_n + 1))
    return tuple(sorted(ports))
