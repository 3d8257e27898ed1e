"""The miss state machine (resolution.py) through Handler.handle, with a scripted
exchange.Transport injected: no socket, no timer; replies come on the next turn of the loop."""

from __future__ import annotations

import asyncio
import errno
import logging
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from policy.matcher import Matcher
from resolver.config import Config
from resolver.dns import exchange, replies, wire
from resolver.dns.handler import Handler
from resolver.dns.misses import DEFERRED
from resolver.hooks import NullHook

pytestmark = pytest.mark.unit

UP1, UP2 = ("192.0.2.1", 53), ("192.0.2.2", 53)
QID = 0x4242
A_RECORD = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x01\x2c\x00\x04\xc0\x00\x02\x0a"

# What an upstream does with one attempt: a reply's rcode, "timeout", "hang" (never
# answers), or an exception raised by the transport at once.
Action = int | str | BaseException


class Conn:
    tcp = False

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes, addr: Any) -> None:
        self.sent.append(data)


class Script:
    """exchange.Transport: each attempt takes the next action of its upstream."""

    def __init__(self, actions: dict[str, list[Action]]) -> None:
        self.actions = actions
        self.asked: list[tuple[str, bool]] = []  # (upstream host, edns)
        self.cancelled = 0
        self.tcp_closed = False

    def udp(
        self, up: exchange.Peer, question: bytes, do: bool, cd: bool, edns: bool,
        timeout: float, done: Callable[[exchange.Reply | None], None],
    ) -> exchange.Attempt:  # fmt: skip
        self.asked.append((up.host, edns))
        action = self.actions[up.host].pop(0)
        if isinstance(action, BaseException):
            raise action
        loop = asyncio.get_running_loop()
        if action == "hang":
            return Hang(self)
        if action == "timeout":
            return loop.call_soon(done, None)
        if action == "tc":
            data = struct.pack("!HHHHHH", QID, 0x8380, 1, 0, 0, 0) + question
            layout = replies.accept_reply(data, QID, question)
            assert layout is not None and layout.truncated
            return loop.call_soon(done, (data, layout))
        assert isinstance(action, int)
        count = 1 if action == wire.NOERROR else 0
        data = struct.pack("!HHHHHH", QID, 0x8180 | action, 1, count, 0, 0) + question
        data += A_RECORD * count
        layout = replies.accept_reply(data, QID, question)
        assert layout is not None
        return loop.call_soon(done, exchange.cut(up, data, layout))

    def tcp(
        self, up: exchange.Peer, question: bytes, do: bool, cd: bool, edns: bool, timeout: float
    ) -> Coroutine[Any, Any, exchange.Reply | None]:
        self.asked.append((up.host, edns))
        return self._tcp_never_answers()

    async def _tcp_never_answers(self) -> exchange.Reply | None:
        try:
            await asyncio.Event().wait()
        finally:
            self.tcp_closed = True
        return None

    def close(self) -> None:
        pass


class Hang:
    def __init__(self, script: Script) -> None:
        self.script = script

    def cancel(self) -> None:
        self.script.cancelled += 1


def _handler(script: Script) -> Handler:
    config = Config(upstreams=(UP1, UP2), listen=(("127.0.0.1", 53),))
    return Handler(config, Matcher(()), NullHook(), transport=script)


def _query(name: str = "www.example.test") -> bytes:
    return struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + wire.encode_name(name) + b"\0\1\0\1"


async def _turns(n: int = 10) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def _left(handler: Handler) -> None:
    misses = handler.misses
    assert not misses.pending and not misses.resolving and not misses.budgets.in_flight


async def test_formerr_asks_again_without_edns_then_answers() -> None:
    script = Script({UP1[0]: [wire.FORMERR, wire.NOERROR], UP2[0]: []})
    handler, conn = _handler(script), Conn()
    assert handler.handle(_query(), ("127.0.0.1", 5000), conn) == DEFERRED
    assert conn.sent == []  # never answered from inside handle()
    await _turns()
    assert [r[3] & 0xF for r in conn.sent] == [wire.NOERROR]
    assert script.asked == [(UP1[0], True), (UP1[0], False)]
    stats = handler.forwarder.default.upstreams[0].stats
    assert stats["formerr"] == stats["no_edns"] == stats["answers"] == 1
    _left(handler)


async def test_timeout_and_servfail_move_to_the_next_upstream() -> None:
    script = Script({UP1[0]: ["timeout", wire.SERVFAIL], UP2[0]: [wire.NOERROR, wire.NOERROR]})
    handler, conn = _handler(script), Conn()
    handler.handle(_query("a.example.test"), ("127.0.0.1", 5000), conn)
    await _turns()
    up1 = handler.forwarder.default.upstreams[0]
    assert up1.stats["timeouts"] == 1 and up1.failures == 1
    handler.handle(_query("b.example.test"), ("127.0.0.1", 5000), conn)
    await _turns()
    assert [r[3] & 0xF for r in conn.sent] == [wire.NOERROR, wire.NOERROR]
    # The second miss: UP2 first (UP1 has a failure), so UP1's SERVFAIL is never asked for.
    assert script.asked == [(UP1[0], True), (UP2[0], True), (UP2[0], True)]
    _left(handler)


async def test_a_shortage_of_our_own_ends_the_set_with_servfail() -> None:
    shortage = OSError(errno.EMFILE, "Too many open files")
    script = Script({UP1[0]: [shortage], UP2[0]: [wire.NOERROR]})
    handler, conn = _handler(script), Conn()
    assert handler.handle(_query(), ("127.0.0.1", 5000), conn) == DEFERRED
    assert conn.sent == []
    await _turns()
    assert [r[3] & 0xF for r in conn.sent] == [wire.SERVFAIL]
    assert script.asked == [(UP1[0], True)]  # the next upstream would fare no better
    _left(handler)


async def test_a_bug_in_a_step_is_logged_and_answered_servfail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = Script({UP1[0]: [RuntimeError("boom")], UP2[0]: []})
    handler, conn = _handler(script), Conn()
    with caplog.at_level(logging.ERROR, logger="resolver"):
        handler.handle(_query(), ("127.0.0.1", 5000), conn)
        await _turns()
    assert [r[3] & 0xF for r in conn.sent] == [wire.SERVFAIL]
    assert any("internal error while resolving" in r.getMessage() for r in caplog.records)
    _left(handler)


async def test_coalesced_waiters_share_one_attempt() -> None:
    script = Script({UP1[0]: [wire.NOERROR], UP2[0]: []})
    handler, conn = _handler(script), Conn()
    for port in (5000, 5001, 5002):
        assert handler.handle(_query(), ("127.0.0.1", port), conn) == DEFERRED
    await _turns()
    assert len(conn.sent) == 3 and len(script.asked) == 1
    _left(handler)


async def test_drain_cancels_what_is_in_flight_and_counts_it() -> None:
    script = Script({UP1[0]: ["hang", "hang"], UP2[0]: []})
    handler, conn = _handler(script), Conn()
    handler.handle(_query("a.example.test"), ("127.0.0.1", 5000), conn)
    handler.handle(_query("b.example.test"), ("127.0.0.1", 5000), conn)
    assert handler.misses.resolving == 2
    assert await handler.drain(0.0) == 2
    assert script.cancelled == 2 and conn.sent == []
    _left(handler)
    assert handler.handle(_query("c.example.test"), ("127.0.0.1", 5000), conn) is None


async def test_drain_cancels_a_tcp_retry_and_waits_for_it() -> None:
    script = Script({UP1[0]: ["tc"], UP2[0]: []})
    handler, conn = _handler(script), Conn()
    handler.handle(_query(), ("127.0.0.1", 5000), conn)
    await _turns()
    assert script.asked == [(UP1[0], True), (UP1[0], True)]  # UDP, then TCP (a task)
    assert handler.misses.forwarder.default.upstreams[0].stats["tcp"] == 1
    assert handler.misses.resolving == 1 and not script.tcp_closed
    assert await handler.drain(0.0) == 1
    assert script.tcp_closed  # cancelled, and drain waited for it to finish
    assert conn.sent == []
    _left(handler)
