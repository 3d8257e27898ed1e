"""Prometheus metrics: the text exposition format (0.0.4) over a minimal HTTP/1.x server.

The daemon passes a `collect()` callable that returns the current `Metric` list; this module
renders it on every scrape. ``GET /metrics`` (or ``HEAD``) answers 200; anything else 404, and a
request that is not HTTP 400. The request head is read with a size and a time limit, and the
connection is closed after each response. At most `max_connections` are open at once, and one
client (an IPv4 address, an IPv6 /64) holds at most a quarter of them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple

from resolver.clients import charge_key

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_HEAD_BYTES = 8 * 1024
HEAD_TIMEOUT = 5.0

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


class Metric(NamedTuple):
    """One metric family. Counter names get ``_total`` appended when they lack it."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    samples: list[tuple[dict[str, str], float]]


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value as Prometheus parses it: integers plainly, NaN, +Inf, -Inf."""
    if isinstance(value, int):  # bool is an int too: True -> 1
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _labels(labels: dict[str, str], metric: str) -> str:
    if not labels:
        return ""
    parts = []
    for key, value in labels.items():
        if not _LABEL.match(key) or key.startswith("__"):
            raise ValueError(f"{metric}: invalid label name {key!r}")
        parts.append(f'{key}="{_escape_label(str(value))}"')
    return "{" + ",".join(parts) + "}"


def render(metrics: Iterable[Metric]) -> str:
    """The text exposition of `metrics`: HELP, TYPE, then one line per sample.

    Raises ValueError for an invalid or repeated metric name or an invalid label name: those
    are bugs in the caller, not in the data.
    """
    out: list[str] = []
    seen: set[str] = set()
    for metric in metrics:
        name = metric.name
        if metric.kind == "counter" and not name.endswith("_total"):
            name += "_total"
        elif metric.kind not in ("counter", "gauge"):
            raise ValueError(f"{name}: unknown metric kind {metric.kind!r}")
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        if name in seen:
            raise ValueError(f"metric {name!r} given twice")
        seen.add(name)
        out.append(f"# HELP {name} {_escape_help(metric.help)}")
        out.append(f"# TYPE {name} {metric.kind}")
        for labels, value in metric.samples:
            out.append(f"{name}{_labels(labels, name)} {format_value(value)}")
    return "\n".join(out) + "\n" if out else ""


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}


def _response(code: int, body: bytes, content_type: str, head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {code} {_REASONS[code]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + (b"" if head_only else body)


class MetricsServer:
    """Serves ``render(collect())`` at ``http://address/metrics``."""

    def __init__(
        self,
        address: tuple[str, int],
        collect: Callable[[], Iterable[Metric]],
        *,
        max_connections: int = 16,
        head_timeout: float = HEAD_TIMEOUT,
    ) -> None:
        self.address = address
        self.collect = collect
        self.max_connections = max_connections
        # One client (an IPv4 address, an IPv6 /64) holds at most a quarter of the
        # connections: idle ones it keeps open cannot shut the scraper out.
        self.max_per_client = max(1, max_connections // 4)
        self.head_timeout = head_timeout
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._held: dict[bytes, int] = {}  # client -> its connections open

    @property
    def port(self) -> int:
        """The bound port (useful when `address` asked for port 0)."""
        if self._server is None or not self._server.sockets:
            return self.address[1]
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        host, port = self.address
        self._server = await asyncio.start_server(
            self._client, host, port, limit=MAX_HEAD_BYTES, reuse_address=True
        )
        log.info("metrics: serving http://%s:%d/metrics", host, self.port)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        await self._server.wait_closed()
        self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else ""
        key = charge_key(host)
        held = self._held.get(key, 0)
        try:
            if len(self._tasks) >= self.max_connections or held >= self.max_per_client:
                log.debug("metrics: too many connections (%s has %d); closing one", host, held)
                return
            self._tasks.add(task)
            self._held[key] = held + 1
            try:
                head = await asyncio.wait_for(self._read_head(reader), self.head_timeout)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                log.debug("metrics: dropped a request: %r", exc)
                return
            writer.write(self._answer(head))
            await writer.drain()
        except ConnectionError as exc:
            log.debug("metrics: connection ended: %s", exc)
        finally:
            if task in self._tasks:
                self._tasks.discard(task)
                left = self._held.pop(key, 1) - 1
                if left > 0:
                    self._held[key] = left
            writer.close()
            try:
                await writer.wait_closed()
            except OSError as exc:
                log.debug("metrics: close: %s", exc)

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> bytes:
        """The request line and headers, up to the blank line, at most MAX_HEAD_BYTES."""
        head = b""
        while True:
            line = await reader.readuntil(b"\n")
            head += line
            if len(head) > MAX_HEAD_BYTES:
                raise asyncio.LimitOverrunError("request head too long", len(head))
            if line in (b"\r\n", b"\n"):
                return head

    def _answer(self, head: bytes) -> bytes:
        text = "text/plain; charset=utf-8"
        parts = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return _response(400, b"bad request\n", text)
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD") or target != b"/metrics":
            return _response(404, b"not found: try GET /metrics\n", text)
        try:
            body = render(self.collect()).encode("utf-8")
        except Exception:
            log.exception("metrics: collecting failed")
            return _response(500, b"collecting metrics failed; see the daemon's log\n", text)
        return _response(200, body, CONTENT_TYPE, head_only=method == b"HEAD")
