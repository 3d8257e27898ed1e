"""One cache miss as a state machine: its upstream attempts, moved on by callbacks, not a task.

A `Resolution` is a small record: the question (its key, the clients waiting for it), the
upstream set being asked, the order and the position in it, and the attempt in flight. What
moves it on is a callback from the event loop: the transport's `done` for a UDP attempt (a
reply, or None from the attempt's `loop.call_later` timer), and, for the rare TCP retry after
TC, the done callback of the one task a miss may still make (`Transport.tcp` is a coroutine:
a TCP exchange is a connection, a write and two reads; after TC only). No Task and no Future
is made on the UDP path. The owner (`misses.Misses`) is called back once with the result
(`finish`); the breakout hook's Pending.then then answers the waiters (misses.py).

The steps, which are what `Forwarder.resolve` and `UpstreamSet.resolve` did as coroutines:
1. the set: `Forwarder.route` (split DNS: a forward zone, the breakout resolvers, the default
   upstreams) and the origin recorded with the answer;
2. the upstreams of the set in order of health, one attempt at a time (upstream.py's module
   docstring says what each rcode means): UDP with EDNS; FORMERR or NOTIMP -> once more
   without OPT; TC -> TCP to the same upstream; a timeout or an error counts as a failure of
   the upstream (`UpstreamSet.failed`, which starts its probe) and the next one is asked; a
   refusal is graded and the next one is asked; a shortage of our own (EMFILE...) ends the set;
3. no answer from the set: from the breakout resolvers, the default upstreams are asked
   (`Forwarder.fallbacks`); else None (the owner answers SERVFAIL);
4. an answer whose chain enters a policy name (`Forwarder.splice_target`) is finished through
   the breakout resolvers (step 2 with the target's question), `Forwarder.splice`.

`cancel` (shutdown: `Misses.drain`) forgets the attempt in flight; `finish` is then not called.
An exception inside a step is a bug: logged, and the miss is finished with None (SERVFAIL)
rather than left hanging.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from resolver.dns import exchange, wire
from resolver.dns.exchange import SHORTAGE, Attempt, Reply
from resolver.dns.forwarder import Fallback, Forwarder, Resolved
from resolver.dns.query import Query
from resolver.dns.tagging import NameMatcher
from resolver.dns.upstream import Upstream, UpstreamSet
from resolver.logsetup import REPEATS

log = logging.getLogger("resolver.dns.handler")

CRASHED: Final = "internal error while resolving; answering SERVFAIL"
# The stages: the first set(s), the splice, over.
ASKING: Final = 0
SPLICING: Final = 1
DONE: Final = 2


class Resolution:
    """One miss in flight; see the module docstring."""

    __slots__ = (
        "at",
        "attempt",
        "cd",
        "charged",
        "client",
        "do",
        "edns",
        "finish",
        "forwarder",
        "key",
        "matcher",
        "order",
        "origin",
        "qname",
        "question",
        "ready",
        "resolved",
        "set",
        "stage",
        "started",
        "target",
        "tcp",
        "up",
        "waiters",
    )

    def __init__(
        self, key: bytes, q: Query, charged: bytes, forwarder: Forwarder, matcher: NameMatcher,
        ready: bool, finish: Callable[[Resolution, Resolved | None], None],
    ) -> None:  # fmt: skip
        self.key = key
        self.waiters = [q]  # the clients waiting (coalesced), answered by the owner
        self.client = q.client  # who asked first: its holds are charged to it
        self.charged = charged  # its budgets (clients.client_key)
        self.forwarder = forwarder
        self.matcher = matcher
        self.ready = ready  # a breakout link was usable when the miss came
        self.finish = finish
        self.do, self.cd = q.do, q.cd
        self.question = key[:-1]  # asked now: the client's, then the splice target's
        self.qname = ""
        self.stage = ASKING
        self.origin: UpstreamSet | Fallback = forwarder.default
        self.set: UpstreamSet = forwarder.default
        self.order: list[Upstream] = []
        self.at = 0
        self.up: Upstream | None = None
        self.edns = True
        self.started = 0.0
        self.attempt: Attempt | None = None
        self.tcp: asyncio.Task[Reply | None] | None = None
        self.resolved: Resolved | None = None  # the first answer, while it is spliced
        self.target = ""

    @property
    def in_flight(self) -> bool:
        return self.stage != DONE

    # -- entry points (callbacks) ------------------------------------------------------------
    def start(self) -> None:
        try:
            question = self.question
            self.qname = wire.read_name(question, 0)
            chosen, self.origin = self.forwarder.route(
                question, self.qname, self.matcher, self.ready
            )
            self._ask(chosen)
        except Exception:
            log.exception(CRASHED, extra=REPEATS)
            self._crashed()

    def cancel(self) -> None:
        """Forget the attempt in flight; `finish` is never called."""
        self.stage = DONE
        self._forget()

    def _udp_done(self, reply: Reply | None) -> None:
        self.attempt = None
        if self.stage == DONE:
            return
        try:
            self._udp_reply(reply)
        except Exception:
            log.exception(CRASHED, extra=REPEATS)
            self._crashed()

    def _tcp_done(self, task: asyncio.Task[Reply | None]) -> None:
        self.tcp = None
        if self.stage == DONE or task.cancelled():
            return
        try:
            try:
                reply = task.result()
            except exchange.TcpFailed:
                self.set.failed(self._up())
                self._next()
                return
            if reply is None:  # an unacceptable reply (counted): the next upstream
                self._next()
            else:
                self._graded(reply)
        except Exception:
            log.exception(CRASHED, extra=REPEATS)
            self._crashed()

    def _resend(self) -> None:
        """After a send that could not be made (an OSError): the next upstream."""
        self.attempt = None
        if self.stage == DONE:
            return
        try:
            self._next()
        except Exception:
            log.exception(CRASHED, extra=REPEATS)
            self._crashed()

    def _give_up_set(self) -> None:
        """After a shortage of our own: the rest of the set would fare no better."""
        self.attempt = None
        if self.stage == DONE:
            return
        try:
            self._set_failed()
        except Exception:
            log.exception(CRASHED, extra=REPEATS)
            self._crashed()

    # -- the steps -----------------------------------------------------------------------------
    def _ask(self, upstreams: UpstreamSet) -> None:
        self.set = upstreams
        self.order = upstreams.ordered()
        self.at = 0
        self._next()

    def _next(self) -> None:
        at = self.at
        if at >= len(self.order):
            self._set_failed()
            return
        self.at = at + 1
        self.up = self.order[at]
        self.edns = True
        self._send()

    def _send(self) -> None:
        up, upstreams = self._up(), self.set
        up.stats["queries"] += 1
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        do = self.do and self.stage == ASKING  # the splice target is asked without DO
        try:
            self.attempt = upstreams.transport.udp(
                up, self.question, do, self.cd, self.edns, upstreams.timeout, self._udp_done
            )
        except OSError as err:
            up.stats["errors"] += 1
            log.warning("cannot query upstream %s: %s", up.text, err.strerror or err, extra=REPEATS)
            if err.errno in SHORTAGE:
                self.attempt = loop.call_soon(self._give_up_set)
                return
            upstreams.failed(up)
            self.attempt = loop.call_soon(self._resend)  # never finished from inside start()

    def _udp_reply(self, reply: Reply | None) -> None:
        up, upstreams = self._up(), self.set
        if reply is None:
            up.stats["timeouts"] += 1
            upstreams.failed(up)
            self._next()
            return
        loop = asyncio.get_running_loop()
        up.answered(loop.time() - self.started)
        if not reply[1].truncated:
            self._graded(reply)
            return
        up.stats["tcp"] += 1
        do = self.do and self.stage == ASKING
        coro = upstreams.transport.tcp(up, self.question, do, self.cd, self.edns, upstreams.timeout)
        self.tcp = loop.create_task(coro)
        self.tcp.add_done_callback(self._tcp_done)

    def _graded(self, reply: Reply) -> None:
        """`up`'s reply by its rcode: an answer, one more try without EDNS, or the next one."""
        up = self._up()
        stats = up.stats
        rcode = reply[1].rcode
        if self.edns and (rcode == wire.FORMERR or rcode == wire.NOTIMP):
            # A server that does not speak EDNS (RFC 6891 7): once more without OPT. The
            # answer is then built per the client's EDNS as usual, without DNSSEC records.
            stats["formerr"] += 1
            stats["no_edns"] += 1
            self.edns = False
            self._send()
            return
        if rcode == wire.NOERROR or rcode == wire.NXDOMAIN or 5 < rcode <= 15:
            # Answers, and the rare rcodes 6-15, handed on as they are (no OPT needed for them).
            up.graded(True, self.set.clock())
            stats["answers"] += 1
            self._answered(reply, up)
            return
        if rcode == wire.SERVFAIL:
            stats["servfail"] += 1
        elif rcode == wire.REFUSED:
            stats["refused"] += 1
        elif rcode > 15:
            stats["extended"] += 1
            log.debug("upstream %s: extended rcode %d, not handed on", up.text, rcode)
        else:
            stats["formerr"] += 1
        up.graded(False, self.set.clock())
        self._next()

    def _answered(self, reply: Reply, up: Upstream) -> None:
        forwarder = self.forwarder
        if self.stage == SPLICING:
            first = self.resolved
            assert first is not None
            self._done(forwarder.splice(first, self.qname, self.target, self.set, (reply, up)))
            return
        data, layout = reply
        resolved = Resolved(data, layout, up, self.origin)
        target = forwarder.splice_target(
            resolved, self.set, self.question, self.qname, self.do, self.matcher, self.ready
        )
        breakout = forwarder.breakout
        if target is None or breakout is None:
            self._done(resolved)
            return
        self.stage, self.resolved, self.target = SPLICING, resolved, target
        self.question = wire.encode_name(target) + self.question[-4:]
        self._ask(breakout)

    def _set_failed(self) -> None:
        forwarder = self.forwarder
        if self.stage == SPLICING:
            first = self.resolved
            assert first is not None
            self._done(forwarder.splice(first, self.qname, self.target, self.set, None))
            return
        breakout = self.set
        if breakout is forwarder.breakout:
            forwarder.fallbacks += 1
            log.debug(
                "no breakout resolver answered for %s: asking the default upstreams", self.qname
            )
            self.origin = Fallback(breakout)
            self._ask(forwarder.default)
            return
        self._done(None)

    def _done(self, resolved: Resolved | None) -> None:
        self.stage = DONE
        self.finish(self, resolved)

    def _crashed(self) -> None:
        """After a bug in a step (logged by the caller): SERVFAIL rather than a hanging miss."""
        self._forget()
        if self.stage != DONE:
            self._done(None)

    def _forget(self) -> None:
        attempt, task = self.attempt, self.tcp
        self.attempt = self.tcp = None
        if attempt is not None:
            attempt.cancel()
        if task is not None:
            task.cancel()

    def _up(self) -> Upstream:
        up = self.up
        assert up is not None
        return up
