"""Upstream sets: each upstream's health, the order they are tried in, and their probes.

An `UpstreamSet` is one role's list of upstreams (the default upstreams, a forward zone's, or
the ISP's breakout resolvers) with its own health ordering; its `transport` (exchange.Transport)
does the socket work of one attempt, `resolution` drives the attempts of a miss through the
set, `forwarder` picks the set for a name.

What an upstream's answer means for this query:
- FORMERR or NOTIMP to our EDNS query: asked once more without OPT (a server that does not
  speak EDNS), then as below;
- SERVFAIL, REFUSED, FORMERR, NOTIMP, or an extended rcode (above 15, from the OPT record: we
  would have to hand it on mangled to clients without EDNS): no answer, the next upstream is
  asked, and SERVFAIL when none is left;
- a timeout or a socket error: the same, and it counts as a failure of that upstream;
- a truncated answer is fetched again over TCP from the same upstream.

Upstreams are tried in order of health: fewest consecutive failures first, then the smallest
smoothed round-trip time plus a penalty for soft failures (SERVFAIL, REFUSED and the other
refusals above), then the configured order. The soft-failure score moves towards 1 with each
refusal and towards 0 with each good answer, and halves every `SOFT_HALF_LIFE` seconds, so an
upstream that answers SERVFAIL to everything falls behind a healthy one and is tried again
now and then. After `dead_after` failures in a row an upstream is skipped (unless every
upstream of the set is dead) and probed in the background with a `. NS` query every
`probe_interval` seconds until it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable
from typing import Final

from resolver.dns.exchange import Reply, Transport

log = logging.getLogger(__name__)

Address = tuple[str, int]

DEAD_AFTER: Final = 3  # consecutive failures that take an upstream out of the rotation
PROBE_INTERVAL: Final = 5.0  # seconds between probes of a dead upstream
RTT_ALPHA: Final = 0.3  # weight of a new sample in the smoothed RTT
ROOT_NS: Final = b"\0\0\x02\0\x01"  # the probe's question: ". IN NS"
SOFT_ALPHA: Final = 0.3  # weight of one answer in the soft-failure score
SOFT_HALF_LIFE: Final = 60.0  # seconds for the soft-failure score to halve on its own
SOFT_PENALTY: Final = 1.0  # seconds added to the smoothed RTT at a soft-failure score of 1
STAT_KEYS: Final = (
    "queries",
    "answers",
    "timeouts",
    "dropped",
    "malformed",
    "trailing",  # replies accepted with bytes after their last record cut off
    "tcp",
    "refused",
    "servfail",
    "formerr",  # FORMERR or NOTIMP
    "no_edns",  # queries asked again without OPT after FORMERR or NOTIMP
    "extended",  # extended rcodes (above 15)
    "errors",
)


class Upstream:
    """One upstream server and what we know of its health."""

    __slots__ = (
        "dead",
        "failures",
        "family",
        "host",
        "index",
        "port",
        "probe",
        "soft",
        "soft_at",
        "srtt",
        "stats",
        "text",
    )

    def __init__(self, host: str, port: int, index: int) -> None:
        ip = ipaddress.ip_address(host)
        self.host = str(ip)
        self.port = port
        self.index = index
        self.family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        self.text = f"[{self.host}]:{port}" if ip.version == 6 else f"{self.host}:{port}"
        self.srtt: float | None = None  # seconds
        self.failures = 0
        self.soft = 0.0  # soft-failure score in [0, 1] as of `soft_at`
        self.soft_at = 0.0
        self.dead = False
        self.probe: asyncio.Task[None] | None = None
        self.stats = dict.fromkeys(STAT_KEYS, 0)

    @property
    def address(self) -> Address:
        return self.host, self.port

    def answered(self, rtt: float) -> None:
        srtt = self.srtt
        self.srtt = rtt if srtt is None else srtt + RTT_ALPHA * (rtt - srtt)
        self.failures = 0
        if self.dead:
            log.info("upstream %s answers again", self.text)
        self.dead = False

    def failed(self, dead_after: int) -> bool:
        """Count a failure; True when this one made the upstream dead."""
        self.failures += 1
        if not self.dead and self.failures >= dead_after:
            self.dead = True
            return True
        return False

    def soft_score(self, now: float) -> float:
        """The soft-failure score at `now`: 0 for an upstream that gives answers."""
        soft = self.soft
        if soft and now > self.soft_at:
            soft *= 0.5 ** ((now - self.soft_at) / SOFT_HALF_LIFE)
        return soft

    def graded(self, good: bool, now: float) -> None:
        """Move the soft-failure score after an answer: towards 0 when it was usable, towards
        1 when it was a refusal (SERVFAIL, REFUSED, FORMERR, NOTIMP, an extended rcode)."""
        soft = self.soft_score(now) * (1.0 - SOFT_ALPHA)
        self.soft = soft if good else soft + SOFT_ALPHA
        self.soft_at = now

    def sort_key(self, now: float) -> tuple[int, float, int]:
        srtt = self.srtt if self.srtt is not None else 0.0
        return self.failures, srtt + SOFT_PENALTY * self.soft_score(now), self.index

    def status(self, role: str) -> dict[str, object]:
        rtt = None if self.srtt is None else round(self.srtt * 1000.0, 3)
        return {"address": self.text, "healthy": not self.dead, "rtt_ms": rtt, "role": role}


class UpstreamSet:
    """One role's upstreams, tried in order of health; see the module docstring.

    `role` is how status and metrics name it: ``default``, ``breakout`` or ``zone:NAME``.
    """

    def __init__(
        self,
        role: str,
        upstreams: Iterable[Address],
        timeout: float,
        *,
        transport: Transport,
        dead_after: int = DEAD_AFTER,
        probe_interval: float = PROBE_INTERVAL,
    ) -> None:
        self.role = role
        self.transport = transport
        self.timeout = timeout
        self.dead_after = dead_after
        self.probe_interval = probe_interval
        self.upstreams: list[Upstream] = []
        self.closed = False
        self.clock = time.monotonic  # for the soft-failure scores
        self.configure(upstreams, timeout)

    @property
    def addresses(self) -> tuple[Address, ...]:
        return tuple(u.address for u in self.upstreams)

    def configure(self, upstreams: Iterable[Address], timeout: float) -> None:
        """New upstream list; servers that stay keep their health and counters."""
        old = {u.address: u for u in self.upstreams}
        fresh: list[Upstream] = []
        for index, (host, port) in enumerate(upstreams):
            probe = Upstream(host, port, index)
            kept = old.pop(probe.address, None)
            if kept is not None:
                kept.index = index
                probe = kept
            fresh.append(probe)
        for gone in old.values():
            if gone.probe is not None:
                gone.probe.cancel()
        self.upstreams = fresh
        self.timeout = timeout

    def ordered(self, now: float | None = None) -> list[Upstream]:
        """Live upstreams by health; if all are dead, all of them (better than giving up)."""
        ups = self.upstreams
        if len(ups) == 1:  # dead or alive, the one there is (asked for every miss)
            return [ups[0]]
        when = self.clock() if now is None else now
        alive = [u for u in ups if not u.dead]
        return sorted(alive or ups, key=lambda u: u.sort_key(when))

    def healthy(self) -> bool:
        return any(not u.dead for u in self.upstreams)

    def status(self) -> list[dict[str, object]]:
        return [u.status(self.role) for u in self.upstreams]

    async def query_udp(
        self, up: Upstream, question: bytes, do: bool, cd: bool, edns: bool
    ) -> Reply | None:
        """One UDP attempt, awaited (the probes; off the miss path)."""
        fut: asyncio.Future[Reply | None] = asyncio.get_running_loop().create_future()

        def done(reply: Reply | None) -> None:
            if not fut.done():
                fut.set_result(reply)

        attempt = self.transport.udp(up, question, do, cd, edns, self.timeout, done)
        try:
            return await fut
        finally:
            attempt.cancel()

    def failed(self, up: Upstream) -> None:
        """Count a failure of `up` (a timeout, an error); the one that makes it dead starts
        its probe."""
        if up.failed(self.dead_after) and not self.closed:
            log.warning(
                "upstream %s (%s) failed %d times in a row: skipped, probed every %.0fs",
                up.text,
                self.role,
                up.failures,
                self.probe_interval,
            )
            if up.probe is None or up.probe.done():
                up.probe = asyncio.get_running_loop().create_task(self._probe(up))

    async def _probe(self, up: Upstream) -> None:
        loop = asyncio.get_running_loop()
        while up.dead and not self.closed and up in self.upstreams:
            await asyncio.sleep(self.probe_interval)
            started = loop.time()
            try:
                reply = await self.query_udp(up, ROOT_NS, False, False, True)
            except OSError as err:
                log.debug("probe of %s: %s", up.text, err)
                continue
            if reply is not None:
                up.answered(loop.time() - started)

    async def close(self) -> None:
        self.closed = True
        probes = [u.probe for u in self.upstreams if u.probe is not None and not u.probe.done()]
        for task in probes:
            task.cancel()
        for task in probes:
            with contextlib.suppress(asyncio.CancelledError):
                await task
