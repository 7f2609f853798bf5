"""Stage 0: the topology carries traffic at all (everything open), so later failures
are about the agent, not the wiring."""
from topology import Probe, check

OPEN = {
    "host": "hv-01",
    "security_groups": [{
        "id": "sg-open", "type": "custom",
        "rules": [
            {"id": "any4", "direction": "ingress", "protocol": "all", "source_cidr": "0.0.0.0/0"},
            {"id": "any6", "direction": "ingress", "protocol": "all", "source_cidr": "::/0"},
        ]}],
    "instances": [
        {"id": n, "security_groups": ["sg-open"],
         "interfaces": [{"name": f"tap-{n}", "addresses": a}]}
        for n, a in [("i1", ["10.0.0.11", "fd00::11"]), ("i2", ["10.0.0.12", "fd00::12"]),
                     ("i3", ["10.0.0.13", "fd00::13"])]
    ] + [
        {"id": n, "security_groups": ["sg-open"],
         "interfaces": [{"name": f"tap-{n}", "attachment": "bridged", "addresses": a}]}
        for n, a in [("b1", ["10.1.0.21", "fd01::21"]), ("b2", ["10.1.0.22", "fd01::22"])]
    ],
}


def test_wiring_carries_every_protocol(topo, hv):
    hv.apply(OPEN)
    probes = []
    for src, dst in [("i1", "i2"), ("outside", "i3"), ("b1", "b2"), ("b1", "i1"), ("i2", "outside")]:
        for v6 in (False, True):
            probes += [Probe(src, dst, "tcp", 80, v6=v6), Probe(src, dst, "udp", 9999, v6=v6),
                       Probe(src, dst, "icmp", v6=v6)]
    check(topo, [(p, True) for p in probes])
