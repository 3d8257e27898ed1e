"""Upstream UDP sockets: a few connected sockets per upstream, each short-lived, shared by queries.

Opening, watching and closing a socket per query cost about 15% of a miss's CPU. Here each
socket is `connect()`ed to one upstream (the kernel picks a random ephemeral source port at
that moment and, being connected, drops every datagram that is not from the upstream's address
and port), carries at most `MAX_QUERIES` queries, is used for new queries for at most
`MAX_AGE` seconds after it was opened, and is closed when it is past both that and its last
outstanding query. A socket is watched with `loop.add_reader` and let go through
`fdwatch.stop_reading` (under uvloop `remove_reader` returns None where typeshed says bool,
which compiled code would reject). What is queued on it is read with one recvmmsg per wake-up
(`mmsg.Datagrams`: replies do queue together), or one recv per datagram where that call
cannot be made.

A reply is matched on (socket, id, question): ids are drawn from the CSPRNG and never repeat on
one socket, and a socket never has two queries for the same question outstanding (a second one
opens a new socket), so an off-path spoofer must guess the port, the id and the question as
before; the arithmetic is in README.md, "Upstream sockets and spoofing". Datagrams that do not
match are counted in the upstream's stats (`dropped`, `malformed`), as before; datagrams from
another source no longer reach us at all (the kernel drops them for a connected socket).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Final

from resolver.dns import exchange, messages, replies, wire
from resolver.dns.exchange import Peer, Reply
from resolver.dns.mmsg import UNUSABLE, Datagrams
from resolver.fdwatch import stop_reading

log = logging.getLogger(__name__)

MAX_QUERIES: Final = 16  # queries one socket carries
MAX_AGE: Final = 0.15  # seconds after its opening during which a socket takes new queries

Done = Callable[[Reply | None], None]


class Query:
    """One query outstanding on a socket (an exchange.Attempt)."""

    __slots__ = ("done", "qid", "question", "sock", "timer")

    def __init__(self, sock: Sock, qid: int, question: bytes, done: Done) -> None:
        self.sock: Sock | None = sock
        self.qid = qid
        self.question = question
        self.done = done
        self.timer: asyncio.Handle | None = None

    def cancel(self) -> None:
        sock = self.sock
        if sock is not None:
            sock.forget(self)

    def expire(self) -> None:
        """The timeout (or a send that failed): `done(None)`."""
        sock = self.sock
        if sock is not None:
            self.timer = None
            sock.forget(self)
            self.done(None)


class Sock:
    """One connected UDP socket and the queries outstanding on it."""

    __slots__ = (
        "closed",
        "fd",
        "ids",
        "outstanding",
        "pool",
        "questions",
        "retired",
        "sock",
        "timer",
        "until",
        "up",
    )

    def __init__(self, pool: Sockets, up: Peer, now: float) -> None:
        self.pool = pool
        self.up = up
        self.until = now + pool.max_age
        self.ids: set[int] = set()  # every id this socket carried
        self.outstanding: dict[int, Query] = {}
        self.questions: set[bytes] = set()  # those of the outstanding queries
        self.retired = False
        self.closed = False
        sock = socket.socket(up.family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            sock.connect((up.host, up.port))  # binds a random ephemeral port now
            pool.loop.add_reader(sock.fileno(), self.readable)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.fd = sock.fileno()
        self.timer = pool.loop.call_at(self.until, self.retire)

    def usable(self, question: bytes, now: float) -> bool:
        return (
            not self.retired
            and len(self.ids) < self.pool.max_queries
            and now < self.until
            and question not in self.questions
        )

    def send(
        self, question: bytes, do: bool, cd: bool, edns: bool, timeout: float, done: Done
    ) -> Query:
        ids, new_id = self.ids, exchange.new_id
        qid = new_id()
        while qid in ids:
            qid = new_id()
        ids.add(qid)
        query = Query(self, qid, question, done)
        self.outstanding[qid] = query
        self.questions.add(question)
        loop = self.pool.loop
        try:
            self.sock.send(messages.build_query(qid, question, do, cd, edns))
        except OSError as err:
            log.debug("upstream %s: send failed: %s", self.up.text, err)
            query.timer = loop.call_soon(query.expire)
        else:
            query.timer = loop.call_later(timeout, query.expire)
        return query

    def forget(self, query: Query) -> None:
        """`query` is over (answered, timed out or cancelled)."""
        query.sock = None
        timer = query.timer
        if timer is not None:
            timer.cancel()
            query.timer = None
        del self.outstanding[query.qid]
        self.questions.discard(query.question)
        if self.retired and not self.outstanding:
            self.close()

    def readable(self) -> None:
        pool = self.pool
        datagrams = pool.datagrams
        while not self.closed:
            try:
                batch = datagrams.receive(self.fd) if datagrams else [self.sock.recv(65535)]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # e.g. an ICMP error reported on the connected socket
                if datagrams is not None and err.errno in UNUSABLE:  # and never will be
                    log.warning("upstream sockets: recvmmsg cannot be used here (%s)", err)
                    pool.datagrams = datagrams = None  # one recv per datagram from now
                    continue
                self.up.stats["errors"] += 1
                log.debug("upstream %s: %s", self.up.text, err)
                return
            for data in batch:
                if self.closed:  # its last query is over: the rest goes with the socket
                    return
                self._take(data)
            if datagrams is not None and len(batch) < datagrams.size:
                return  # all there was

    def _take(self, data: bytes) -> None:
        """One datagram: the reply to one of our queries, or dropped (counted)."""
        up = self.up
        stats = up.stats
        query = self.outstanding.get((data[0] << 8) | data[1]) if len(data) >= 2 else None
        if query is None:  # no query of ours has that id (or it is over)
            stats["dropped"] += 1
            return
        try:
            layout = replies.accept_reply(data, query.qid, query.question)
        except wire.WireError as err:
            stats["malformed"] += 1
            log.debug("upstream %s: malformed reply dropped: %s", up.text, err)
            return
        if layout is None:
            stats["dropped"] += 1
            return
        self.forget(query)
        query.done(exchange.cut(up, data, layout))

    def retire(self) -> None:
        """No new queries; closed once the outstanding ones are over."""
        if self.retired:
            return
        self.retired = True
        pool = self.pool
        if pool.current.get(self.up) is self:
            del pool.current[self.up]
        if not self.outstanding:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.retired = True
        self.timer.cancel()
        pool = self.pool
        pool.open.discard(self)
        if pool.current.get(self.up) is self:
            del pool.current[self.up]
        stop_reading(pool.loop, self.fd)
        self.sock.close()


class Sockets:
    """The real exchange.Transport: UDP from the pool above, TCP from `exchange.query_tcp`.

    Bound to the running loop on first use (the Forwarder is built before the loop runs in
    some tests)."""

    def __init__(
        self, max_queries: int = MAX_QUERIES, max_age: float = MAX_AGE, batched: bool = True
    ) -> None:
        self.max_queries = max_queries
        self.max_age = max_age
        # Replies read in batches (recvmmsg, mmsg.Datagrams), or one recv each where the C
        # library cannot be reached that way (or a test asks for it).
        self.datagrams = Datagrams.open() if batched else None
        self.current: dict[Peer, Sock] = {}  # the socket new queries to an upstream go out on
        self.open: set[Sock] = set()  # every socket not closed yet, retired ones included
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def udp(
        self, up: Peer, question: bytes, do: bool, cd: bool, edns: bool, timeout: float,
        done: Done,
    ) -> Query | asyncio.Handle:  # fmt: skip
        loop = self.loop
        now = loop.time()
        sock = self.current.get(up)
        if sock is None or not sock.usable(question, now):
            if sock is not None:
                sock.retire()
            try:
                sock = Sock(self, up, now)
            except OSError as err:
                if err.errno in exchange.SHORTAGE:
                    raise
                # No route, no address (a breakout link gone...): as a send that failed.
                log.debug("upstream %s: cannot connect: %s", up.text, err)
                return loop.call_soon(done, None)
            self.open.add(sock)
            self.current[up] = sock
        return sock.send(question, do, cd, edns, timeout, done)

    def tcp(
        self, up: Peer, question: bytes, do: bool, cd: bool, edns: bool, timeout: float
    ) -> Coroutine[Any, Any, Reply | None]:
        return exchange.query_tcp(up, question, do, cd, edns, timeout)

    def close(self) -> None:
        for sock in list(self.open):
            for query in list(sock.outstanding.values()):
                query.cancel()
            sock.close()
        self.current.clear()
        self._loop = None
