"""The periodic work costs what lapses and what is missing, not what is held (issue 20, item 5).

30,000 holds, a few of them lapsing: the once-a-second sweep looks at the few (the ledger's
expiry heap), and not at the holds of a family that has no usable link (all of them missing
for as long as the outage lasts: the ledger keeps the missing holds per family). `Ledger.swept`
counts every hold the sweep looks at. Set-entry refreshes follow answers, not the clock
(installs.queue_refresh, from on_answer), so they have no periodic walk to test here.
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from resolver.net.links import Addr
from tests.owners import Owners, make_owners
from tests.unit.breakout_fakes import WAN, make_cfg, make_view

pytestmark = pytest.mark.unit

HELD = 30_000
LAPSING = 10
NET6 = ipaddress.IPv6Network("2001:db8:365::/64")
V4 = [f"{net}.{i}" for net in ("192.0.2", "198.51.100", "203.0.113") for i in range(1, 255)]


def v6(i: int) -> str:
    return str(NET6[i + 1])


async def started(fake_probes: dict[str, bool], v6_link: bool) -> Owners:
    view = make_view()
    if not v6_link:  # wan0 loses its IPv6 address: IPv6 has no usable link
        view.apply_addr(False, [Addr(WAN, 6, "2001:db8:b::2", "2001:db8:b::/64", False)])
    owners = make_owners(make_cfg(max_entries=HELD + 1000), view=view)
    owners.answers = fake_probes
    await owners.start()
    assert owners.links.ready() == {4: True, 6: v6_link}
    return owners


async def test_a_sweep_looks_at_the_lapsed_holds_alone(fake_probes: dict[str, bool]) -> None:
    owners = await started(fake_probes, v6_link=True)
    try:
        for i in range(HELD):
            owners.installs.enqueue(owners.hold(v6(i), ttl=10 if i < LAPSING else 600))
        await asyncio.sleep(0)
        ledger = owners.ledger
        assert len(ledger) == HELD and not ledger.missing
        assert all(h.installed for h in ledger)
        before = ledger.swept
        for _ in range(5):  # seconds with nothing due
            owners.clock.now += 1
            assert owners.repairs.sweep() == 0
        assert ledger.swept == before
        owners.clock.now += 10
        assert owners.repairs.sweep() == LAPSING
        assert ledger.swept - before == LAPSING
        assert len(ledger) == HELD - LAPSING
    finally:
        owners.close()


async def test_a_family_without_a_link_costs_the_sweep_nothing(
    fake_probes: dict[str, bool],
) -> None:
    """IPv6 has no usable link: its holds (all but a few hundred) are missing and wait; the
    sweep neither walks them nor tries to send them, while it still removes what lapses and
    puts back a lost IPv4 route."""
    owners = await started(fake_probes, v6_link=False)
    try:
        ledger = owners.ledger
        for i, address in enumerate(V4):
            owners.installs.enqueue(owners.hold(address, ttl=10 if i < LAPSING else 600))
        for i in range(HELD - len(V4)):
            owners.hold(v6(i), ttl=600)  # no link: not sent, missing
        await asyncio.sleep(0)
        assert len(ledger) == HELD and len(ledger.missing) == HELD - len(V4)
        before, calls = ledger.swept, len(owners.kernel.calls)
        for _ in range(5):
            owners.clock.now += 1
            assert owners.repairs.sweep() == 0
        assert ledger.swept == before and len(owners.kernel.calls) == calls
        lost = ledger.get(ipaddress.IPv4Address(V4[-1]).packed)
        assert lost is not None
        ledger.lost(lost)  # someone deleted an IPv4 route: the next sweep puts it back
        owners.clock.now += 10
        assert owners.repairs.sweep() == LAPSING
        assert ledger.swept - before == LAPSING + 1
        await asyncio.sleep(0)
        assert lost.installed and len(ledger.missing) == HELD - len(V4)
    finally:
        owners.close()
