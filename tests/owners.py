"""The breakout's owners (resolver/net/parts.py), built as `Breakout` builds them, for tests of
one owner at a time: over an in-memory kernel (tests/unit/breakout_fakes.FakeKernel, or
dryrun.DryRunKernel), the fake clock and network view, and a NullJournal. No sockets, no
netlink, no real timer that fires during a test: the probes' rounds go through `answers`
(`answering`: the Probes' PathChecks), not the network.

Registered from tests/conftest.py (pytest_plugins): the fixtures `owners` (kernel mode, one
link) and `health_owners` (two links with health checks) hand a started `Owners`; `ledger`
a bare `Ledger`. `make_owners` builds others (a config, kernel or view of the test's own).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from resolver.config import BreakoutConfig, HealthConfig, LinkConfig
from resolver.net.health import PathChecks, Probe
from resolver.net.holds import Hold
from resolver.net.installs import Installs
from resolver.net.journalapi import JournalLike, NullJournal
from resolver.net.kernelapi import KernelLike
from resolver.net.ledger import Ledger
from resolver.net.linkchoice import LinkChoice, health_thresholds
from resolver.net.links import Addr, Link, NetView
from resolver.net.linkwatch import LinkWatch
from resolver.net.parts import Parts
from resolver.net.probes import Probes
from resolver.net.repairs import Repairs
from tests.unit.breakout_fakes import Clock, FakeKernel, make_cfg, make_view

WALL = 1_700_000_000.0  # wall clock = the fake monotonic clock + WALL
WAN1 = 5  # the second breakout link's index in `two_links_view`
HEALTH = HealthConfig(
    targets=(("203.0.113.200", 443),), interval=3600, failures=2, successes=2, timeout=1
)
TWO_LINKS = (
    LinkConfig("wan0", "192.0.2.1", "2001:db8:b::1"),
    LinkConfig("wan1", "198.51.100.1", "2001:db8:d::1"),
)


def packed(address: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


def two_links_view() -> NetView:
    """make_view's router with a second breakout link, wan1, up and addressed."""
    view = make_view()
    view.apply_link(True, Link(WAN1, "wan1", True))
    view.apply_addr(True, [
        Addr(WAN1, 4, "198.51.100.2", "198.51.100.0/24", False),
        Addr(WAN1, 6, "2001:db8:d::2", "2001:db8:d::/64", False),
    ])  # fmt: skip
    return view


@dataclass
class Owners:
    """One breakout's owners and the fakes under them."""

    cfg: BreakoutConfig
    kernel: Any  # FakeKernel, or a DryRunKernel
    clock: Clock
    view: NetView
    parts: Parts
    verdict_changes: int = 0  # Probes.on_change calls: a link's verdict changed
    answers: dict[str, bool] = field(default_factory=dict)  # interface -> probes answered

    @property
    def ledger(self) -> Ledger:
        return self.parts.ledger

    @property
    def installs(self) -> Installs:
        return self.parts.installs

    @property
    def links(self) -> LinkWatch:
        return self.parts.links

    @property
    def probes(self) -> Probes:
        return self.parts.probes

    @property
    def repairs(self) -> Repairs:
        return self.parts.repairs

    def hold(
        self, address: str, ttl: float = 60, name: str = "x.office.com", row: int = 1,
        client: bytes | None = None,
    ) -> Hold:  # fmt: skip
        """A new hold in the ledger (AssertionError when the ledger refuses it)."""
        h = self.ledger.add(packed(address), name, self.clock() + ttl, row, client)
        assert h is not None, f"the ledger refused {address}"
        return h

    async def start(self) -> None:
        """What Breakout.start does of the owners: the loop, the links, the probes, the rules;
        then active (sweeps put back what is missing), as a started breakout is."""
        loop = asyncio.get_running_loop()
        self.installs.start(loop)
        await self.links.start(loop)
        self.links.reassess(initial=True)
        await self.probes.start(loop)
        await self.repairs.ensure_rules()
        self.repairs.active = True

    def close(self) -> None:
        for owner in (self.repairs, self.probes, self.installs, self.links):
            owner.close()


def make_owners(
    cfg: BreakoutConfig | None = None, *, kernel: KernelLike | None = None,
    view: NetView | None = None, clock: Clock | None = None, journal: JournalLike | None = None,
    checks: PathChecks | None = None,
) -> Owners:  # fmt: skip
    """The owners wired as Breakout.__init__ wires them (not started)."""
    cfg = cfg if cfg is not None else make_cfg()
    kernel = kernel if kernel is not None else FakeKernel()
    clock = clock if clock is not None else Clock()
    journal = journal if journal is not None else NullJournal()
    view = view if view is not None else make_view()
    ledger = Ledger(cfg.max_entries, cfg.client_share)
    installs = Installs(ledger, kernel, journal, clock, cfg.ack_timeout)
    choice = LinkChoice(cfg.links, health_thresholds(cfg, kernel.can_probe))
    links = LinkWatch(cfg, installs, choice, view, watch=False)
    on_change: list[Callable[[], None]] = []
    probes = Probes(cfg, installs, choice, lambda: on_change[0](), checks)
    links.probes = probes
    repairs = Repairs(cfg, installs, journal, links)
    parts = Parts(ledger, installs, links, probes, repairs, journal, clock, lambda: clock() + WALL)
    owners = Owners(cfg, kernel, clock, view, parts)

    def changed() -> None:  # as Breakout._verdict_changed, once started
        owners.verdict_changes += 1
        links.reassess(initial=not repairs.active)

    on_change.append(changed)
    return owners


@pytest.fixture
def fake_probes() -> dict[str, bool]:
    """Probe rounds answer from this table (interface -> answered), not the network: the
    owners fixtures hand `answering(fake_probes)` to their Probes."""
    return {}


def answering(answers: dict[str, bool]) -> PathChecks:
    """Path checks whose probes answer from `answers` (interface -> answered)."""

    async def probe(p: Probe) -> tuple[bool, float | None]:
        good = answers.get(p.interface, False)
        return good, (1.0 if good else None)

    return PathChecks(probe=probe)


@pytest.fixture
async def owners(fake_probes: dict[str, bool]) -> AsyncIterator[Owners]:
    """Started owners of a one-link kernel-mode breakout (make_cfg) over a FakeKernel."""
    built = make_owners(checks=answering(fake_probes))
    built.answers = fake_probes
    await built.start()
    built.kernel.calls.clear()
    yield built
    built.close()


@pytest.fixture
async def health_owners(fake_probes: dict[str, bool]) -> AsyncIterator[Owners]:
    """Started owners of a two-link breakout with health checks; both links answer the first
    round (so wan0, the first, carries the routes)."""
    cfg = make_cfg(links=TWO_LINKS, health=HEALTH)
    built = make_owners(cfg, view=two_links_view(), checks=answering(fake_probes))
    built.answers = fake_probes
    fake_probes.update(wan0=True, wan1=True)
    await built.start()
    built.kernel.calls.clear()
    yield built
    built.close()


@pytest.fixture
def ledger() -> Ledger:
    """A ledger of at most 10 holds, each client's share 0.3 of them (3)."""
    return Ledger(10, 0.3)
