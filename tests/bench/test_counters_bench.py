"""What counting breakout traffic costs per forwarded packet (netns, root; make bench, figures:
-s), in the NAT lab of tests/netns/test_counters.py, with its fixtures: 64-byte UDP at
full speed, one iperf3 stream pinned to a CPU, to an address held among 10,000, the forwarding
path with the counting table against the same without its hook. The counts are checked too
(within 5% of what iperf3 sent: some datagrams die on the way at full speed).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from typing import Any

import pytest

from tests.netns.natlab import SERVICE6, NatLab
from tests.netns.test_counters import (  # noqa: F401 - counters_*: the fixtures lab, driver
    ALLOW47,
    CLASSES,
    LINKS,
    OPT46,
    SINCE,
    counted,
    counters_driver,
    counters_lab,
    held,
)
from tests.netns.trafficdriver import TrafficDriver

pytestmark = pytest.mark.bench

IPERF_PORT = 5201
ROUNDS, SECONDS = 3, 2.0  # alternating runs of iperf3, each this long
HELD = 10_000  # held IPv6 addresses in the map while measuring


def iperf(lab: NatLab, host: str) -> dict[str, Any]:
    res = lab.run(
        lab.client, "iperf3", "-c", host, "-p", str(IPERF_PORT), "-u", "-b", "0", "-l", "64",
        "-t", str(SECONDS), "-A", "0", "-J", timeout=SECONDS + 20,
    )  # fmt: skip
    out: dict[str, Any] = json.loads(res.stdout)["end"]["sum"]
    return out


def test_per_packet_cost_of_counting(lab: NatLab, driver: TrafficDriver) -> None:
    """64-byte UDP at full speed, one iperf3 stream pinned to a CPU, to an address held among
    10,000: the forwarding path with the counting table against the same without its hook."""
    d = driver
    d.apply("hold_many", family=6, prefix="2001:db8:ff::", count=HELD, **{"class": ALLOW47})
    d.apply("hold", family=6, items=[[SERVICE6[0], OPT46, 3600]])
    server = lab.spawn(lab.servers["wan0"], "iperf3", "-s", "-B", SERVICE6[0], "-p",
                       str(IPERF_PORT), "-A", "1", stdout=subprocess.DEVNULL)  # fmt: skip
    time.sleep(0.3)
    ns: dict[str, list[float]] = {"none": [], "counting": []}
    sent = 0
    try:
        for _ in range(ROUNDS):
            for mode in ("none", "counting"):
                if mode == "none":
                    lab.run(lab.router, "nft", "flush chain inet resolverd out; "
                            "delete chain inet resolverd out")  # fmt: skip
                else:
                    d.apply("setup", links=LINKS, classes=CLASSES, since=SINCE)
                run = iperf(lab, SERVICE6[0])
                ns[mode].append(1e9 * run["seconds"] / run["packets"])
                if mode == "counting":
                    sent += run["packets"]
    finally:
        server.kill()
    total = counted(d)[(46, "Optimize", "wan0")][0]
    element = held(d, 6)[SERVICE6[0]]["packets"]
    cost = statistics.median(ns["counting"]) - statistics.median(ns["none"])
    print(
        f"\ncounting: {statistics.median(ns['none']):.0f} -> "
        f"{statistics.median(ns['counting']):.0f} ns per 92-byte packet forwarded "
        f"(+{cost:.0f} ns), runs {[round(x) for x in ns['none']]} vs "
        f"{[round(x) for x in ns['counting']]}; counted {total} of {sent} sent "
        f"({100 * total / sent:.2f}%), element {element}"
    )
    assert abs(total - sent) <= 0.05 * sent
    assert element == total
    assert cost < 1500  # generous: the figure is what matters; this catches a slow path
