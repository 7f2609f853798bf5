"""agent/kernel/rules.py and agent/kernel/batch.py without a kernel: rule texts encoded as
nft 1.0.6 encodes them (golden bytes captured from nft's own NFT_MSG_NEWRULE with strace;
every form of the grammar as `nft --debug=netlink` prints what nft made of it), texts
outside the grammar refused, and the batch's messages, order and error naming.
tests/kernel/test_nl_rules_kernel.py checks the same against nft on the real kernel."""
from __future__ import annotations

import struct

import pytest

from agent.compiler.ruleset import NftSet
from agent.compiler.transaction import ChainRefill, ElementChange, NetlinkChanges
from agent.errors import KernelError
from agent.kernel import batch as nb
from agent.kernel import elements as ne
from agent.kernel import netlink as nl
from agent.kernel.rules import rule_attributes, rule_expressions


def b(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", "").replace("\n", ""))


# NFTA_RULE_TABLE "t", NFTA_RULE_CHAIN "c", NFTA_RULE_EXPRESSIONS of `nft add rule inet t c TEXT`
# (strace -e write=3); lookups: with libnftnl's 8-byte NFTA_LOOKUP_SET_ID taken out (not sent, see rules.py)
GOLDEN = {
    "ip saddr 192.0.2.0-192.0.2.255 meta l4proto 17 th dport 61001 goto v_2": """
06000100 74000000 06000200 63000000 c8010480 24000180 09000100 6d657461 00000000 14000280 08000200
0000000f 08000100 00000001 2c000180 08000100 636d7000 20000280 08000100 00000001 08000200 00000000
0c000380 05000100 02000000 34000180 0c000100 7061796c 6f616400 24000280 08000100 00000001 08000200
00000001 08000300 0000000c 08000400 00000004 2c000180 08000100 636d7000 20000280 08000100 00000001
08000200 00000005 0c000380 08000100 c0000200 2c000180 08000100 636d7000 20000280 08000100 00000001
08000200 00000003 0c000380 08000100 c00002ff 24000180 09000100 6d657461 00000000 14000280 08000200
00000010 08000100 00000001 2c000180 08000100 636d7000 20000280 08000100 00000001 08000200 00000000
0c000380 05000100 11000000 34000180 0c000100 7061796c 6f616400 24000280 08000100 00000001 08000200
00000002 08000300 00000002 08000400 00000002 2c000180 08000100 636d7000 20000280 08000100 00000001
08000200 00000000 0c000380 06000100 ee490000 38000180 0e000100 696d6d65 64696174 65000000 24000280
08000100 00000000 18000280 14000280 08000100 fffffffc 08000200 765f3200""",
    "meta l4proto 6 th sport 1 th dport 2 jump v_2": """
06000100 74000000 06000200 63000000 ec000480 24000180 09000100 6d657461 00000000 14000280 08000200
00000010 08000100 00000001 2c000180 08000100 636d7000 20000280 08000100 00000001 08000200 00000000
0c000380 05000100 06000000 34000180 0c000100 7061796c 6f616400 24000280 08000100 00000001 08000200
00000002 08000300 00000000 08000400 00000004 2c000180 08000100 636d7000 20000280 08000100 00000001
08000200 00000000 0c000380 08000100 00010002 38000180 0e000100 696d6d65 64696174 65000000 24000280
08000100 00000000 18000280 14000280 08000100 fffffffd 08000200 765f3200""",
    "ip saddr @s4 meta l4proto . th dport vmap @n4": """
06000100 74000000 06000200 63000000 70010480 24000180 09000100 6d657461 00000000 14000280 08000200
0000000f 08000100 00000001 2c000180 08000100 636d7000 20000280 08000100 00000001 08000200 00000000
0c000380 05000100 02000000 34000180 0c000100 7061796c 6f616400 24000280 08000100 00000001 08000200
00000001 08000300 0000000c 08000400 00000004 24000180 0b000100 6c6f6f6b 75700000 14000280 08000200
00000001 07000100 73340000 24000180 09000100 6d657461 00000000 14000280 08000200 00000010 08000100
00000001 40000180 0e000100 62797465 6f726465 72000000 2c000280 08000100 00000001 08000200 00000001
08000300 00000001 08000400 00000001 08000500 00000002 34000180 0c000100 7061796c 6f616400 24000280
08000100 00000009 08000200 00000002 08000300 00000002 08000400 00000002 2c000180 0b000100 6c6f6f6b
75700000 1c000280 08000200 00000001 08000300 00000000 07000100 6e340000""",
    "ip6 saddr . meta l4proto . th sport . th dport vmap @m6": """
06000100 74000000 06000200 63000000 80010480 24000180 09000100 6d657461 00000000 14000280 08000200
0000000f 08000100 00000001 2c000180 08000100 636d7000 20000280 08000100 00000001 08000200 00000000
0c000380 05000100 0a000000 34000180 0c000100 7061796c 6f616400 24000280 08000100 00000001 08000200
00000001 08000300 00000008 08000400 00000010 24000180 09000100 6d657461 00000000 14000280 08000200
00000010 08000100 00000002 40000180 0e000100 62797465 6f726465 72000000 2c000280 08000100 00000002
08000200 00000002 08000300 00000001 08000400 00000001 08000500 00000002 34000180 0c000100 7061796c
6f616400 24000280 08000100 0000000d 08000200 00000002 08000300 00000000 08000400 00000002 34000180
0c000100 7061796c 6f616400 24000280 08000100 0000000e 08000200 00000002 08000300 00000002 08000400
00000002 2c000180 0b000100 6c6f6f6b 75700000 1c000280 08000200 00000001 08000300 00000000 07000100
6d360000""",
}


@pytest.mark.parametrize("text", sorted(GOLDEN))
def test_golden_bytes_as_nft_sends_them(text):
    assert rule_attributes("t", "c", text) == b(GOLDEN[text])


# -- every form, as `nft --debug=netlink list chain inet t c` prints what nft made of it ----
def _words(data: bytes) -> str:
    data += bytes(-len(data) % 4)
    return " ".join(f"0x{w:08x}" for w in struct.unpack(f"<{len(data) // 4}I", data))


def _u32(value: bytes) -> int:
    return struct.unpack(">I", value)[0]


def _describe(expr: bytes) -> str:
    """One expression as nft's debug output prints it (the subset the grammar uses)."""
    top = dict(nl.attrs(expr))
    name, data = nl.string(top[1]), dict(nl.attrs(top[2]))
    if name == "meta":
        return f"meta load {({15: 'nfproto', 16: 'l4proto'})[_u32(data[2])]} => reg {_u32(data[1])}"
    if name == "cmp":
        op = {0: "eq", 3: "lte", 5: "gte"}[_u32(data[2])]
        return f"cmp {op} reg {_u32(data[1])} {_words(dict(nl.attrs(data[3]))[1])}"
    if name == "payload":
        base = {1: "network", 2: "transport"}[_u32(data[2])]
        return f"payload load {_u32(data[4])}b @ {base} header + {_u32(data[3])} => reg {_u32(data[1])}"
    if name == "lookup":
        dreg = f" dreg {_u32(data[3])}" if 3 in data else ""
        return f"lookup reg {_u32(data[2])} set {nl.string(data[1])}{dreg} 0x0"
    if name == "byteorder":
        reg = _u32(data[1])
        return f"byteorder reg {_u32(data[2])} = hton(reg {reg}, {_u32(data[5])}, {_u32(data[4])})"
    assert name == "immediate"
    verdict = dict(nl.attrs(dict(nl.attrs(data[2]))[2]))
    code = {0xfffffffd: "jump", 0xfffffffc: "goto"}[_u32(verdict[1])]
    return f"immediate reg {_u32(data[1])} {code} -> {nl.string(verdict[2])}"


def describe(text: str) -> list[str]:
    return [_describe(dict(nl.attrs(e))[1]) for e in rule_expressions(text)]


NF4 = ["meta load nfproto => reg 1", "cmp eq reg 1 0x00000002"]
NF6 = ["meta load nfproto => reg 1", "cmp eq reg 1 0x0000000a"]
GOTO, JUMP = "immediate reg 0 goto -> v_2", "immediate reg 0 jump -> v_2"
# seen in `nft --debug=netlink list chain inet t c` after `nft add rule inet t c TEXT` (nft 1.0.6)
FORMS = {
    "ip saddr 192.0.2.1 goto v_2": NF4 + ["payload load 4b @ network header + 12 => reg 1",
                                          "cmp eq reg 1 0x010200c0", GOTO],
    "ip6 daddr fd00::1-fd00::ff meta l4proto 6-17 th sport 1-1024 th dport 22 jump v_2": NF6 + [
        "payload load 16b @ network header + 24 => reg 1",
        "cmp gte reg 1 0x000000fd 0x00000000 0x00000000 0x01000000",
        "cmp lte reg 1 0x000000fd 0x00000000 0x00000000 0xff000000",
        "meta load l4proto => reg 1", "cmp gte reg 1 0x00000006", "cmp lte reg 1 0x00000011",
        "payload load 2b @ transport header + 0 => reg 1", "cmp gte reg 1 0x00000100", "cmp lte reg 1 0x00000004",
        "payload load 2b @ transport header + 2 => reg 1", "cmp eq reg 1 0x00001600", JUMP],
    "meta nfproto ipv4 goto v_2": NF4 + [GOTO],
    "meta nfproto ipv6 meta l4proto 6 goto v_2": NF6 + ["meta load l4proto => reg 1", "cmp eq reg 1 0x00000006", GOTO],
    "meta l4proto 6 th dport 22 goto v_2": ["meta load l4proto => reg 1", "cmp eq reg 1 0x00000006",
                                            "payload load 2b @ transport header + 2 => reg 1",
                                            "cmp eq reg 1 0x00001600", GOTO],
    "th dport 22 goto v_2": ["payload load 2b @ transport header + 2 => reg 1", "cmp eq reg 1 0x00001600", GOTO],
    "th dport 22-22 goto v_2": ["payload load 2b @ transport header + 2 => reg 1", "cmp gte reg 1 0x00001600",
                                "cmp lte reg 1 0x00001600", GOTO],
    "goto v_2": [GOTO],
    "jump v_2": [JUMP],
    "ip saddr @s4 jump v_2": NF4 + ["payload load 4b @ network header + 12 => reg 1", "lookup reg 1 set s4 0x0", JUMP],
    "ip6 daddr @s6 meta l4proto 6 th dport 80 goto v_2": NF6 + [
        "payload load 16b @ network header + 24 => reg 1", "lookup reg 1 set s6 0x0", "meta load l4proto => reg 1",
        "cmp eq reg 1 0x00000006", "payload load 2b @ transport header + 2 => reg 1", "cmp eq reg 1 0x00005000", GOTO],
    "ip saddr 10.0.0.5 th sport 0-1 goto v_2": NF4 + [
        "payload load 4b @ network header + 12 => reg 1", "cmp eq reg 1 0x0500000a",
        "payload load 2b @ transport header + 0 => reg 1", "cmp gte reg 1 0x00000000", "cmp lte reg 1 0x00000100", GOTO],
    "ip6 saddr ::-::ff goto v_2": NF6 + ["payload load 16b @ network header + 8 => reg 1",
                                         "cmp gte reg 1 0x00000000 0x00000000 0x00000000 0x00000000",
                                         "cmp lte reg 1 0x00000000 0x00000000 0x00000000 0xff000000", GOTO],
    "ip saddr . meta l4proto . th dport vmap @m4": NF4 + [
        "payload load 4b @ network header + 12 => reg 1", "meta load l4proto => reg 9",
        "byteorder reg 9 = hton(reg 9, 2, 1)", "payload load 2b @ transport header + 2 => reg 10",
        "lookup reg 1 set m4 dreg 0 0x0"],
    "ip6 saddr . meta l4proto . th sport . th dport vmap @m6": NF6 + [
        "payload load 16b @ network header + 8 => reg 1", "meta load l4proto => reg 2",
        "byteorder reg 2 = hton(reg 2, 2, 1)", "payload load 2b @ transport header + 0 => reg 13",
        "payload load 2b @ transport header + 2 => reg 14", "lookup reg 1 set m6 dreg 0 0x0"],
    "ip6 saddr @s6 meta l4proto . th sport . th dport vmap @n6": NF6 + [
        "payload load 16b @ network header + 8 => reg 1", "lookup reg 1 set s6 0x0", "meta load l4proto => reg 1",
        "byteorder reg 1 = hton(reg 1, 2, 1)", "payload load 2b @ transport header + 0 => reg 9",
        "payload load 2b @ transport header + 2 => reg 10", "lookup reg 1 set n6 dreg 0 0x0"],
    "ip saddr @s4 meta l4proto vmap @p4": NF4 + [
        "payload load 4b @ network header + 12 => reg 1", "lookup reg 1 set s4 0x0", "meta load l4proto => reg 1",
        "lookup reg 1 set p4 dreg 0 0x0"],
}


@pytest.mark.parametrize("text", sorted(FORMS))
def test_every_form_makes_what_nft_makes(text):
    assert describe(text) == FORMS[text]


def test_single_ports_merge_into_one_load_as_nft_does():
    assert describe("meta l4proto 6 th sport 1 th dport 2 jump v_2")[2:4] == [
        "payload load 4b @ transport header + 0 => reg 1", "cmp eq reg 1 0x02000100"]
    assert len(describe("meta l4proto 6 th sport 1-1 th dport 2 jump v_2")) == 8        # a range: not merged


REFUSED = [
    "", "accept", "drop", "counter goto v_2", "ip saddr 10.0.0.0/24 goto v_2", "ip saddr 10.0.0.1 accept",
    "ip saddr 10.0.0.1", "ip saddr fd00::1 goto v_2", "ip6 saddr 10.0.0.1 goto v_2", "ip saddr 010.0.0.1 goto v_2",
    "ip saddr 10.0.0.2-10.0.0.1 goto v_2", "ip6 saddr FD00::1 goto v_2", "ip6 saddr fd00:0::1 goto v_2",
    "ip sport 10.0.0.1 goto v_2", "meta nfproto ipv5 goto v_2", "meta nfproto 2 goto v_2",
    "meta l4proto tcp goto v_2", "meta l4proto 256 goto v_2", "meta l4proto 06 goto v_2",
    "th dport 65536 goto v_2", "th dport 2-1 goto v_2", "th dport 22 th sport 1 goto v_2",
    "th dport 22 th dport 23 goto v_2", "tcp dport 22 goto v_2", "meta l4proto 6 meta l4proto 6 goto v_2",
    "th dport 22 meta l4proto 6 goto v_2", "goto", "goto v_2 v_3", "goto v 2", "goto 'v_2'", "goto 2v",
    "goto @v_2", "return", "jump v_2 accept", "ip saddr @s4 goto v_2 counter", "ip saddr @4x goto v_2",
    "ip saddr @ goto v_2", "ip saddr . meta l4proto vmap m4", "ip saddr . th dport vmap @m4",
    "ip saddr . meta l4proto . th dport . th sport vmap @m4", "ip saddr . meta l4proto . th dport vmap @m4 accept",
    "ip saddr 10.0.0.1 meta l4proto . th dport vmap @m4", "meta l4proto . th dport vmap @n4",
    "ip saddr . meta l4proto vmap @m4 goto v_2", "ip saddr @s4 . meta l4proto vmap @m4",
    "iifname vmap @ports", "ip daddr vmap @ingress_addr4", "ip saddr@s4 goto v_2", "ip saddr 10.0.0.1 - 10.0.0.2 goto v_2",
    "ip saddr 10.0.0.1 goto v_" + "x" * 300,
]


@pytest.mark.parametrize("text", REFUSED)
def test_texts_outside_the_grammar_are_refused(text):
    with pytest.raises(ValueError):
        rule_expressions(text)


# -- the batch ------------------------------------------------------------------------------
def _changes(rules=("ip saddr @g4 goto v_1", "goto v_2"), family="inet") -> NetlinkChanges:
    element = ElementChange("inet", "t", NftSet("g4", "ipv4_addr", ()), ("10.0.0.1",), ("10.0.0.2",))
    return NetlinkChanges((ChainRefill(family, "t", "a", tuple(rules)), ChainRefill(family, "t", "b", ("goto v_1",))),
                          (element,))


def _messages(data: bytes) -> list[tuple[int, int, int, bytes]]:
    return [(m.kind, m.flags, m.seq, m.payload) for m in nl.messages(data)]


def test_batch_flushes_then_elements_then_rules_in_order():
    msgs = nb.build_messages(_changes(), 7)
    batch = ne.frame([m for m, _ in msgs], 6)
    got = _messages(batch)
    kinds = [(kind & 0xff, flags) for kind, flags, _seq, _p in got]
    request, ack, append = nl.NLM_F_REQUEST, nl.NLM_F_ACK, nl.NLM_F_CREATE | nb.NLM_F_APPEND
    # rule messages ask for no ACK (the kernel answers them only to refuse), but the last
    assert kinds == [(0x10, 1), (nb.NFT_MSG_DELRULE, request), (nb.NFT_MSG_DELRULE, request),
                     (ne.NFT_MSG_DELSETELEM, request | ack), (ne.NFT_MSG_NEWSETELEM, request | ack | 0x600)] + \
        [(nb.NFT_MSG_NEWRULE, request | append)] * 2 + [(nb.NFT_MSG_NEWRULE, request | ack | append), (0x11, 1)]
    assert [seq for _k, _f, seq, _p in got] == list(range(6, 6 + len(got)))
    assert all(payload[0] == 1 for _k, _f, _s, payload in got[1:-1])                  # NFPROTO_INET
    flush = nl.nft_attrs(got[1][3])
    assert (nl.string(flush[1]), nl.string(flush[2])) == ("t", "a") and 3 not in flush   # no handle: the whole chain
    assert [nl.string(nl.nft_attrs(p)[2]) for _k, _f, _s, p in got[5:8]] == ["a", "a", "b"]
    assert got[5][3][4:] == rule_attributes("t", "a", "ip saddr @g4 goto v_1")
    assert [d.describe(None) for _m, d in msgs][:2] == ["flushing chain a", "flushing chain b"]
    assert msgs[-1][1].describe(12) == "appending 'goto v_1' to chain b"


def test_nothing_is_sent_when_a_rule_or_table_cannot_be_encoded(monkeypatch):
    sent = []
    monkeypatch.setattr(ne, "_talk", lambda batch, expected: sent.append(batch) or {})
    with pytest.raises(ValueError, match="chain inet t a: rule 'counter accept'"):
        nb.commit_netlink_changes(_changes(("goto v_1", "counter accept")))
    with pytest.raises(ValueError, match="inet tables only"):
        nb.commit_netlink_changes(_changes(family="ip"))
    assert sent == []
    assert nb.commit_netlink_changes(NetlinkChanges((), ())) == 0.0


def test_a_refused_rule_is_named(monkeypatch):
    waited = []

    def talk(batch, expected):            # the kernel: ACKs where asked, and the refusal
        waited.append(sorted(expected))
        last = max(expected)
        return {**{seq: (0, None) for seq in expected}, last - 1: (2, None)}
    monkeypatch.setattr(ne, "_talk", talk)
    with pytest.raises(KernelError) as exc:
        nb.commit_netlink_changes(_changes())
    assert "appending 'goto v_2' to chain a: No such file or directory" in str(exc.value)
    assert "nothing was changed" in str(exc.value) and "inet t" in str(exc.value)
    first = waited[0][0] - 2                      # flush a, flush b, then the elements
    assert waited == [[first + 2, first + 3, first + 6]]      # the element messages and the last rule
    monkeypatch.setattr(ne, "_talk", lambda batch, expected: {seq: (0, None) for seq in expected})
    assert nb.commit_netlink_changes(_changes()) >= 0.0
    monkeypatch.setattr(ne, "_talk", lambda batch, expected: {seq: (0, None) for seq in sorted(expected)[:-1]})
    with pytest.raises(KernelError, match="no answer"):
        nb.commit_netlink_changes(_changes())


# -- lookups checked against the declared sets ------------------------------------------
def test_lookups_name_their_sets_and_key_types():
    from agent.kernel.rules import rule_lookups
    assert rule_lookups("ip6 saddr @s6 meta l4proto . th sport . th dport vmap @n6") == (
        ("s6", ("ipv6_addr",), False), ("n6", ("inet_proto", "inet_service", "inet_service"), True))
    assert rule_lookups("ip saddr . meta l4proto . th dport vmap @m4") == (
        ("m4", ("ipv4_addr", "inet_proto", "inet_service"), True),)
    assert rule_lookups("ip daddr @g4 meta l4proto 6 goto v_1") == (("g4", ("ipv4_addr",), False),)
    assert rule_lookups("meta l4proto 6 th dport 1-2 goto v_1") == ()


def _declared(*sets: NftSet):
    from agent.compiler.ruleset import Ruleset, Table
    return Ruleset((Table("inet", "t", sets, ()),))


def test_a_lookup_of_a_set_of_another_type_is_refused_before_sending(monkeypatch):
    monkeypatch.setattr(ne, "_talk", lambda batch, expected: {seq: (0, None) for seq in expected})
    g4, g6 = NftSet("g4", "ipv4_addr", ()), NftSet("g6", "ipv6_addr", ())
    m = NftSet("m", "inet_proto . inet_service", (), map_to="verdict")
    ok = ("ip saddr @g4 meta l4proto . th dport vmap @m", "ip6 saddr @g6 goto v_1")
    assert nb.commit_netlink_changes(_changes(ok), _declared(g4, g6, m)) >= 0.0
    for rule, declared in [("ip6 saddr @g4 goto v_1", (g4, g6)),       # the kernel would take this one
                           ("ip saddr @g4 meta l4proto vmap @m", (g4, m)),
                           ("ip saddr @m goto v_1", (m,)),
                           ("ip saddr @g4 meta l4proto . th dport vmap @g4", (g4,)),
                           ("ip saddr @nosuch goto v_1", (g4,))]:
        with pytest.raises(ValueError, match="is not declared as"):
            nb.commit_netlink_changes(_changes((rule,)), _declared(*declared))


def test_the_compilers_policy_chains_are_in_the_grammar_and_look_up_sets_of_their_types():
    """A compiled document: its policy chains (region, points, member paths: what a rule
    edit refills) are in the grammar and pass the lookup check against the ruleset's
    own sets; the other chains (dispatch, guards, verdicts) are refused, not mis-encoded."""
    import json
    import subprocess
    from pathlib import Path
    from agent.compiler.compile import build_ruleset
    from agent.model.validate import validate_document
    gen = Path(__file__).resolve().parents[2] / "scripts" / "gen-config"
    doc = json.loads(subprocess.run([str(gen), "--interfaces", "8", "--rules", "30", "--seed", "2"],
                                    capture_output=True, text=True, check=True).stdout)
    rs = build_ruleset(validate_document(doc))
    table = next(t for t in rs.tables if t.family == "inet")
    policy = [c for c in table.chains if c.name.startswith(("pin_", "peg_"))]
    refills = tuple(ChainRefill("inet", table.name, c.name, c.rules) for c in policy)
    msgs = nb.build_messages(NetlinkChanges(refills, ()), 1, rs)
    assert len(msgs) == len(policy) + sum(len(c.rules) for c in policy) > 200
    assert any(c.name.endswith("_m4") for c in policy) and any("vmap" in r for c in policy for r in c.rules)
    others = [c for c in table.chains if c not in policy and c.rules]
    for chain in others:
        if not all(r.startswith(("goto ", "jump ")) for r in chain.rules):
            with pytest.raises(ValueError):
                nb.build_messages(NetlinkChanges((ChainRefill("inet", table.name, chain.name, chain.rules),), ()), 1)
