"""agent/kernel/elements.py and agent/kernel/netlink.py without a kernel: the netlink encoding of set elements (golden
bytes taken from strace of nft 1.0.6 `add element`), batching, reply parsing, errors.

libnftnl numbers the NFTA_LIST_ELEM nests of a message 1, 2, 3, ...; we send every one
as NFTA_LIST_ELEM (1). The kernel ignores the nest type; the goldens below are nft's
bytes with that one difference (marked)."""
from __future__ import annotations

import struct

import pytest

from agent.compiler.ruleset import NftSet
from agent.compiler.transaction import ElementChange
from agent.errors import KernelError
from agent.kernel import elements as ne
from agent.kernel import netlink as nl
from agent.kernel import nft
from agent.kernel.elements import build_batch, encode_element, supported

V4_CONCAT = "ipv4_addr . inet_proto . inet_service"
V6_CONCAT = "ipv6_addr . inet_proto . inet_service"


def change(name: str, set_type: str, interval: bool, removed: tuple, added: tuple) -> ElementChange:
    """Elements leaving and joining set `name` of table inet t."""
    return ElementChange("inet", "t", NftSet(name, set_type, (), interval), removed, added)


def b(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def test_ipv4_proto_port_concat_with_ranges():
    # nft add element inet t a { 10.0.0.0-10.0.0.255 . 6 . 1000-2000 }: KEY + KEY_END,
    # every field padded to 4 bytes (proto 1 + 3, port 2 + 2)
    assert encode_element(V4_CONCAT, "10.0.0.0-10.0.0.255 . 6 . 1000-2000") == [b(
        "2c000180 14000180 10000100 0a000000 06000000 03e80000"
        "         14000a80 10000100 0a0000ff 06000000 07d00000")]


def test_single_values_in_a_concat_repeat_the_start_as_end():
    # nft add element inet t a { 10.9.0.5 . 6 . 80 }
    assert encode_element(V4_CONCAT, "10.9.0.5 . 6 . 80") == [b(
        "2c000180 14000180 10000100 0a090005 06000000 00500000"
        "         14000a80 10000100 0a090005 06000000 00500000")]


def test_ipv6_proto_port_concat():
    # nft add element inet t b { fd00::-fd00::ff . 17 . 53 }
    assert encode_element(V6_CONCAT, "fd00::-fd00::ff . 17 . 53") == [b(
        "44000180 20000180 1c000100 fd000000000000000000000000000000 11000000 00350000"
        "         20000a80 1c000100 fd0000000000000000000000000000ff 11000000 00350000")]


def test_rbtree_range_is_a_start_and_an_end_element():
    # nft add element inet t c { 10.7.0.0-10.7.0.255 } (type ipv4_addr; flags interval)
    assert encode_element("ipv4_addr", "10.7.0.0-10.7.0.255") == [
        b("10000180 0c000180 08000100 0a070000"),
        b("18000180 08000300 00000001 0c000180 08000100 0a070100"),   # nft: 18000280
    ]


def test_rbtree_single_address_and_adjacency():
    # 10.0.0.1 is [10.0.0.1, 10.0.0.2): its end element has the key of 10.0.0.2's start
    first, second = encode_element("ipv4_addr", "10.0.0.1"), encode_element("ipv4_addr", "10.0.0.2")
    assert first[1][-4:] == second[0][-4:] == b("0a000002")
    assert struct.unpack(">I", first[1][8:12]) == (1,)               # NFT_SET_ELEM_INTERVAL_END


def test_rbtree_range_to_the_maximum_has_no_end_element():
    # nft add element inet t c { 10.250.0.0-255.255.255.255 }: the start only, with
    # libnftnl's userdata NFTNL_UDATA_SET_ELEM_FLAGS = NFTNL_SET_ELEM_F_INTERVAL_OPEN
    assert encode_element("ipv4_addr", "10.250.0.0-255.255.255.255") == [
        b("1c000180 0c000180 08000100 0afa0000 0a000600 01040100 00000000")]
    assert len(encode_element("ipv6_addr", "fd00::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")) == 1


def test_single_field_keys_are_not_padded():
    # nft add element inet t s { 1000-2000 } (type inet_service; flags interval): 2 bytes
    assert encode_element("inet_service", "1000-2000") == [
        b("10000180 0c000180 06000100 03e80000"),
        b("18000180 08000300 00000001 0c000180 06000100 07d10000"),   # nft: 18000280
    ]
    assert encode_element("inet_service", "1000-65535")[0][12:16] == b("03e80000")


def test_ipv6_single_field():
    # nft add element inet t s6 { fd00::5 } (type ipv6_addr; flags interval)
    assert encode_element("ipv6_addr", "fd00::5") == [
        b("1c000180 18000180 14000100 fd000000000000000000000000000005"),             # nft: 1c000280
        b("24000180 08000300 00000001 18000180 14000100 fd000000000000000000000000000006"),  # nft: 24000380
    ]


@pytest.mark.parametrize("set_type, text", [
    ("ipv4_addr", "fd00::1"), ("ipv6_addr", "10.0.0.1"), ("ipv4_addr", "10.0.0.9-10.0.0.1"),
    (V4_CONCAT, "10.0.0.1 . 6"), (V4_CONCAT, "10.0.0.1 . 256 . 80"), (V4_CONCAT, "10.0.0.1 . 6 . 65536"),
    ("inet_service", "x"),
])
def test_bad_element_texts(set_type, text):
    with pytest.raises(ValueError):
        encode_element(set_type, text)


def test_supported():
    assert supported(V4_CONCAT, True, None)
    assert supported("ipv6_addr . inet_proto", True, None)
    assert supported("ipv4_addr", True, None) and supported("inet_service", True, None)
    assert not supported("ipv4_addr", False, None)                    # hash sets: not needed
    assert supported(V4_CONCAT, True, "verdict")                      # member-path maps
    assert supported(V4_CONCAT, False, "verdict")                     # points maps
    assert not supported("ipv4_addr", True, "verdict")                # single-field interval maps
    assert not supported(V4_CONCAT, True, "mark")
    assert not supported("ifname . ipv4_addr", True, None)
    assert not supported("ether_addr", True, None)


def test_batch_golden():
    # one deletion and one addition in an rbtree set: BATCH_BEGIN, DELSETELEM, NEWSETELEM, END
    batch, sent = build_batch([change("c", "ipv4_addr", True, ("10.0.0.1",), ("10.0.0.2",))])
    begin = b("14000000 1000 0100 01000000 00000000 0000000a")            # res_id NFNL_SUBSYS_NFTABLES, be16
    delete = b("50000000 0e0a 0500 02000000 00000000 01000000"           # inet, REQUEST|ACK
               "06000100 74000000 06000200 63000000 2c000380"
               "10000180 0c000180 08000100 0a000001"
               "18000180 08000300 00000001 0c000180 08000100 0a000002")
    add = b("50000000 0c0a 0506 03000000 00000000 01000000"              # + CREATE|EXCL
            "06000100 74000000 06000200 63000000 2c000380"
            "10000180 0c000180 08000100 0a000002"
            "18000180 08000300 00000001 0c000180 08000100 0a000003")
    end = b("14000000 1100 0100 04000000 00000000 0000000a")
    assert batch == begin + delete + add + end
    assert sorted(sent) == [2, 3] and sent[2].texts == ["10.0.0.1"] and sent[3].verb == "adding"


def _messages(batch: bytes) -> list[tuple[int, int, int, bytes]]:
    out, at = [], 0
    while at < len(batch):
        size, mtype, _flags, seq, _pid = struct.unpack_from("=IHHII", batch, at)
        out.append((mtype, seq, size, batch[at:at + size]))
        at += size
    return out


def test_large_changes_are_split_into_messages_below_64k_deletions_first():
    many = tuple(f"10.{i // 256}.{i % 256}.1 . 6 . 80" for i in range(5000))
    changes = [change("a", V4_CONCAT, True, (), many),
               change("b", "ipv4_addr", True, ("10.0.0.1",), ())]
    batch, sent = build_batch(changes)
    msgs = _messages(batch)
    kinds = [m[0] & 0xff for m in msgs]
    assert kinds[0] == 0x10 and kinds[-1] == 0x11
    assert kinds[1] == ne.NFT_MSG_DELSETELEM and set(kinds[2:-1]) == {ne.NFT_MSG_NEWSETELEM}
    assert len(msgs) - 2 == len(sent) > 3
    assert [m[1] for m in msgs] == list(range(1, len(msgs) + 1))
    assert all(m[2] < 65536 for m in msgs)
    assert sum(len(s.texts) for s in sent.values()) == 5001
    assert [t for seq in sorted(sent) for t in sent[seq].texts][1:] == list(many)


def _error_reply(seq: int, errno: int, offset: int | None) -> bytes:
    tlv = struct.pack("=HHI", 8, nl.NLMSGERR_ATTR_OFFS, offset) if offset is not None else b""
    flags = 0x100 | (nl.NLM_F_ACK_TLVS if tlv else 0)                # NLM_F_CAPPED
    body = struct.pack("=i", -errno) + struct.pack("=IHHII", 80, 0x0a0e, 5, seq, 0) + tlv
    return struct.pack("=IHHII", 16 + len(body), nl.NLMSG_ERROR, flags, seq, 4242) + body


def test_replies_name_the_refused_element(monkeypatch):
    changes = [change("c", "ipv4_addr", True, ("10.0.0.1", "10.0.0.7"), ("10.0.0.2",))]
    _batch, sent = build_batch(changes)
    second = sent[2].offsets[1]                 # offsets within a message, whatever the seq
    data = _error_reply(2, 2, second + 20) + _error_reply(3, 0, None)    # inside 10.0.0.7's end element
    assert ne._replies(data) == [(2, 2, second + 20), (3, 0, None)]
    names, seqs = [], []

    def fake_talk(batch, expected):
        names.append(nft._thread_name())
        seqs.extend(sorted(expected))
        deleting, adding = sorted(expected)
        return {seq: (err, off) for seq, err, off in
                ne._replies(_error_reply(deleting, 2, second + 20) + _error_reply(adding, 0, None))}

    monkeypatch.setattr(ne, "_talk", fake_talk)
    with pytest.raises(KernelError) as exc:
        ne.commit_element_changes(changes)
    text = str(exc.value)
    assert "deleting '10.0.0.7' in set c" in text and "No such file or directory" in text
    assert "nothing was changed" in text
    assert names == [nft.COMMIT_COMM.encode()]                          # committed under its comm
    assert nft._thread_name() != nft.COMMIT_COMM.encode()
    with pytest.raises(KernelError):
        ne.commit_element_changes(changes)
    assert seqs[2] > seqs[0]                                            # each batch its own seqs


def test_missing_answers_and_empty_changes(monkeypatch):
    monkeypatch.setattr(ne, "_talk", lambda batch, expected: {})
    with pytest.raises(KernelError, match="no answer"):
        ne.commit_element_changes([change("c", "ipv4_addr", True, (), ("10.0.0.2",))])
    assert ne.commit_element_changes([change("c", "ipv4_addr", True, (), ())]) == 0.0
    with pytest.raises(ValueError):
        build_batch([change("m", "ipv4_addr", False, (), ("10.0.0.2",))])


def test_goto_verdicts_carry_the_chain_name():
    # libnftnl: NFTA_SET_ELEM_DATA { NFTA_DATA_VERDICT { CODE = htonl(NFT_GOTO = -4), CHAIN = "v_12\0" } }
    (elem,) = encode_element(V4_CONCAT, "10.9.0.5 . 6 . 80 : goto v_12", map_to="verdict")
    data = b("1c000280 18000280 08000100 fffffffc 09000200") + b"v_12\0" + b"\0\0\0"
    assert elem.endswith(data)
    (accept,) = encode_element(V4_CONCAT, "10.9.0.5 . 6 . 80 : accept", map_to="verdict")
    assert accept.endswith(b("10000280 0c000280 08000100 00000001"))
    (deleted,) = encode_element(V4_CONCAT, "10.9.0.5 . 6 . 80", map_to="verdict", with_data=False)
    assert deleted[4:] == elem[4:len(deleted)] and len(deleted) < len(elem)     # the key alone


@pytest.mark.parametrize("verdict", ["goto", "jump", "accept v_1", "return", "goto v 1", "goto " + "x" * 256])
def test_bad_verdicts(verdict):
    with pytest.raises(ValueError):
        encode_element(V4_CONCAT, f"10.9.0.5 . 6 . 80 : {verdict}", map_to="verdict")
