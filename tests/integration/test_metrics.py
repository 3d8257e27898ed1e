"""The metrics HTTP server on loopback: /metrics, 404s, bounded and timed request reading."""

from __future__ import annotations

import asyncio
import logging
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable

import pytest

from resolver.config import BreakoutConfig
from resolver.metrics import CONTENT_TYPE, Metric, MetricsServer, render
from resolver.metricset import collect
from tests.fakeupstream import FakeUpstream
from tests.integration.conftest import DnsEnv, RecordingHook, StubMatcher
from tests.unit.test_metrics import status_tree

pytestmark = pytest.mark.integration

METRICS = [
    Metric("resolverd_queries", "counter", "Queries.", [({"result": "noerror"}, 5)]),
    Metric("resolverd_cache_entries", "gauge", "Entries.", [({}, 2)]),
]


def serve(
    test: Callable[[MetricsServer], Awaitable[None]],
    collect: Callable[[], Iterable[Metric]] = lambda: METRICS,
    **options: float,
) -> None:
    async def main() -> None:
        server = MetricsServer(("127.0.0.1", 0), collect, **options)  # type: ignore[arg-type]
        await server.start()
        try:
            await test(server)
        finally:
            await server.stop()

    asyncio.run(main())


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        data = await asyncio.wait_for(reader.read(), 5)  # the server closes after its response
    except ConnectionResetError:  # closed with our request unread: nothing was answered
        data = b""
    writer.close()
    return data


def split(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


def test_get_metrics() -> None:
    async def check(server: MetricsServer) -> None:
        status, headers, body = split(
            await exchange(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        )
        assert status == "HTTP/1.1 200 OK"
        assert headers["content-type"] == CONTENT_TYPE
        assert headers["content-length"] == str(len(body))
        assert headers["connection"] == "close"
        assert body.decode() == render(METRICS)
        assert 'resolverd_queries_total{result="noerror"} 5\n' in body.decode()

    serve(check)


def test_urllib_client_and_fresh_values_per_scrape() -> None:
    scrapes: list[int] = []

    def collect() -> list[Metric]:
        scrapes.append(1)
        return [Metric("scrapes", "counter", "Scrapes.", [({}, len(scrapes))])]

    async def check(server: MetricsServer) -> None:
        url = f"http://127.0.0.1:{server.port}/metrics?x=1"
        for expected in (1, 2):
            with await asyncio.to_thread(urllib.request.urlopen, url, timeout=5) as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == CONTENT_TYPE
                assert f"scrapes_total {expected}\n" in response.read().decode()

    serve(check, collect)


def test_head_has_no_body() -> None:
    async def check(server: MetricsServer) -> None:
        status, headers, body = split(
            await exchange(server.port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        )
        assert status == "HTTP/1.1 200 OK"
        assert int(headers["content-length"]) == len(render(METRICS).encode())
        assert body == b""

    serve(check)


@pytest.mark.parametrize(
    "request_line",
    [b"GET / HTTP/1.1", b"GET /metricsx HTTP/1.1", b"POST /metrics HTTP/1.1", b"GET /x HTTP/1.0"],
)
def test_anything_else_is_404(request_line: bytes) -> None:
    async def check(server: MetricsServer) -> None:
        status, _, body = split(await exchange(server.port, request_line + b"\r\n\r\n"))
        assert status == "HTTP/1.1 404 Not Found"
        assert b"resolverd" not in body

    serve(check)


def test_not_http_is_400() -> None:
    async def check(server: MetricsServer) -> None:
        status, _, _ = split(await exchange(server.port, b"hello there\n\n"))
        assert status == "HTTP/1.1 400 Bad Request"

    serve(check)


def test_oversized_request_head_is_dropped_unanswered() -> None:
    async def check(server: MetricsServer) -> None:
        request = b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20_000 + b"\r\n\r\n"
        assert await exchange(server.port, request) == b""
        many = b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 2_000 + b"\r\n"
        assert await exchange(server.port, many) == b""
        # The server still answers afterwards.
        status, _, _ = split(await exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n"))
        assert status == "HTTP/1.1 200 OK"

    serve(check)


def test_idle_connections_of_one_client_cannot_shut_the_scraper_out() -> None:
    """One client (127.0.0.9) opens every connection the server takes and sends nothing: it
    gets a quarter of them, the rest are closed at once, and a scrape from another address
    is answered meanwhile."""

    async def check(server: MetricsServer) -> None:
        idle = [
            await asyncio.open_connection("127.0.0.1", server.port, local_addr=("127.0.0.9", 0))
            for _ in range(server.max_connections)
        ]
        try:
            share = server.max_connections // 4
            for i, (reader, _) in enumerate(idle):
                try:
                    data = await asyncio.wait_for(reader.read(), 0.3)
                except TimeoutError:
                    data = None  # still open, waiting for its request
                except ConnectionResetError:
                    data = b""
                assert (data is None) == (i < share), i
            response = await exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert response.startswith(b"HTTP/1.1 200 OK\r\n"), response
        finally:
            for _, writer in idle:
                writer.close()

    serve(check)


def test_slow_client_is_cut_off() -> None:
    async def check(server: MetricsServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\n")  # and never the blank line
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()

    serve(check, head_timeout=0.2)


def test_collect_failure_is_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> list[Metric]:
        raise RuntimeError("counter gone")

    async def check(server: MetricsServer) -> None:
        status, _, _ = split(await exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n"))
        assert status == "HTTP/1.1 500 Internal Server Error"

    caplog.set_level(logging.ERROR)
    serve(check, broken)
    assert "metrics: collecting failed" in caplog.text
    assert "counter gone" in caplog.text


def test_stop_closes_the_port() -> None:
    async def main() -> None:
        server = MetricsServer(("127.0.0.1", 0), lambda: METRICS)
        await server.start()
        port = server.port
        # An idle connection must not hold stop() up.
        _, idle = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.wait_for(server.stop(), 5)
        idle.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    asyncio.run(main())


def test_urllib_404() -> None:
    async def check(server: MetricsServer) -> None:
        url = f"http://127.0.0.1:{server.port}/"
        with pytest.raises(urllib.error.HTTPError) as info:
            await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)
        assert info.value.code == 404

    serve(check)


async def test_a_scrape_shows_split_dns_at_work() -> None:
    """Roles on the upstream metrics and the split DNS counters, after real queries: a chain
    finished through the breakout resolver, a fallback, a canary, a cache eviction."""
    breakout = await FakeUpstream(
        {"www.example.test": [{"type": "A", "value": "203.0.113.10", "ttl": 60}]}
    ).start()
    office = await FakeUpstream(
        {"autodiscover.corp.example": [{"type": "CNAME", "value": "www.example.test", "ttl": 60}],
         "www.example.test": [{"type": "A", "value": "192.0.2.80", "ttl": 60}]}
    ).start()  # fmt: skip
    hook = RecordingHook()
    hook.ready = True
    env = DnsEnv(
        hook=hook,
        matcher=StubMatcher({"www.example.test": 1, "n1.example.test": 2}),
        forward_zones={"corp.example": (office.address,)},
        breakout=BreakoutConfig(interface="wan0", resolvers=(breakout.address,)),
        cache={"max_entries": 1},
    )
    try:
        async with env:
            metrics = MetricsServer(
                ("127.0.0.1", 0),
                lambda: collect(status_tree(env.srv), env.srv.tagged_by_row, None),
            )
            await metrics.start()
            try:
                spliced = await env.ask("autodiscover.corp.example")
                assert [str(rr.rdata) for rr in spliced.rr][-1] == "203.0.113.10"
                breakout.mode = "timeout"
                fallback = await env.ask("n1.example.test")  # the default upstream answers
                assert [str(rr.rdata) for rr in fallback.rr] == ["203.0.113.2"]
                await env.ask("use-application-dns.net")
                response = await exchange(metrics.port, b"GET /metrics HTTP/1.0\r\n\r\n")
            finally:
                await metrics.stop()
    finally:
        await breakout.stop()
        await office.stop()
    status, _, body = split(response)
    assert status == "HTTP/1.1 200 OK"
    lines = body.decode().splitlines()
    for line in (
        "resolverd_spliced_answers_total 1",
        "resolverd_breakout_fallbacks_total 1",
        "resolverd_canary_answers_total 1",
        "resolverd_cache_evictions_total 1",  # two answers cached, room for one
        "resolverd_udp_send_dropped_total 0",
        f'resolverd_upstream_healthy{{upstream="{env.fake.text}",role="default"}} 1',
        f'resolverd_upstream_healthy{{upstream="{office.text}",role="zone:corp.example"}} 1',
        f'resolverd_upstream_healthy{{upstream="{breakout.text}",role="breakout"}} 1',
    ):
        assert line in lines
    rtts = [line for line in lines if line.startswith("resolverd_upstream_rtt_seconds{")]
    assert [line.split("role=")[1].split("}")[0] for line in rtts] == [
        '"default"', '"zone:corp.example"', '"breakout"',
    ]  # fmt: skip
