"""nf_tables messages packed by hand: batches, tables, chains, rules and the few expressions
resolverd's own table needs, named counters, verdict maps and their elements; and the
attribute readers for what the kernel sends back. Pure: no I/O.

Every function returns a message body or a `Message` (type, flags, body) for a
`netlink.Channel` on NETLINK_NETFILTER. A change is one transaction: `transaction(...)` wraps
messages in BATCH_BEGIN/BATCH_END and asks an ack of each, so the channel reports an errno per
message; the kernel applies all of them or none (an errno on any means none).
"""

from __future__ import annotations

import socket
import struct
from typing import Final

from resolver.net import netlink
from resolver.net.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    Buffer,
    Message,
    asciiz,
    attr,
    nested,
)

NFNL_SUBSYS_NFTABLES: Final = 10
NFNL_MSG_BATCH_BEGIN: Final = 16
NFNL_MSG_BATCH_END: Final = 17
NFT_MSG_NEWTABLE: Final = 0
NFT_MSG_GETTABLE: Final = 1
NFT_MSG_DELTABLE: Final = 2
NFT_MSG_NEWCHAIN: Final = 3
NFT_MSG_GETCHAIN: Final = 4
NFT_MSG_NEWRULE: Final = 6
NFT_MSG_DELRULE: Final = 8
NFT_MSG_NEWSET: Final = 9
NFT_MSG_NEWSETELEM: Final = 12
NFT_MSG_GETSETELEM: Final = 13
NFT_MSG_NEWOBJ: Final = 18
NFT_MSG_GETOBJ: Final = 19
NFT_MSG_DESTROYCHAIN: Final = 27  # Linux 6.3+, as DESTROYSETELEM and DESTROYOBJ
NFT_MSG_DESTROYSETELEM: Final = 30  # Linux 6.3+: no error for an element that is gone already
NFT_MSG_DESTROYOBJ: Final = 31
NLM_F_APPEND: Final = 0x800

NFPROTO_INET: Final = 1
NF_INET_FORWARD: Final = 2
NF_ACCEPT: Final = 1
NFT_RETURN: Final = -5
NFT_GOTO: Final = -4
NFT_REG_VERDICT: Final = 0
NFT_REG_1: Final = 1  # a 16-byte register: an interface name or an IPv6 address fits
NFT_CMP_EQ: Final = 0
NFT_META_OIFNAME: Final = 7
NFT_META_NFPROTO: Final = 15
NFT_PAYLOAD_NETWORK_HEADER: Final = 1
NFT_OBJECT_COUNTER: Final = 1
NFT_DATA_VERDICT: Final = 0xFFFFFF00
NFT_SET_MAP: Final = 0x8
NFT_SET_TIMEOUT: Final = 0x10
# nft's datatypes, so `nft list` prints them
NFT_TYPE_IPADDR: Final = 7
NFT_TYPE_IP6ADDR: Final = 8
IFNAMSIZ: Final = 16

NFTA_TABLE_NAME: Final = 1
NFTA_TABLE_FLAGS: Final = 2
NFTA_TABLE_USERDATA: Final = 6
NFTA_CHAIN_TABLE: Final = 1
NFTA_CHAIN_NAME: Final = 3
NFTA_CHAIN_HOOK: Final = 4
NFTA_CHAIN_POLICY: Final = 5
NFTA_CHAIN_TYPE: Final = 7
NFTA_HOOK_HOOKNUM: Final = 1
NFTA_HOOK_PRIORITY: Final = 2
NFTA_RULE_TABLE: Final = 1
NFTA_RULE_CHAIN: Final = 2
NFTA_RULE_EXPRESSIONS: Final = 4
NFTA_SET_TABLE: Final = 1
NFTA_SET_NAME: Final = 2
NFTA_SET_FLAGS: Final = 3
NFTA_SET_KEY_TYPE: Final = 4
NFTA_SET_KEY_LEN: Final = 5
NFTA_SET_DATA_TYPE: Final = 6
NFTA_SET_ID: Final = 10
NFTA_SET_EXPR: Final = 17
NFTA_SET_ELEM_LIST_TABLE: Final = 1
NFTA_SET_ELEM_LIST_SET: Final = 2
NFTA_SET_ELEM_LIST_ELEMENTS: Final = 3
NFTA_SET_ELEM_KEY: Final = 1
NFTA_SET_ELEM_DATA: Final = 2
NFTA_SET_ELEM_TIMEOUT: Final = 4
NFTA_SET_ELEM_EXPIRATION: Final = 5
NFTA_SET_ELEM_EXPR: Final = 7
NFTA_SET_ELEM_EXPRESSIONS: Final = 11
NFTA_OBJ_TABLE: Final = 1
NFTA_OBJ_NAME: Final = 2
NFTA_OBJ_TYPE: Final = 3
NFTA_OBJ_DATA: Final = 4
NFTA_COUNTER_BYTES: Final = 1
NFTA_COUNTER_PACKETS: Final = 2
NFTA_LIST_ELEM: Final = 1
NFTA_EXPR_NAME: Final = 1
NFTA_EXPR_DATA: Final = 2
NFTA_DATA_VALUE: Final = 1
NFTA_DATA_VERDICT: Final = 2
NFTA_VERDICT_CODE: Final = 1
NFTA_VERDICT_CHAIN: Final = 2
NFTA_META_DREG: Final = 1
NFTA_META_KEY: Final = 2
NFTA_CMP_SREG: Final = 1
NFTA_CMP_OP: Final = 2
NFTA_CMP_DATA: Final = 3
NFTA_PAYLOAD_DREG: Final = 1
NFTA_PAYLOAD_BASE: Final = 2
NFTA_PAYLOAD_OFFSET: Final = 3
NFTA_PAYLOAD_LEN: Final = 4
NFTA_LOOKUP_SET: Final = 1
NFTA_LOOKUP_SREG: Final = 2
NFTA_LOOKUP_DREG: Final = 3
NFTA_IMMEDIATE_DREG: Final = 1
NFTA_IMMEDIATE_DATA: Final = 2
NFTA_OBJREF_IMM_TYPE: Final = 1
NFTA_OBJREF_IMM_NAME: Final = 2
NFTNL_UDATA_TABLE_COMMENT: Final = 0  # nft's userdata TLV for a table's comment

NFGENMSG: Final = struct.Struct("=BBH")
_BE32: Final = struct.Struct(">I")
_BE64: Final = struct.Struct(">Q")


def msg_type(kind: int) -> int:
    return (NFNL_SUBSYS_NFTABLES << 8) | kind


def be32(value: int) -> bytes:
    return _BE32.pack(value & 0xFFFFFFFF)  # verdict codes are negative


def be64(value: int) -> bytes:
    return _BE64.pack(value)


def head(family: int = NFPROTO_INET) -> bytes:
    """The nfgenmsg that opens every nf_tables body."""
    return NFGENMSG.pack(family, 0, 0)


def transaction(messages: list[Message]) -> list[Message]:
    """`messages` as one nf_tables transaction, each asking for an ack."""
    batch = NFGENMSG.pack(socket.AF_UNSPEC, 0, socket.htons(NFNL_SUBSYS_NFTABLES))
    acked = [(kind, flags | NLM_F_ACK, body) for kind, flags, body in messages]
    return [
        (NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, batch),
        *acked,
        (NFNL_MSG_BATCH_END, NLM_F_REQUEST, batch),
    ]


def failed(errors: list[int]) -> int:
    """The errno that sank a transaction (its first), or 0 when it was applied."""
    return next((code for code in errors if code), 0)


# -- objects -----------------------------------------------------------------------------------


def new_table(table: str, comment: str | None = None) -> Message:
    """Create `table` (family inet), or leave it as it is when it exists (its comment too)."""
    body = head() + attr(NFTA_TABLE_NAME, asciiz(table)) + attr(NFTA_TABLE_FLAGS, be32(0))
    if comment is not None:
        text = asciiz(comment)[:255]
        tlv = bytes((NFTNL_UDATA_TABLE_COMMENT, len(text))) + text
        body += attr(NFTA_TABLE_USERDATA, tlv)
    return (msg_type(NFT_MSG_NEWTABLE), NLM_F_REQUEST | NLM_F_CREATE, body)


def del_table(table: str) -> Message:
    return (
        msg_type(NFT_MSG_DELTABLE),
        NLM_F_REQUEST,
        head() + attr(NFTA_TABLE_NAME, asciiz(table)),
    )


def new_chain(table: str, chain: str, hook: tuple[int, int] | None = None) -> Message:
    """A regular chain, or with `hook` (hook number, priority) a filter base chain whose
    policy is accept."""
    body = head() + attr(NFTA_CHAIN_TABLE, asciiz(table)) + attr(NFTA_CHAIN_NAME, asciiz(chain))
    if hook is not None:
        hooknum, priority = hook
        body += nested(
            NFTA_CHAIN_HOOK,
            attr(NFTA_HOOK_HOOKNUM, be32(hooknum)),
            attr(NFTA_HOOK_PRIORITY, be32(priority)),
        )
        body += attr(NFTA_CHAIN_POLICY, be32(NF_ACCEPT))
        body += attr(NFTA_CHAIN_TYPE, asciiz("filter"))
    return (msg_type(NFT_MSG_NEWCHAIN), NLM_F_REQUEST | NLM_F_CREATE, body)


def destroy_chain(table: str, chain: str) -> Message:
    """Delete `chain` and its rules (none if it is gone already); EBUSY while an element or a
    rule still goes to it."""
    body = head() + attr(NFTA_CHAIN_TABLE, asciiz(table)) + attr(NFTA_CHAIN_NAME, asciiz(chain))
    return (msg_type(NFT_MSG_DESTROYCHAIN), NLM_F_REQUEST, body)


def flush_chain(table: str, chain: str) -> Message:
    """Delete every rule of `chain` (a DELRULE that names no rule)."""
    body = head() + attr(NFTA_RULE_TABLE, asciiz(table)) + attr(NFTA_RULE_CHAIN, asciiz(chain))
    return (msg_type(NFT_MSG_DELRULE), NLM_F_REQUEST, body)


def new_rule(table: str, chain: str, *exprs: bytes) -> Message:
    """Append a rule made of `exprs` (each from the expression encoders below)."""
    body = (
        head()
        + attr(NFTA_RULE_TABLE, asciiz(table))
        + attr(NFTA_RULE_CHAIN, asciiz(chain))
        + nested(NFTA_RULE_EXPRESSIONS, *exprs)
    )
    return (msg_type(NFT_MSG_NEWRULE), NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND, body)


def new_counter(table: str, name: str, packets: int = 0, octets: int = 0) -> Message:
    """A named counter starting at the given values; one that exists keeps its own."""
    data = nested(
        NFTA_OBJ_DATA,
        attr(NFTA_COUNTER_BYTES, be64(octets)),
        attr(NFTA_COUNTER_PACKETS, be64(packets)),
    )
    body = (
        head()
        + attr(NFTA_OBJ_TABLE, asciiz(table))
        + attr(NFTA_OBJ_NAME, asciiz(name))
        + attr(NFTA_OBJ_TYPE, be32(NFT_OBJECT_COUNTER))
        + data
    )
    return (msg_type(NFT_MSG_NEWOBJ), NLM_F_REQUEST | NLM_F_CREATE, body)


def destroy_counter(table: str, name: str) -> Message:
    """Delete a named counter (none if it is gone already); EBUSY while a rule counts in it."""
    body = (
        head()
        + attr(NFTA_OBJ_TABLE, asciiz(table))
        + attr(NFTA_OBJ_NAME, asciiz(name))
        + attr(NFTA_OBJ_TYPE, be32(NFT_OBJECT_COUNTER))
    )
    return (msg_type(NFT_MSG_DESTROYOBJ), NLM_F_REQUEST, body)


def new_verdict_map(table: str, name: str, family: int, set_id: int) -> Message:
    """`map NAME { type ipv4_addr|ipv6_addr : verdict; flags timeout; counter; }`: each element
    counts the packets and bytes that found it. The kernel wants an id (NFTA_SET_ID) unique in
    the transaction, even when the set exists and nothing refers to it by id."""
    body = (
        head()
        + attr(NFTA_SET_TABLE, asciiz(table))
        + attr(NFTA_SET_NAME, asciiz(name))
        + attr(NFTA_SET_FLAGS, be32(NFT_SET_MAP | NFT_SET_TIMEOUT))
        + attr(NFTA_SET_KEY_TYPE, be32(NFT_TYPE_IPADDR if family == 4 else NFT_TYPE_IP6ADDR))
        + attr(NFTA_SET_KEY_LEN, be32(4 if family == 4 else 16))
        + attr(NFTA_SET_DATA_TYPE, be32(NFT_DATA_VERDICT))
        + attr(NFTA_SET_ID, be32(set_id))
        + nested(NFTA_SET_EXPR, attr(NFTA_EXPR_NAME, asciiz("counter")), nested(NFTA_EXPR_DATA))
    )
    return (msg_type(NFT_MSG_NEWSET), NLM_F_REQUEST | NLM_F_CREATE, body)


# -- expressions -------------------------------------------------------------------------------


def expr(name: str, *attrs: bytes) -> bytes:
    return nested(
        NFTA_LIST_ELEM, attr(NFTA_EXPR_NAME, asciiz(name)), nested(NFTA_EXPR_DATA, *attrs)
    )


def verdict(code: int, chain: str | None = None) -> bytes:
    """NFTA_DATA_VERDICT: a verdict code, and the chain of a jump or goto."""
    parts = [attr(NFTA_VERDICT_CODE, be32(code))]
    if chain is not None:
        parts.append(attr(NFTA_VERDICT_CHAIN, asciiz(chain)))
    return nested(NFTA_DATA_VERDICT, *parts)


def meta(key: int, dreg: int = NFT_REG_1) -> bytes:
    return expr("meta", attr(NFTA_META_DREG, be32(dreg)), attr(NFTA_META_KEY, be32(key)))


def cmp_eq(data: bytes, sreg: int = NFT_REG_1) -> bytes:
    return expr(
        "cmp",
        attr(NFTA_CMP_SREG, be32(sreg)),
        attr(NFTA_CMP_OP, be32(NFT_CMP_EQ)),
        nested(NFTA_CMP_DATA, attr(NFTA_DATA_VALUE, data)),
    )


def payload(offset: int, length: int, dreg: int = NFT_REG_1) -> bytes:
    """Load `length` bytes of the network header from `offset`."""
    return expr(
        "payload",
        attr(NFTA_PAYLOAD_DREG, be32(dreg)),
        attr(NFTA_PAYLOAD_BASE, be32(NFT_PAYLOAD_NETWORK_HEADER)),
        attr(NFTA_PAYLOAD_OFFSET, be32(offset)),
        attr(NFTA_PAYLOAD_LEN, be32(length)),
    )


def lookup_verdict(set_name: str, sreg: int = NFT_REG_1) -> bytes:
    """Look the register up in a verdict map; the element's verdict is the rule's."""
    return expr(
        "lookup",
        attr(NFTA_LOOKUP_SET, asciiz(set_name)),
        attr(NFTA_LOOKUP_SREG, be32(sreg)),
        attr(NFTA_LOOKUP_DREG, be32(NFT_REG_VERDICT)),
    )


def immediate_verdict(code: int, chain: str | None = None) -> bytes:
    return expr(
        "immediate",
        attr(NFTA_IMMEDIATE_DREG, be32(NFT_REG_VERDICT)),
        nested(NFTA_IMMEDIATE_DATA, verdict(code, chain)),
    )


def counter_ref(name: str) -> bytes:
    """`counter name NAME`: add the packet to a named counter."""
    return expr(
        "objref",
        attr(NFTA_OBJREF_IMM_TYPE, be32(NFT_OBJECT_COUNTER)),
        attr(NFTA_OBJREF_IMM_NAME, asciiz(name)),
    )


def ifname(name: str) -> bytes:
    """An interface name as `meta oifname` loads it: IFNAMSIZ bytes, NUL-padded."""
    raw = name.encode()
    if not 0 < len(raw) < IFNAMSIZ:
        raise ValueError(f"not an interface name: {name!r}")
    return raw.ljust(IFNAMSIZ, b"\0")


# -- set elements ------------------------------------------------------------------------------


def set_elements(
    kind: int, flags: int, table: str, set_name: str, elements: list[bytes]
) -> Message:
    body = (
        head()
        + attr(NFTA_SET_ELEM_LIST_TABLE, asciiz(table))
        + attr(NFTA_SET_ELEM_LIST_SET, asciiz(set_name))
        + nested(NFTA_SET_ELEM_LIST_ELEMENTS, *elements)
    )
    return (msg_type(kind), NLM_F_REQUEST | flags, body)


def verdict_element(key: bytes, timeout_ms: int, code: int, chain: str) -> bytes:
    return nested(
        NFTA_LIST_ELEM,
        nested(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, key)),
        attr(NFTA_SET_ELEM_TIMEOUT, be64(timeout_ms)),
        nested(NFTA_SET_ELEM_DATA, verdict(code, chain)),
    )


def key_element(key: bytes) -> bytes:
    return nested(NFTA_LIST_ELEM, nested(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, key)))


# -- requests and replies ----------------------------------------------------------------------


def get_table(table: str) -> tuple[int, int, bytes]:
    """(type, flags, body) of a GETTABLE for `table`."""
    return msg_type(NFT_MSG_GETTABLE), NLM_F_REQUEST, head() + attr(NFTA_TABLE_NAME, asciiz(table))


def dump_counters(table: str) -> tuple[int, int, bytes]:
    """(type, flags, body) of a GETOBJ dump of `table`'s named counters."""
    body = (
        head() + attr(NFTA_OBJ_TABLE, asciiz(table)) + attr(NFTA_OBJ_TYPE, be32(NFT_OBJECT_COUNTER))
    )
    return msg_type(NFT_MSG_GETOBJ), NLM_F_REQUEST | NLM_F_DUMP, body


def dump_chains(table: str) -> tuple[int, int, bytes]:
    """(type, flags, body) of a GETCHAIN dump (every inet table's: `chain_of` tells them apart)."""
    return (
        msg_type(NFT_MSG_GETCHAIN),
        NLM_F_REQUEST | NLM_F_DUMP,
        head() + attr(NFTA_CHAIN_TABLE, asciiz(table)),
    )


def chain_of(body: Buffer) -> tuple[str, str]:
    """(table, chain) of a GETCHAIN reply body."""
    a = attrs(body, NFGENMSG.size)
    return string(a.get(NFTA_CHAIN_TABLE, b"")), string(a.get(NFTA_CHAIN_NAME, b""))


def dump_elements(table: str, set_name: str) -> tuple[int, int, bytes]:
    """(type, flags, body) of a GETSETELEM dump of one set."""
    body = (
        head()
        + attr(NFTA_SET_ELEM_LIST_TABLE, asciiz(table))
        + attr(NFTA_SET_ELEM_LIST_SET, asciiz(set_name))
    )
    return msg_type(NFT_MSG_GETSETELEM), NLM_F_REQUEST | NLM_F_DUMP, body


def attrs(buf: Buffer, offset: int = 0) -> dict[int, bytes]:
    return netlink.parse_attrs(buf, offset)


def items(buf: Buffer) -> list[bytes]:
    """The payloads of a list attribute's NFTA_LIST_ELEMs, in order."""
    out = []
    offset = 0
    while offset + 4 <= len(buf):
        size, kind = struct.unpack_from("=HH", buf, offset)
        if size < 4 or offset + size > len(buf):
            break
        if kind & netlink.NLA_TYPE_MASK == NFTA_LIST_ELEM:
            out.append(bytes(buf[offset + 4 : offset + size]))
        offset += (size + 3) & ~3
    return out


def counter_values(data: Buffer) -> tuple[int, int] | None:
    """(packets, bytes) of a counter's data (NFTA_OBJ_DATA, or a counter expression's)."""
    a = netlink.parse_attrs(data)
    if NFTA_COUNTER_PACKETS not in a or NFTA_COUNTER_BYTES not in a:
        return None
    return _BE64.unpack(a[NFTA_COUNTER_PACKETS])[0], _BE64.unpack(a[NFTA_COUNTER_BYTES])[0]


def string(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode(errors="replace")


def table_comment(body: Buffer) -> str | None:
    """The comment of a GETTABLE reply body (nft's userdata TLV), if it has one."""
    data = attrs(body, NFGENMSG.size).get(NFTA_TABLE_USERDATA, b"")
    offset = 0
    while offset + 2 <= len(data):
        kind, size = data[offset], data[offset + 1]
        if kind == NFTNL_UDATA_TABLE_COMMENT:
            return string(data[offset + 2 : offset + 2 + size])
        offset += 2 + size
    return None
