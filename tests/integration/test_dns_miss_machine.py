"""The miss path makes no asyncio Task and no Future per UDP miss (resolution.py): misses
through Handler.handle against an in-process fake upstream, with every task and every future
made by code under resolver/ counted; the rare TCP retry after TC may make a task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Generator
from pathlib import Path
from typing import Any

import pytest
from dnslib import DNSRecord

from resolver.dns.handler import Handler
from resolver.dns.misses import DEFERRED
from tests.fakeupstream import FakeUpstream
from tests.integration.conftest import ZONE, RecordingHook, StubMatcher, make_config
from tests.unit.test_resolution import Conn

pytestmark = pytest.mark.integration

TESTS = str(Path(__file__).resolve().parents[1])
ASYNCIO = str(Path(asyncio.__file__).parent)  # the fake's TCP server accepts in a task
MISSES = 300
NOERROR, NXDOMAIN = 0, 3


class Made:
    """Every task and every future made on the running loop while this is installed, except
    the tasks of the test harness (the fake upstream's, whose coroutines are in tests/ and in
    asyncio's own server code). The misses are awaited with sleep(0), which makes no future,
    and the fake makes none at no delay, so any future counted is the server's. Compiled
    coroutines have no code object: they are named by their qualname or type, and counted."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.tasks: list[str] = []
        self.futures = 0
        self._create_future = loop.create_future

    def __enter__(self) -> Made:
        def factory(
            loop: asyncio.AbstractEventLoop,
            coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
            **kwargs: Any,
        ) -> asyncio.Task[Any]:
            code = getattr(coro, "cr_code", None)
            if code is None or not code.co_filename.startswith((TESTS, ASYNCIO)):
                name = getattr(coro, "__qualname__", None) or type(coro).__name__
                self.tasks.append(str(name))
            return asyncio.Task(coro, loop=loop, **kwargs)

        def create_future() -> asyncio.Future[Any]:
            self.futures += 1
            return self._create_future()

        self.loop.set_task_factory(factory)
        self.loop.create_future = create_future  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.set_task_factory(None)
        del self.loop.create_future


async def _misses(handler: Handler, conn: Conn, names: list[str], qtype: str = "A") -> None:
    """Misses, 100 at a time (more would overflow the fake's receive buffer)."""
    for start in range(0, len(names), 100):
        before = len(conn.sent)
        batch = names[start : start + 100]
        for i, name in enumerate(batch):
            query = DNSRecord.question(name, qtype)
            query.header.id = i
            data = bytes(query.pack())
            assert handler.handle(data, ("127.0.0.1", 40000 + i), conn) == DEFERRED
        deadline = time.monotonic() + 5.0
        while len(conn.sent) < before + len(batch) and time.monotonic() < deadline:
            await asyncio.sleep(0)  # no future: Made counts every one
        assert len(conn.sent) == before + len(batch)


async def test_udp_misses_make_no_task_and_no_future() -> None:
    fake = await FakeUpstream(ZONE).start()
    handler = Handler(make_config([fake.address]), StubMatcher({}), RecordingHook())
    conn = Conn()
    try:
        with Made(asyncio.get_running_loop()) as made:
            await _misses(handler, conn, [f"n{i}.example.test" for i in range(MISSES)])
            assert handler.counts.values["misses"] == MISSES
            rcodes = {DNSRecord.parse(r).header.rcode for r in conn.sent}
            assert rcodes <= {NOERROR, NXDOMAIN}  # no SERVFAIL: every miss got its answer
            assert made.tasks == [] and made.futures == 0
            # The same code does see a task when there is one: TC, then TCP.
            fake.mode = "tc"
            await _misses(handler, conn, ["big.example.test"], "TXT")
            assert len(made.tasks) == 1 and "query_tcp" in made.tasks[0], made.tasks
            assert made.futures > 0  # and the futures of its TCP connection
    finally:
        await handler.drain(0.5)
        await fake.stop()
