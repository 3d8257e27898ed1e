"""resolver.net.traffic against the kernel, in the NAT lab (tests/netns/natlab.py): resolverd's
table `inet resolverd` as nft lists it, what it counts (per class and link in named counters,
per address in the map's elements), and what survives a restart. What counting costs per
forwarded packet is a benchmark: tests/bench/test_counters_bench.py.

The table is programmed by tests/netns/trafficdriver.py in the router; traffic goes from the
client to S0 (wan0) or S1 (wan1); packets are counted exactly (a burst of datagrams from one
socket).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.netns.natlab import SERVICE4, SERVICE6, NatLab
from tests.netns.trafficdriver import TrafficDriver

pytestmark = pytest.mark.netns

LINKS = ["wan0", "wan1"]
SEED5, OPT46, ALLOW47 = [5, None], [46, "Optimize"], [47, "Allow"]
CLASSES = [SEED5, OPT46, ALLOW47]
SINCE = 1_700_000_000


@pytest.fixture(scope="module", name="lab")
def counters_lab() -> Iterator[NatLab]:
    if shutil.which("iperf3") is None:
        pytest.fail("the counters' tests need iperf3: run make sysdeps")
    with NatLab("cnt") as built:
        yield built


@pytest.fixture(name="driver")
def counters_driver(lab: NatLab) -> Iterator[TrafficDriver]:
    """A driver in the router, every service address routed out wan0, the table set up; the
    driver killed and the table deleted afterwards."""
    lab.run(lab.router, "nft", "delete", "table", "inet", "resolverd", check=False)
    for address in SERVICE4 + SERVICE6:
        lab.route(address, "wan0")
    proc = lab.spawn(
        lab.router, sys.executable, "-m", "tests.netns.trafficdriver", stdin=subprocess.PIPE
    )
    d = TrafficDriver(proc)
    try:
        d.apply("setup", links=LINKS, classes=CLASSES, since=SINCE)
        yield d
    finally:
        proc.kill()
        proc.wait(timeout=5)
        lab.run(lab.router, "nft", "delete", "table", "inet", "resolverd", check=False)


def burst(lab: NatLab, host: str, count: int, size: int) -> None:
    lab.run(lab.client, sys.executable, "-m", "tests.netns.ctagents", "burst", host, "9",
            str(count), str(size))  # fmt: skip


def counted(d: TrafficDriver) -> dict[tuple[Any, Any, str], tuple[int, int]]:
    """(row, category, link) -> (packets, bytes), of the named counters."""
    rows = d.call("counters")
    return {(t["row"], t["category"], t["link"]): (t["packets"], t["bytes"]) for t in rows}


def held(d: TrafficDriver, family: int) -> dict[str, dict[str, Any]]:
    return {h["address"]: h for h in d.call("held", family=family)}


def test_the_table_as_nft_lists_it(lab: NatLab, driver: TrafficDriver) -> None:
    driver.apply("setup", links=LINKS, classes=CLASSES, since=SINCE + 99)  # idempotent
    driver.apply("hold", family=4, items=[[SERVICE4[0], SEED5, 300]])
    text = lab.run(lab.router, "nft", "list", "table", "inet", "resolverd").stdout
    lines = [line.strip() for line in text.splitlines()]
    for expected in (
        f'comment "resolverd breakout traffic since {SINCE}"',
        "counter r46-Optimize.wan1 {",
        "type ipv4_addr : verdict",
        "type ipv6_addr : verdict",
        "type filter hook forward priority 300; policy accept;",
        'oifname "wan0" goto held',
        "ip daddr vmap @held4",
        "ip6 daddr vmap @held6",
        "chain c-r5-seed {",
        'oifname "wan1" counter name "r5-seed.wan1" return',
    ):
        assert expected in lines, text
    assert sum(line.startswith('oifname "wan0" goto held') for line in lines) == 1  # not twice
    assert any(f"{SERVICE4[0]} counter packets 0 bytes 0 timeout 5m" in x for x in lines), text
    assert driver.call("since") == SINCE


def test_counts_per_class_link_and_address(lab: NatLab, driver: TrafficDriver) -> None:
    d = driver
    d.apply("hold", family=4, items=[[SERVICE4[0], SEED5, 300], [SERVICE4[1], OPT46, 300]])
    d.apply("hold", family=6, items=[[SERVICE6[0], OPT46, 300]])
    lab.route(SERVICE4[1], "wan1")
    burst(lab, SERVICE4[0], 1000, 100)  # 128 bytes each at the IP layer
    burst(lab, SERVICE4[1], 300, 200)  # through wan1
    burst(lab, SERVICE6[0], 200, 52)  # 100 bytes each
    burst(lab, SERVICE4[2], 500, 100)  # not held: counted nowhere

    c = counted(d)
    assert c[(5, None, "wan0")] == (1000, 1000 * 128)
    assert c[(46, "Optimize", "wan1")] == (300, 300 * 228)
    assert c[(46, "Optimize", "wan0")] == (200, 200 * 100)
    others = {k: v for k, v in c.items() if k not in {(5, None, "wan0"), (46, "Optimize", "wan1"),
                                                       (46, "Optimize", "wan0")}}  # fmt: skip
    assert set(others.values()) == {(0, 0)}
    h4, h6 = held(d, 4), held(d, 6)
    assert (h4[SERVICE4[0]]["packets"], h4[SERVICE4[0]]["bytes"]) == (1000, 128_000)
    assert (h4[SERVICE4[1]]["chain"], h4[SERVICE4[1]]["packets"]) == ("c-r46-Optimize", 300)
    assert h6[SERVICE6[0]]["bytes"] == 20_000
    assert SERVICE4[2] not in h4


def test_restart_keeps_counts_and_a_new_table_says_reset(
    lab: NatLab, driver: TrafficDriver
) -> None:
    d = driver
    d.apply("hold", family=4, items=[[SERVICE4[0], SEED5, 100]])
    burst(lab, SERVICE4[0], 50, 100)
    before = counted(d)[(5, None, "wan0")]
    expires = held(d, 4)[SERVICE4[0]]["expires_ms"]

    # A restarted (or reloaded) daemon: setup again, the hold refreshed with a longer timeout.
    d.apply("setup", links=LINKS, classes=[*CLASSES, [48, "Default"]], since=SINCE + 1000)
    d.apply("hold", family=4, items=[[SERVICE4[0], SEED5, 600]])
    assert d.call("since") == SINCE
    assert counted(d)[(5, None, "wan0")] == before == (50, 50 * 128)
    element = held(d, 4)[SERVICE4[0]]
    assert element["packets"] == 50  # re-adding kept the element's counter
    assert element["expires_ms"] > expires + 400_000  # and refreshed its timeout (Linux 6.10+)
    assert counted(d)[(48, "Default", "wan1")] == (0, 0)  # the new class is there

    # Moved to another class: the element restarts, the class totals stay where they were.
    d.apply("reclassify", family=4, address=SERVICE4[0], **{"class": OPT46}, timeout=300)
    burst(lab, SERVICE4[0], 10, 100)
    assert counted(d)[(46, "Optimize", "wan0")] == (10, 1280)
    assert counted(d)[(5, None, "wan0")] == (50, 6400)
    assert held(d, 4)[SERVICE4[0]]["packets"] == 10

    # The table gone (flushed ruleset, reboot): made anew, counting from zero, and saying so.
    d.apply("remove")
    assert d.call("since") is None
    d.apply("setup", links=LINKS, classes=CLASSES, since=SINCE + 2000)
    assert d.call("since") == SINCE + 2000
    assert set(counted(d).values()) == {(0, 0)}


def test_a_feed_of_many_sets_still_fits_one_setup_transaction(driver: TrafficDriver) -> None:
    """400 classes on two links: a setup transaction of about 320 KB, more than a netlink
    socket's default send buffer takes (EMSGSIZE): counting must not stop for it."""
    many = [[row, "Optimize"] for row in range(1000, 1400)]
    driver.apply("setup", links=LINKS, classes=[*CLASSES, *many], since=SINCE)
    rows = {(t["row"], t["link"]) for t in driver.call("counters")}
    assert (1399, "wan1") in rows and len(rows) == 2 * (len(CLASSES) + len(many))
