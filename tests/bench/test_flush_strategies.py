"""How to delete the conntrack entries of moved addresses: the measurement behind
resolver.net.conntrack's choice (root; `make bench`; figures printed).

In the NAT lab (tests/netns/natlab.py), with a table of TOTAL UDP entries of which MOVED go to
N addresses, each strategy runs on a fresh table:
- "dump": resolver.net.conntrack.flush (one dump of the family, filtered in Python, one
  delete per match);
- "kernel": one CT_DELETE per address with a CTA_FILTER on the original destination (Linux
  6.12+), all in one sendmsg; the kernel walks its whole table once per address and does not
  say how many entries it deleted (counted here with `conntrack -C`).
It also shows why the kernel filter is not used for IPv6 on this kernel: a CTA_FILTER on an
IPv6 destination selects every entry *but* that address's (printed, not asserted).

The measuring half runs in the router: ``python -m tests.bench.test_flush_strategies ...``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
import time
from collections.abc import Sequence

import pytest

from resolver.net import conntrack, netlink
from resolver.net.netlink import NLM_F_DUMP, NLM_F_REQUEST, Message, attr, nested

pytestmark = pytest.mark.bench

CTA_FILTER, CTA_FILTER_ORIG_FLAGS, CTA_FILTER_FLAG_IP_DST = 25, 1, 1 << 1
CASES = [(2_000, 1_000, 1), (10_000, 1_000, 10), (10_000, 1_000, 100), (50_000, 1_000, 100)]


def dst_filter(family: int, dst: bytes) -> bytes:
    ip = netlink.attr(conntrack.CTA_IP_V4_DST if family == 4 else conntrack.CTA_IP_V6_DST, dst)
    tup = nested(conntrack.CTA_TUPLE_ORIG, nested(conntrack.CTA_TUPLE_IP, ip))
    return tup + nested(
        CTA_FILTER, attr(CTA_FILTER_ORIG_FLAGS, struct.pack("=I", CTA_FILTER_FLAG_IP_DST))
    )


def kernel_flush(family: int, dst: bytes) -> Message:
    return (
        conntrack.MSG_DELETE,
        NLM_F_REQUEST,
        conntrack.dump_request(family) + dst_filter(family, dst),
    )


async def inside(mode: str, addresses: Sequence[str]) -> dict[str, object]:
    channel = netlink.Channel(netlink.NETLINK_NETFILTER)
    channel.attach(asyncio.get_running_loop())
    fam = 6 if ":" in addresses[0] else 4
    packed = [
        socket.inet_pton(socket.AF_INET6 if fam == 6 else socket.AF_INET, a) for a in addresses
    ]
    start = time.perf_counter()
    out: dict[str, object] = {}
    try:
        if mode == "dump":
            done = await conntrack.flush(channel, packed, time.monotonic() + 60)
            out["deleted"] = done.deleted
        elif mode == "kernel":
            fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
            channel.submit([kernel_flush(fam, a) for a in packed], fut.set_result)
            out["errors"] = sorted(set(await fut))
        elif mode == "filtered-dump":  # what a CTA_FILTER dump returns for the first address
            body = conntrack.dump_request(fam) + dst_filter(fam, packed[0])
            replies = await channel.request(conntrack.MSG_GET, NLM_F_REQUEST | NLM_F_DUMP, body)
            af = socket.AF_INET6 if fam == 6 else socket.AF_INET
            out["returned"] = sorted(
                {
                    socket.inet_ntop(af, conntrack.orig_dst(r) or bytes(16 if fam == 6 else 4))
                    for r in replies
                }
            )
    finally:
        channel.close()
    out["ms"] = round((time.perf_counter() - start) * 1000, 2)
    return out


def test_flush_strategies() -> None:
    from tests.netns.natlab import NatLab

    with NatLab("bench", echo=False) as lab:
        r = lab.router
        lab.run(r, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=300")
        moved_all = [f"203.0.113.{100 + i}" for i in range(100)]
        others = [f"198.51.100.{10 + i}" for i in range(50)]
        for prefix in ("203.0.113.0/24", "198.51.100.0/26"):
            lab.ip(r, "route", "replace", prefix, "via", "192.0.2.1", "dev", "wan0")

        def fill(total: int, moved: Sequence[str], per: int) -> int:
            lab.run(r, "conntrack", "-F", check=False)
            lab.run(
                lab.client,
                sys.executable,
                "-m",
                "tests.netns.ctagents",
                "udp",
                str(per),
                "10000",
                *moved,
            )
            rest = (total - per * len(moved)) // len(others)
            lab.run(
                lab.client,
                sys.executable,
                "-m",
                "tests.netns.ctagents",
                "udp",
                str(rest),
                "20000",
                *others,
            )
            return int(lab.run(r, "conntrack", "-C").stdout)

        for total, n_moved, n_addr in CASES:
            moved = moved_all[:n_addr]
            for mode in ("dump", "kernel"):
                size = fill(total, moved, n_moved // n_addr)
                res = lab.run(
                    r,
                    sys.executable,
                    "-m",
                    "tests.bench.test_flush_strategies",
                    mode,
                    *moved,
                    timeout=300,
                )
                left = int(lab.run(r, "conntrack", "-C").stdout)
                print(
                    f"\ntable {size}, {n_moved} moved over {n_addr} addresses: {mode}: "
                    f"{res.stdout.strip()}, deleted {size - left}"
                )
                assert size - left == n_moved
        # The IPv6 filter, for the record.
        lab.run(r, "conntrack", "-F", check=False)
        six = ["2001:db8:365::10", "2001:db8:365::11", "2001:db8:365::12"]
        lab.run(lab.client, sys.executable, "-m", "tests.netns.ctagents", "udp", "2", "10000", *six)
        res = lab.run(
            r, sys.executable, "-m", "tests.bench.test_flush_strategies", "filtered-dump", six[0]
        )
        print(f"\nCTA_FILTER dump for IPv6 destination {six[0]} returns: {res.stdout.strip()}")


if __name__ == "__main__":
    print(json.dumps(asyncio.run(inside(sys.argv[1], sys.argv[2:]))))
