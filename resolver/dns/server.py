"""DnsServer: the DNS side of resolverd, from listening sockets to the breakout hook.

    server = DnsServer(config, matcher, hook)
    await server.start()          # binds UDP and TCP on every `listen` address
    server.reconfigure(new_config, new_matcher)   # reload
    server.status()               # for `resolverctl status`
    await server.stop(2.0)        # stop listening, drain in-flight queries, cancel the rest

The protocol logic lives in handler.py; this module owns only sockets and lifecycle.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
from collections.abc import Callable
from typing import Any, cast

from resolver.config import Config, format_address
from resolver.dns.handler import Handler
from resolver.dns.mmsg import Batches
from resolver.dns.tagging import NameMatcher
from resolver.dns.tcp import TcpServer
from resolver.dns.udp import UdpListener
from resolver.hooks import BreakoutHook
from resolver.statusmodel import DnsStatus, QueryCounts, TcpStatus, UdpStatus, UpstreamStatus

log = logging.getLogger(__name__)

Address = tuple[str, int]
STATUS_QUERIES = (
    "total", "tagged", "refused", "servfail", "noerror", "nxdomain", "formerr", "notimp", "other",
    "dropped", "ratelimited", "pending_full",
)  # fmt: skip
UDP_RCVBUF = 4 << 20  # room for bursts; the kernel caps it at net.core.rmem_max
TCP_BACKLOG = 128


class DnsServer:
    """Answers DNS on every listen address, UDP and TCP; see the module docstring."""

    def __init__(
        self,
        config: Config,
        matcher: NameMatcher,
        hook: BreakoutHook,
        *,
        clock: Callable[[], float] = time.monotonic,
        probe_interval: float = 5.0,
        batched: bool = True,
    ) -> None:
        """`batched`: UDP through recvmmsg and sendmmsg where the C library has them (mmsg)."""
        self.config = config
        self.batches = Batches.open() if batched else None
        self.handler = Handler(config, matcher, hook, clock=clock, probe_interval=probe_interval)
        self.tcp = TcpServer(self.handler, config.tcp.idle_timeout, config.tcp.max_connections)
        self.bound: list[Address] = []  # the addresses actually bound (port 0 resolved)
        self._udp: list[UdpListener] = []
        self._servers: list[asyncio.AbstractServer] = []
        self.started = False

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind every listen address (UDP and TCP). Raises OSError naming the address."""
        _raise_open_files(self.config.forward.max_pending + self.config.tcp.max_connections + 256)
        try:
            for host, port in self.config.listen:
                await self._bind(host, port)
        except OSError:
            await self._close_sockets()
            raise
        self.started = True
        log.info("DNS listening on %s", ", ".join(format_address(*a) for a in self.bound))

    async def _bind(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        where = format_address(host, port)
        for _attempt in range(50 if port == 0 else 1):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                if family == socket.AF_INET6:
                    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
                except OSError as err:
                    log.debug("SO_RCVBUF on %s: %s", where, err)
                udp.bind((host, port))
                actual = udp.getsockname()[1]
                try:
                    tcp.bind((host, actual))
                except OSError as err:
                    if port == 0 and err.errno == errno.EADDRINUSE:
                        udp.close()
                        tcp.close()
                        continue  # the UDP port's TCP twin is taken: another port
                    raise
                tcp.listen(TCP_BACKLOG)
                udp.setblocking(False)
                tcp.setblocking(False)
            except OSError as err:
                udp.close()
                tcp.close()
                reason = err.strerror or str(err)
                raise OSError(err.errno, f"cannot listen on {where} for DNS: {reason}") from None
            listener = UdpListener(self.handler, udp, self.batches)
            listener.start(loop)
            self._udp.append(listener)
            server = await loop.create_server(self.tcp.protocol, sock=tcp, backlog=TCP_BACKLOG)
            self._servers.append(server)
            self.bound.append((host, actual))
            return
        raise OSError(errno.EADDRINUSE, f"cannot listen on {where} for DNS: no free UDP+TCP port")

    async def stop(self, drain_timeout: float = 2.0) -> None:
        """Stop taking queries, wait up to `drain_timeout` s for those in flight, cancel the
        rest, close every socket."""
        for server in self._servers:
            server.close()
        for listener in self._udp:
            listener.stop_reading()
        cancelled = await self.handler.drain(drain_timeout)
        if cancelled:
            log.warning("stopped with %d queries unanswered", cancelled)
        await self._close_sockets()
        self.started = False

    async def _close_sockets(self) -> None:
        for server in self._servers:
            server.close()
        self.tcp.close_all()
        for listener in self._udp:
            listener.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        self._udp.clear()
        await asyncio.sleep(0)  # let the transports' close callbacks run

    # -- reload ----------------------------------------------------------------------------
    def reconfigure(self, config: Config, matcher: NameMatcher) -> None:
        """Swap upstreams, ACL, rate limit, cache size, TCP limits and the policy (the cache
        is re-tagged when the policy changed). Listen addresses need a restart."""
        if config.listen != self.config.listen:
            log.warning("listen addresses changed: that takes effect after a restart")
        self.handler.configure(config, matcher)
        self.tcp.configure(config.tcp.idle_timeout, config.tcp.max_connections)
        self.config = config

    def set_hook(self, hook: BreakoutHook) -> None:
        self.handler.set_hook(hook)

    # -- observation -----------------------------------------------------------------------
    @property
    def counters(self) -> dict[str, int]:
        """Queries by result, cache hits and misses, tagged answers (live; do not modify)."""
        return self.handler.counters

    @property
    def tagged_by_row(self) -> dict[int, int]:
        return self.handler.tagged_by_row

    def upstream_stats(self) -> list[dict[str, Any]]:
        """Per upstream of every set: status() fields plus its counters, consecutive failures
        and its soft-failure score (SERVFAIL, REFUSED and other refusals, decaying)."""
        out = []
        for upstreams in self.handler.forwarder.sets():
            now = upstreams.clock()
            for up in upstreams.upstreams:
                row: dict[str, Any] = up.status(upstreams.role)
                row["failures"] = up.failures
                row["soft_score"] = round(up.soft_score(now), 3)
                row.update(up.stats)
                out.append(row)
        return out

    def udp_stats(self) -> UdpStatus:
        return {
            "send_dropped": sum(u.send_dropped for u in self._udp),
            "errors": sum(u.errors for u in self._udp),
        }

    def tcp_stats(self) -> TcpStatus:
        """Open connections, and the ones closed by each limit (tcp.py, which names them)."""
        return cast(TcpStatus, self.tcp.stats())

    def status(self) -> DnsStatus:
        """The DNS part of the status tree (resolver.statusmodel), built on request only."""
        handler = self.handler
        c = handler.counters
        forwarder = handler.forwarder
        listen = self.bound if self.bound else list(self.config.listen)
        upstreams = [row for s in forwarder.sets() for row in s.status()]  # upstream.py's rows
        return {
            "listen": [format_address(h, p) for h, p in listen],
            "upstreams": cast(list[UpstreamStatus], upstreams),
            "cache": {
                "entries": len(handler.cache), "hits": c["hits"], "misses": c["misses"],
                "evicted": handler.cache.evicted, "bytes": handler.cache.bytes,
                "client_evicted": handler.cache.client_evicted,
            },
            "queries": cast(QueryCounts, {key: c[key] for key in STATUS_QUERIES}),
            "forwarding": {
                "breakout_fallbacks": forwarder.fallbacks, "spliced": forwarder.spliced,
                "routes_deferred": c["routes_deferred"], "canaries": c["canaries"],
                "addresses_capped": c["addresses_capped"],
            },
            "udp": self.udp_stats(),
            "tcp": self.tcp_stats(),
        }  # fmt: skip


def _raise_open_files(needed: int) -> None:
    """One socket per upstream query in flight: make sure the descriptor limit allows them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as err:
            log.warning("cannot raise the open-file limit to %d: %s", target, err)
            return
        log.info("open-file limit raised from %d to %d", soft, target)
