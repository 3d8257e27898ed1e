"""The messages resolverd writes itself: the answers it makes without an upstream (errors, and
the header of a minimal TC answer), its OPT record, and its queries to upstreams.

Each is built from the client's bytes or ours, never parsed again (`wire` checks what comes in).
"""

from __future__ import annotations

import struct
from typing import Final

from resolver.dns.wire import CD, QR, RA, RD, TC

_HEADER: Final = struct.Struct("!HHHHHH")
_U16: Final = struct.Struct("!H")


def error_reply(
    data: bytes, rcode: int, qend: int, edns: bool, do: bool, ra: bool = True, tc: bool = False
) -> bytes:
    """An answer with no records: the query's id, opcode, RD and CD, RA (we offer recursion;
    `ra` false for a client the ACL refuses), its question when `qend` says it is
    well-formed, and our OPT (carrying the upper rcode bits) for an EDNS client. With `tc`
    the TC bit is set: "ask again over TCP"."""
    flags = QR | ((data[2] << 8 | data[3]) & (0x7800 | RD | CD)) | (rcode & 0xF)
    if ra:
        flags |= RA
    if tc:
        flags |= TC
    header = data[:2] + _U16.pack(flags)
    question = data[12:qend] if qend else b""
    counts = b"\0\x01" if qend else b"\0\0"
    if edns:
        return header + counts + b"\0\0\0\0\0\x01" + question + opt_record(do, rcode >> 4)
    return header + counts + b"\0\0\0\0\0\0" + question


def opt_record(do: bool, ext_rcode: int = 0) -> bytes:
    """Our OPT record: root owner, payload size 1232, version 0, DO as given, no options."""
    return b"\0\0\x29\x04\xd0" + bytes((ext_rcode & 0xFF, 0, 0x80 if do else 0, 0, 0, 0))


def truncated_header(head: bytes, edns: bool) -> bytes:
    """Header bytes 2-12 of a minimal TC answer made from the header bytes 2-12 `head` of the
    full one: TC set, one question, no records but (for an EDNS client) our OPT. The caller
    puts the client's id in front and the question and OPT after it."""
    return bytes((head[0] | 0x02, head[1])) + b"\0\x01\0\0\0\0" + (b"\0\x01" if edns else b"\0\0")


# -- queries to upstreams ---------------------------------------------------------------------


def build_query(qid: int, question: bytes, do: bool, cd: bool, edns: bool = True) -> bytes:
    """Our upstream query: RD, CD as the client set it, EDNS 1232 with DO as the client set it
    (without `edns`: no OPT at all, for a server that rejects EDNS).

    `question` is the question section (name + type + class) exactly as it goes on the wire.
    """
    flags = RD | CD if cd else RD
    if not edns:
        return _HEADER.pack(qid, flags, 1, 0, 0, 0) + question
    return _HEADER.pack(qid, flags, 1, 0, 0, 1) + question + opt_record(do)
