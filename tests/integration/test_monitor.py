"""The monitor in process: the real DnsServer and ControlServer on one loop, the monitor wired to
the handler's observer as the daemon wires it, a client on the Unix socket.

Nothing is built while nobody watches (the handler's `_trace` flag off, `events.event` never
called); the stream carries the events a filter keeps, in order; a watcher that leaves, or a
server that stops, gives the fast path back.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from resolver.control.server import ControlServer
from resolver.dns import events
from resolver.dns.handler import Handler
from tests.integration.conftest import DnsEnv, StubMatcher
from tests.integration.test_control import FakeDaemon

pytestmark = pytest.mark.integration


class Built:
    """events.event, counting the events a handler's tracer builds (its `build`)."""

    def __init__(self, handler: Handler) -> None:
        self.count = 0

        def counting(*args: Any, **kwargs: Any) -> events.Event:
            self.count += 1
            return events.event(*args, **kwargs)

        handler.tracer.build = counting


async def open_monitor(
    path: Path, args: dict[str, Any] | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    request = {"version": 1, "command": "monitor", "args": args or {}}
    writer.write(json.dumps(request).encode() + b"\n")
    first = json.loads(await asyncio.wait_for(reader.readline(), 5))
    assert first == {"version": 1, "ok": True, "result": {"streaming": True}}
    return reader, writer


async def next_event(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = await asyncio.wait_for(reader.readline(), 5)
    assert line.endswith(b"\n"), line
    event: dict[str, Any] = json.loads(line)
    return event


async def until(check: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)


def watching(handler: Handler) -> bool:
    return handler._trace or handler.observer is not None


async def test_nothing_is_built_while_nobody_watches(tmp: Path) -> None:
    async with DnsEnv(matcher=StubMatcher({"node.cdn.test": 7})) as env:
        handler = env.srv.handler
        built = Built(handler)
        control = ControlServer(str(tmp / "c.sock"), FakeDaemon(), None)
        control.monitor.connect(handler)
        await control.start()
        try:
            for name in ["www.example.test"] * 3 + ["alias.example.test"]:  # miss, hit, memo
                await env.ask(name)
            assert built.count == 0 and not watching(handler)
            assert control.monitor.status() == {"watchers": 0, "events": 0, "dropped": 0}

            reader, writer = await open_monitor(tmp / "c.sock")
            assert watching(handler)
            await env.ask("www.example.test")  # a hit: the memo is off while somebody watches
            hit = await next_event(reader)
            assert (hit["name"], hit["source"], hit["row"]) == ("www.example.test", "cache", None)
            await env.ask("alias.example.test")  # cached, tagged through the CNAME chain
            tagged = await next_event(reader)
            assert (tagged["row"], tagged["via"], tagged["pattern"]) == (
                7,
                "node.cdn.test",
                "node.cdn.test",
            )
            assert tagged["addresses"] == ["198.51.100.7"]
            assert built.count == 2

            writer.close()
            await until(lambda: control.monitor.status()["watchers"] == 0)
            assert not watching(handler)
            for _ in range(3):
                await env.ask("www.example.test")
            assert built.count == 2  # nobody watches again: nothing built
            assert control.monitor.status() == {"watchers": 0, "events": 2, "dropped": 0}
        finally:
            await control.stop()


async def test_the_stream_keeps_what_its_filter_asks_for(tmp: Path) -> None:
    async with DnsEnv(matcher=StubMatcher({"node.cdn.test": 7})) as env:
        control = ControlServer(str(tmp / "c.sock"), FakeDaemon(), None)
        control.monitor.connect(env.srv.handler)
        await control.start()
        try:
            tagged, _w1 = await open_monitor(tmp / "c.sock", {"tagged": True})
            named, _w2 = await open_monitor(tmp / "c.sock", {"name": "example.test"})
            other, _w3 = await open_monitor(tmp / "c.sock", {"client": "::1"})
            mine, _w4 = await open_monitor(tmp / "c.sock", {"client": "127.0.0.0/8"})
            await env.ask("www.example.test")
            await env.ask("alias.example.test")
            await env.ask("edge.cdn.test", v6=True)
            assert (await next_event(tagged))["name"] == "alias.example.test"
            assert (await next_event(tagged))["name"] == "edge.cdn.test"  # via node.cdn.test
            assert [(await next_event(named))["name"] for _ in range(2)] == [
                "www.example.test",
                "alias.example.test",
            ]
            v6 = await next_event(other)
            assert (v6["client"], v6["name"], v6["type"]) == ("::1", "edge.cdn.test", "A")
            first = await next_event(mine)
            assert (first["client"], first["source"]) == ("127.0.0.1", env.fake.text)
            assert control.monitor.status()["watchers"] == 4
        finally:
            await control.stop()  # ends every stream: the watchers go, the fast path is back
        assert control.monitor.status()["watchers"] == 0
        assert not watching(env.srv.handler)
        assert await asyncio.wait_for(tagged.read(), 5) == b""  # the connection was closed


async def test_a_stream_that_cannot_write_loses_events_counted(tmp: Path) -> None:
    """The queue is bounded: while the stream task waits for its socket (drain() held here, as
    a client that stopped reading makes it wait), the events beyond the queue are dropped; once
    it can write, the client gets those that fitted and then {"dropped": N}. Every event is
    either sent or counted, and the DNS answers never waited."""
    release = asyncio.Event()

    async def held_drain(writer: asyncio.StreamWriter) -> None:
        await release.wait()
        await writer.drain()

    async with DnsEnv() as env:
        control = ControlServer(str(tmp / "c.sock"), FakeDaemon(), None, stream_drain=held_drain)
        control.monitor.connect(env.srv.handler)
        control.monitor.queue = 5
        await control.start()
        try:
            reader, _writer = await open_monitor(tmp / "c.sock")
            for i in range(40):
                await env.ask(f"n{i}.example.test")  # each answered while the stream is held
            status = control.monitor.status()
            assert status["events"] == 40 and status["dropped"] >= 40 - 5 - 1
            release.set()
            seen, dropped, order = 0, 0, []
            while seen + dropped < 40:
                item = await next_event(reader)
                if "dropped" in item:
                    dropped += item["dropped"]
                    order.append("dropped")
                else:
                    seen += 1
                    order.append(item["name"])
            assert dropped == status["dropped"] and seen == 40 - dropped
            assert order[-1] == "dropped"  # the drops came after the events kept
            assert order[:-1] == [f"n{i}.example.test" for i in range(seen)]
        finally:
            await control.stop()
