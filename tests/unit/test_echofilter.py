"""The echo filter's program, run by a small classic-BPF interpreter with the kernel's rules (a
load past the end of the datagram drops it), against `routes.added_to` on crafted datagrams.
The real kernel runs it in tests/netns/test_route_echoes.py."""

from __future__ import annotations

import struct
import sys

import pytest

from resolver.net import echofilter, routes

pytestmark = pytest.mark.unit

TABLE, PROTOCOL = 365, 245


def run(prog: list[tuple[int, int, int, int]], pkt: bytes) -> int:
    """What the kernel's classic BPF would return for `pkt` (0: dropped)."""
    a = x = pc = 0
    mem = [0] * 16
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        cls, size, mode = code & 0x07, code & 0x18, code & 0xE0
        if cls == 0x00:  # LD
            if mode == 0x80:
                a = len(pkt)
                continue
            width = {0x00: 4, 0x08: 2, 0x10: 1}[size]
            if k + width > len(pkt):
                return 0  # out of bounds: the kernel drops the datagram
            a = int.from_bytes(pkt[k : k + width], "big")
        elif cls == 0x01:  # LDX M[k]
            x = mem[k]
        elif cls == 0x02:  # ST M[k]
            mem[k] = a
        elif cls == 0x04:  # ALU
            operand = x if code & 0x08 else k
            a = {0x60: a << operand, 0x40: a | operand}[code & 0xF0] & 0xFFFFFFFF
        elif cls == 0x05:  # JMP
            operand = x if code & 0x08 else k
            taken = a == operand if code & 0xF0 == 0x10 else a >= operand
            pc += jt if taken else jf
        elif cls == 0x06:  # RET
            return k
        elif cls == 0x07:  # TAX
            x = a


def message(kind: int, body: bytes) -> bytes:
    length = 16 + len(body)
    return struct.pack("=IHHII", length, kind, 0, 0, 0) + body


def route_body(table: int, protocol: int, first_attr_table: bool = True) -> bytes:
    rtmsg = routes.RTMSG.pack(2, 32, 0, 0, min(table, 252), protocol, 0, 1, 0)
    table_attr = struct.pack("=HHI", 8, routes.RTA_TABLE, table)
    dst = struct.pack("=HH4s", 8, 1, bytes([203, 0, 113, 10]))
    return rtmsg + (table_attr + dst if first_attr_table else dst + table_attr)


def dropped_here(pkt: bytes) -> bool:
    """What the monitor's own check drops."""
    kind = int.from_bytes(pkt[4:6], sys.byteorder)
    return kind == routes.RTM_NEWROUTE and routes.added_to(pkt, 16, len(pkt), TABLE, PROTOCOL)


CASES = {
    "ours": message(routes.RTM_NEWROUTE, route_body(TABLE, PROTOCOL)),
    "our delete": message(routes.RTM_DELROUTE, route_body(TABLE, PROTOCOL)),
    "another protocol": message(routes.RTM_NEWROUTE, route_body(TABLE, 4)),
    "another table": message(routes.RTM_NEWROUTE, route_body(366, PROTOCOL)),
    "the main table": message(routes.RTM_NEWROUTE, route_body(254, PROTOCOL)),
    "table attribute not first": message(
        routes.RTM_NEWROUTE, route_body(TABLE, PROTOCOL, first_attr_table=False)
    ),
    "no attributes": message(routes.RTM_NEWROUTE, route_body(TABLE, PROTOCOL)[:12]),
    "header alone": message(routes.RTM_NEWROUTE, b""),
    "a link": message(16, bytes(16)),
    "two messages": message(routes.RTM_NEWROUTE, route_body(TABLE, PROTOCOL)) * 2,
    "trailing bytes": message(routes.RTM_NEWROUTE, route_body(TABLE, PROTOCOL)) + bytes(4),
}


@pytest.mark.parametrize("name", CASES)
def test_the_filter_drops_exactly_what_the_monitor_drops_and_only_alone(name: str) -> None:
    pkt = CASES[name]
    kept = run(echofilter.program(TABLE, PROTOCOL), pkt) != 0
    alone = int.from_bytes(pkt[0:4], sys.byteorder) == len(pkt)
    assert kept == (not (alone and dropped_here(pkt)))
    assert kept == (name != "ours")
