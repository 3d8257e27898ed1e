"""Active health checks of the breakout paths: TCP connects through each link, and their verdict.

A link whose carrier is up can still lead nowhere (the DSL modem keeps its link while the ISP
behind it is down). With `breakout.health`, every `interval` seconds resolverd connects to each
target through each link. A probe must not be able to take another path (the tunnel), so its
socket carries the link's mark (SO_MARK: an ip rule sends marked packets to the link's own
probe table, which holds the default route through that link and `unreachable default` behind
it) and is bound to the link's interface (SO_BINDTODEVICE). A round is good for a link when a
target answers: a completed handshake, or a reset (the path carried packets both ways).

`Verdict` is the state machine: a link is down after `failures` failed rounds in a row and up
again after `successes` good rounds; its first round decides its starting state. `Prober` runs
the rounds: one at a time (a slow round delays the next, never piles up), every connect
bounded by `timeout`, nothing on the DNS path. A `gate` may hold a round back (the probe
tables are not in place): that round counts neither way.

A probe with mark 0 sets no SO_MARK (setting one needs CAP_NET_ADMIN): the unit tests probe
through `lo` that way, unprivileged; resolverd's marks are never 0.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from resolver.config import Address, BreakoutConfig

log = logging.getLogger(__name__)

SO_MARK = 36
SO_BINDTODEVICE = 25


class Verdict:
    """One link's health from its probe rounds (see the module docstring)."""

    __slots__ = ("bad", "failures", "good", "healthy", "rtt_ms", "successes")

    def __init__(self, failures: int, successes: int) -> None:
        self.failures = failures
        self.successes = successes
        self.healthy: bool | None = None  # unknown until the first round
        self.good = 0  # good rounds in a row
        self.bad = 0  # failed rounds in a row
        self.rtt_ms: float | None = None

    def round(self, good: bool, rtt_ms: float | None = None) -> bool:
        """Count one round; True when it changed the verdict (the first round always does)."""
        if good:
            self.good, self.bad = self.good + 1, 0
            self.rtt_ms = rtt_ms
        else:
            self.good, self.bad = 0, self.bad + 1
            self.rtt_ms = None  # no answer: no current RTT to report
        before = self.healthy
        if before is None:
            self.healthy = good
        elif before and self.bad >= self.failures:
            self.healthy = False
        elif not before and self.good >= self.successes:
            self.healthy = True
        return self.healthy != before


@dataclass(frozen=True, slots=True)
class Probe:
    """What one link's probes need: its interface, its mark, and the families it carries."""

    interface: str
    mark: int
    families: frozenset[int]


Outcome = Callable[[int, bool, float | None], None]  # (link index, good, rtt in ms)
Gate = Callable[[], Awaitable[bool]]  # may a round run now?
ProbeLink = Callable[[Probe], Awaitable[tuple[bool, float | None]]]  # Prober.probe's shape


def read_sysctl(path: str) -> str:
    """A /proc/sys file's text."""
    with open(path, encoding="ascii") as fh:
        return fh.read()


@dataclass(frozen=True, slots=True)
class PathChecks:
    """How the health checks reach outside the process: `probe` one link (None: TCP connects
    through it, Prober.probe) and `read_sysctl`. Tests hand in their own."""

    probe: ProbeLink | None = None
    read_sysctl: Callable[[str], str] = read_sysctl


class Prober:
    """Probe rounds over every link until cancelled (see the module docstring)."""

    def __init__(
        self, targets: Sequence[Address], interval: float, timeout: float, outcome: Outcome,
        gate: Gate | None = None, probe_link: ProbeLink | None = None,
    ) -> None:  # fmt: skip
        self.targets = tuple(targets)
        self.probe_link: ProbeLink = probe_link if probe_link is not None else self.probe
        self.interval = interval
        self.timeout = timeout
        self.outcome = outcome
        self.gate = gate
        self.probes: list[Probe] = []
        self.started: float | None = None  # loop time the last round started
        self._eperm_logged = False

    async def run(self) -> None:
        """A round every `interval` seconds from the start of the last one (a round made by
        hand included), one at a time: a slow round delays the next, never overlaps it."""
        loop = asyncio.get_running_loop()
        while True:
            if self.started is not None:
                await asyncio.sleep(max(0.0, self.started + self.interval - loop.time()))
            try:
                if self.gate is None or await self.gate():
                    await self.round()
                else:
                    self.started = loop.time()  # held back: the slot passes all the same
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the health checks for good
                self.started = loop.time()
                log.exception("health probe round failed")

    async def round(self) -> None:
        """One round: every link at once, each bounded by the timeout."""
        self.started = asyncio.get_running_loop().time()
        probes = list(self.probes)
        results = await asyncio.gather(*(self.probe_link(p) for p in probes))
        for index, (good, rtt) in enumerate(results):
            self.outcome(index, good, rtt)

    async def probe(self, probe: Probe) -> tuple[bool, float | None]:
        """Whether one target answered through `probe`'s link, and the fastest answer's RTT."""
        targets = [t for t in self.targets if (6 if ":" in t[0] else 4) in probe.families]
        if not targets:
            return False, None
        results = await asyncio.gather(*(self._connect(probe, t) for t in targets))
        rtts = [rtt for rtt in results if rtt is not None]
        return (True, min(rtts)) if rtts else (False, None)

    async def _connect(self, probe: Probe, target: Address) -> float | None:
        """The connect's RTT in ms when the path answered (handshake or reset), else None."""
        family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        started = time.perf_counter()
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as err:  # out of descriptors or memory: this round counts as failed
            log.warning("health probe through %s: cannot open a socket: %s", probe.interface, err)
            return None
        try:
            sock.setblocking(False)
            if probe.mark:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, probe.mark)
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, probe.interface.encode())
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, target), self.timeout)
        except ConnectionRefusedError:
            pass  # a reset came back through the link: the path works
        except OSError as err:  # TimeoutError included: no answer within the timeout
            if err.errno == errno.EPERM and not self._eperm_logged:
                self._eperm_logged = True
                log.warning("health probe through %s to %s: %s (SO_MARK and SO_BINDTODEVICE "
                            "need CAP_NET_ADMIN)", probe.interface, target[0], err)  # fmt: skip
            return None
        finally:
            sock.close()
        return (time.perf_counter() - started) * 1000.0


def warn_strict_rp_filter(cfg: BreakoutConfig, read: Callable[[str], str] = read_sysctl) -> None:
    """IPv4 probe replies come from beyond the link, from addresses the main table routes
    through the tunnel: strict reverse-path filtering (rp_filter 1) on a breakout interface
    drops them, and the link would never count as healthy. Say so at start."""
    health = cfg.health
    if health is None or all(":" in host for host, _port in health.targets):
        return
    for link in cfg.links:
        values = []
        for name in ("all", link.interface):
            path = f"/proc/sys/net/ipv4/conf/{name}/rp_filter"
            try:
                values.append(int(read(path).strip() or 0))
            except (OSError, ValueError):
                values.append(0)  # no such interface yet: nothing to say
        if max(values) == 1:
            log.warning(
                "breakout link %s: strict reverse-path filtering (rp_filter 1) drops the IPv4 "
                "health probes' replies; set net.ipv4.conf.%s.rp_filter=2 (loose) and "
                "net.ipv4.conf.all.rp_filter to 0 or 2", link.interface, link.interface,
            )  # fmt: skip
