"""Unit tests of the record codecs and formatters with bytes captured from the kernel
(6.18, nft 1.0.6): an NFLOG batch of two packets (IPv4 UDP, IPv6 ICMPv6 echo), conntrack
NEW and DESTROY events of one TCP connection with a ct mark, counters and timestamps."""
from __future__ import annotations

import ipaddress

from agent.compiler.attribution import VerdictId, ct_mark_statement
from agent.kernel import netlink
from agent.kernel.ctevents import parse_buffer
from agent.kernel.nflog import NFNL_SUBSYS_ULOG, NflogReader, parse_headers, parse_packet
from agent.kernel.verdicts import VerdictChain, parse_verdict_chains
from agent.reconciler.revoke import RecentlyRevoked, flow_key
from agent.service.observe import Resolver, flow_record, log_record

NFLOG_BATCH = bytes.fromhex(
    "a400000000040000000000000000000002000a8d08000100080001000a000a0073673a373a0000000800040000000002"
    "10000800000600006a818d1ff94b000006000f000001000006001100000e000012001000da46d46f47f86a818d1ff94b"
    "0800000014000300000000006b156cd50000000000078a3408000c0000000000220009004500001ebdcb400040116867"
    "0a4d00020a4d00018fab2328000a14b8780a0000ec0000000004000000000000000000000a000a8d0800010086dd0100"
    "0a000a0073673a373a000000080004000000000210000800000600006a818d1ff94b000006000f000001000006001100"
    "000e000012001000da46d46f47f86a818d1ff94b86dd000014000300000000006b156cd50000000000079d3908000c00"
    "000000016c000900600262b200403a4020010db800770000000000000000000220010db8007700000000000000000001"
    "8000153053a90001d56c156b00000000099d070000000000101112131415161718191a1b1c1d1e1f2021222324252627"
    "28292a2b2c2d2e2f30313233343536371400000003000000000000000000000000000a8d")
CT_NEW = bytes.fromhex(
    "d8000000000100060000000000000000020000003400018014000180080001000a4d0002080002000a4d00011c000280"
    "050001000600000006000200b1da0000060003001f4000003400028014000180080001000a4d0001080002000a4d0002"
    "1c0002800500010006000000060002001f40000006000300b1da000008000c0047789677080003000000000808000700"
    "00000078300004802c0001800500010001000000050002000a0000000500030000000000060004000300000006000500"
    "0000000008000800000000030c001b0018eeaf7a3b44a5ab")
CT_DESTROY = bytes.fromhex(
    "04010000020100000000000000000000020000003400018014000180080001000a4d0002080002000a4d00011c000280"
    "050001000600000006000200b1da0000060003001f4000003400028014000180080001000a4d0001080002000a4d0002"
    "1c0002800500010006000000060002001f40000006000300b1da000008000c0047789677080003000000020e1c000980"
    "0c00010000000000000000060c00020000000000000001451c000a800c00010000000000000000040c00020000000000"
    "000000da1c0014800c00010018eeaf7a3b44bc9a0c00020018eeaf7a7782bfaa100004800c0001800500010007000000"
    "08000800000000030c001b0018eeaf7c567e61f5")
KEY = "ingress/user/sg-web/r1/10/drop"
LISTING = f"""table inet secgroup_agent {{
\tchain v_7 {{
\t\tlimit rate 5/second log prefix "sg:7:" group 2701 comment "{KEY}"
\t\tcounter packets 20 bytes 600 drop
\t}}

\tchain v_3 {{
\t\tcounter packets 4 bytes 240 {ct_mark_statement(3, "ingress")} comment "ingress/user/sg-web/web/5/accept"
\t\taccept
\t}}

\tchain input {{
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname "tap7" udp dport 9000 jump v_7
\t}}
}}
"""


def packets(data: bytes):
    return [parse_packet(m.payload) for m in netlink.messages(data) if m.kind == NFNL_SUBSYS_ULOG << 8]


def test_nflog_batch_decodes_prefix_interfaces_and_headers():
    v4, v6 = packets(NFLOG_BATCH)
    assert (v4.family, v4.group, v4.prefix, v4.indev, v4.outdev, v4.seq) == (2, 2701, "sg:7:", 2, None, 0)
    assert v4.headers is not None and (v4.headers.src, v4.headers.dst, v4.headers.protocol, v4.headers.dport) == \
        ("10.77.0.2", "10.77.0.1", 17, 9000)
    assert v4.headers.sport == 36779 and v4.timestamp is not None and v4.timestamp > 1.7e9
    assert v6.family == 10 and v6.seq == 1 and v6.headers is not None
    assert (v6.headers.version, v6.headers.src, v6.headers.protocol, v6.headers.icmp_type, v6.headers.sport) == \
        (6, "2001:db8:77::2", 58, 128, None)


def test_nflog_sequence_gaps_are_counted():
    reader = NflogReader.__new__(NflogReader)
    reader.gaps, reader._next_seq = 0, 5          # the batch starts at 0: 2**32 - 5 missed (wrap)
    got = reader._packets(NFLOG_BATCH)
    assert len(got) == 2 and reader.gaps == (0 - 5) & 0xFFFFFFFF and reader._next_seq == 2
    reader.gaps, reader._next_seq = 0, 0
    reader._packets(NFLOG_BATCH)
    assert reader.gaps == 0


def test_headers_of_fragments_and_short_packets():
    ip = bytes.fromhex("4500001c00012000401100000a0000010a000002") + bytes.fromhex("1f900050")
    assert parse_headers(ip).dport == 80                       # first fragment (offset 0, MF set)
    later = ip[:6] + bytes.fromhex("0010") + ip[8:]
    assert parse_headers(later).dport is None                  # a later fragment has no ports
    assert parse_headers(b"\x45\x00") is None and parse_headers(b"") is None


def test_conntrack_new_and_destroy_events():
    (new,), (gone,) = parse_buffer(CT_NEW), parse_buffer(CT_DESTROY)
    assert new.kind == "new" and gone.kind == "destroy" and new.id == gone.id
    assert new.orig[:5] == (ipaddress.ip_address("10.77.0.2").packed, ipaddress.ip_address("10.77.0.1").packed,
                            6, 45530, 8000)
    assert new.mark == gone.mark == 3 and new.counters_orig is None
    assert gone.counters_orig == (6, 325) and gone.counters_reply == (4, 218)
    assert gone.start is not None and gone.stop is not None and 0 < gone.stop - gone.start < 5


def test_verdict_chains_from_a_listing():
    chains = parse_verdict_chains(LISTING)
    assert chains == {7: VerdictChain(7, KEY, 20, 600, True),
                      3: VerdictChain(3, "ingress/user/sg-web/web/5/accept", 4, 240, False)}


def resolver(calls: list) -> Resolver:
    def read():
        calls.append(1)
        return parse_verdict_chains(LISTING)
    return Resolver(read, min_refresh=0.0)


def test_log_record_names_the_rule():
    v4, _ = packets(NFLOG_BATCH)
    calls: list = []
    r = log_record(v4, resolver(calls), "hv1", lambda i: {2: "tap7"}.get(i))
    assert calls == [1]                         # the unknown number made one listing
    assert {k: r[k] for k in ("host", "interface", "direction", "verdict", "stage", "group", "rule", "priority",
                              "protocol", "src", "dst", "sport", "dport", "audit", "number")} == \
        {"host": "hv1", "interface": "tap7", "direction": "ingress", "verdict": "drop", "stage": "user",
         "group": "sg-web", "rule": "r1", "priority": 10, "protocol": "udp", "src": "10.77.0.2",
         "dst": "10.77.0.1", "sport": 36779, "dport": 9000, "audit": False, "number": 7}
    assert VerdictId.from_key(KEY).rule == "r1"


def test_flow_record_names_admitting_rule_and_revocation():
    (gone,) = parse_buffer(CT_DESTROY)
    revoked = RecentlyRevoked(size=2)
    revoked.add(flow_key("10.77.0.2", "10.77.0.1", 6, 45530, 8000, None), "rev-42", "no rule allows it")
    rec = flow_record(gone, resolver([]), "hv1", revoked)
    assert rec is not None and rec["event"] == "end" and rec["protocol"] == "tcp"
    assert rec["destination"]["rule"]["rule"] == "web" and rec["source"]["rule"] is None      # mark 0x3: ingress only
    assert rec["orig"] == {"packets": 6, "bytes": 325} and rec["reply"] == {"packets": 4, "bytes": 218}
    assert rec["revoked"] == {"revision": "rev-42", "reason": "no rule allows it"}
    assert flow_record(gone, resolver([]), "hv1", revoked)["revoked"] is None     # popped once


def test_recently_revoked_is_bounded():
    r = RecentlyRevoked(size=2)
    for i in range(3):
        r.add(flow_key("a", "b", 6, i, 1, None), str(i), "x")
    assert r.pop(flow_key("a", "b", 6, 0, 1, None)) is None
    assert r.pop(flow_key("a", "b", 6, 2, 1, None))[0] == "2"


def test_verdict_chain_of_one_rule():
    """The compiler may write a verdict chain as one rule: counter, ct mark, log, verdict, comment."""
    listing = ("table inet secgroup_agent {\n\tchain v_12 {\n\t\tcounter packets 9 bytes 540 "
               f"{ct_mark_statement(12, 'egress')} log prefix \"sg:12:\" group 2701 accept "
               "comment \"egress/default/sg-a/default:ssh/-/accept/audit\"\n\t}\n}\n")
    (chain,) = parse_verdict_chains(listing).values()
    assert (chain.number, chain.packets, chain.logs) == (12, 9, True)
    v = VerdictId.from_key(chain.key)
    assert (v.direction, v.stage, v.rule, v.priority, v.audit) == ("egress", "default", "default:ssh", None, True)
