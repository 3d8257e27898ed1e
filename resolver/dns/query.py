"""A client's query as the handler read it: made once after parsing, it travels with the query
until its reply is sent, and waits in the pending table while its question is in flight."""

from __future__ import annotations

from typing import Any, Protocol

from resolver.dns import messages, wire


class Conn(Protocol):
    """Where a query came from and where its deferred reply goes: a UDP listener or a TCP
    connection."""

    tcp: bool

    def send(self, data: bytes, addr: Any) -> None: ...


class Query:
    """One query: its bytes, who sent it over what, and what `wire.parse_query` found."""

    __slots__ = ("addr", "conn", "data", "edns", "flags", "limit", "qend")

    def __init__(
        self, data: bytes, addr: Any, conn: Conn, qend: int, flags: int, limit: int
    ) -> None:
        self.data = data
        self.addr = addr
        self.conn = conn
        self.qend = qend  # offset just past the question (0: none to echo)
        self.flags = flags  # wire.EDNS, wire.DO_BIT, wire.CD_BIT
        self.edns = bool(flags & wire.EDNS)
        self.limit = limit  # the most the reply may carry (UDP) before it is truncated

    @property
    def client(self) -> str:
        return str(self.addr[0])

    @property
    def do(self) -> bool:
        return bool(self.flags & wire.DO_BIT)

    @property
    def cd(self) -> bool:
        return bool(self.flags & wire.CD_BIT)

    def error(self, rcode: int, tc: bool = False) -> bytes:
        """An answer with no records and `rcode` (messages.error_reply)."""
        return messages.error_reply(self.data, rcode, self.qend, self.edns, self.do, tc=tc)

    def send(self, reply: bytes) -> None:
        self.conn.send(reply, self.addr)
