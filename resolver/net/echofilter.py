"""A socket filter that drops, inside the kernel, the echoes of the routes resolverd adds.

`links.Monitor` listens to the route groups (the main table's changes, other owners' routes in
our table, our routes deleted by someone else), so every host route the breakout installs
comes back to it as an RTM_NEWROUTE notification: one datagram, one wake-up, one recv per
route. `routes.added_to` recognises those echoes and drops them unparsed. The classic BPF
program here drops the same messages before they are queued on the socket: no wake-up, no
system call, and no room taken in the socket's buffer, so a burst of installs (a restart
putting thousands of holds back) can no longer overrun it.

It drops a datagram only when it holds one message, an RTM_NEWROUTE of `protocol` whose first
attribute is RTA_TABLE with the value `table`: exactly what `added_to(table, protocol)` drops.
Everything else passes, short messages included (a load past the end would drop). The monitor
keeps its own check, so a filter that cannot be attached changes what is read, never what is
handled. After a reload that changes the table or protocol, the monitor attaches a new filter
before it reads again (`Monitor.read`).
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

from resolver.net.routes import RTA_TABLE, RTM_NEWROUTE, RTMSG

SO_ATTACH_FILTER = 26
_INSN = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k

# Classic BPF opcodes (linux/bpf_common.h).
_LD, _LDX, _ST, _ALU, _JMP, _RET, _MISC = 0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x07
_W, _H, _B = 0x00, 0x08, 0x10
_ABS, _MEM, _LEN = 0x20, 0x60, 0x80
_K, _X = 0x00, 0x08
_JEQ, _JGE = 0x10, 0x30
_LSH, _OR = 0x60, 0x40
_TAX = 0x00
_KEEP = 0xFFFFFFFF  # a return value: keep the whole datagram

_PROTOCOL_AT = 16 + 5  # nlmsghdr, then rtmsg's protocol byte (see routes.RTMSG)
_ATTR_AT = 16 + RTMSG.size  # the first attribute
_MIN_LEN = _ATTR_AT + 8  # room for a u32 attribute


def _as_loaded(fmt: str, *values: int) -> int:
    """A host-order field as an absolute BPF load reads it (in network order)."""
    return int.from_bytes(struct.pack("=" + fmt, *values), "big")


def program(table: int, protocol: int) -> list[tuple[int, int, int, int]]:
    """The filter's instructions (code, jump if true, jump if false, k); see the docstring."""
    keep = 20  # the index of the last instruction; a jump's offset counts from the next one
    high, low = (1, 0) if sys.byteorder == "little" else (2, 3)  # nlmsg_len's low 16 bits
    return [
        (_LD | _B | _ABS, 0, 0, high),  # 0: nlmsg_len (a notification is far below 64 KiB)
        (_ALU | _LSH | _K, 0, 0, 8),
        (_ST, 0, 0, 0),
        (_LD | _B | _ABS, 0, 0, low),
        (_LDX | _W | _MEM, 0, 0, 0),
        (_ALU | _OR | _X, 0, 0, 0),
        (_MISC | _TAX, 0, 0, 0),
        (_LD | _W | _LEN, 0, 0, 0),  # 7: the datagram's length
        (_JMP | _JEQ | _X, 0, keep - 9, 0),  # 8: one message alone
        (_LD | _H | _ABS, 0, 0, 4),  # 9: nlmsg_type
        (_JMP | _JEQ | _K, 0, keep - 11, _as_loaded("H", RTM_NEWROUTE)),
        (_LD | _W | _LEN, 0, 0, 0),  # 11
        (_JMP | _JGE | _K, 0, keep - 13, _MIN_LEN),  # 12: long enough for what follows
        (_LD | _B | _ABS, 0, 0, _PROTOCOL_AT),  # 13
        (_JMP | _JEQ | _K, 0, keep - 15, protocol),
        (_LD | _W | _ABS, 0, 0, _ATTR_AT),  # 15: the first attribute's length and type
        (_JMP | _JEQ | _K, 0, keep - 17, _as_loaded("HH", 8, RTA_TABLE)),
        (_LD | _W | _ABS, 0, 0, _ATTR_AT + 4),  # 17: its value
        (_JMP | _JEQ | _K, 0, keep - 19, _as_loaded("I", table)),
        (_RET | _K, 0, 0, 0),  # 19: ours: dropped
        (_RET | _K, 0, 0, _KEEP),  # 20: anything else
    ]


def attach(sock: socket.socket, table: int, protocol: int) -> None:
    """Replace `sock`'s filter with `program(table, protocol)`; OSError when refused."""
    code = b"".join(_INSN.pack(*insn) for insn in program(table, protocol))
    insns = ctypes.create_string_buffer(code, len(code))  # the kernel copies it during the call
    fprog = struct.pack("@HP", len(code) // _INSN.size, ctypes.addressof(insns))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
