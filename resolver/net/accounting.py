"""What broke out, as the kernel counts it, and the flows a move must cut: the counters' owner.

`Accounting` keeps resolverd's nftables table (`traffic.py`: one counter per policy row and
category per breakout link, and an element per held address that counts its own bytes), and a
dedicated ctnetlink channel for `conntrack.flush`. `Installs` hands it the held addresses as
their set entries go out (`count`, same timeouts, never waited on by a reply) and as they go
(`release`); `LinkWatch` asks it to cut the flows of the addresses a move or withdrawal took
away (`flush`). Reading is off the hot path: the class counters are read once per
REFRESH_EVERY by the sweep and before a `status`; the per-address counters only for `routes`.

Its interface, and the null counters of the dry-run and the off switch, are in `accountingapi`.
A table that cannot be made (no nf_tables) is reported in status and counting stays off; the
breakout runs on.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Collection, Container, Iterable, Sequence
from typing import Any, Final

from resolver.config import BreakoutConfig
from resolver.net import conntrack, netlink, nftables, traffic, trafficprune
from resolver.net.accountingapi import CountItem
from resolver.net.traffic import BARE, Layout, TrafficClass

log = logging.getLogger(__name__)

# Longest a conntrack flush may take (50,000 entries: 0.1 s; 206,000: 0.4-0.7)
FLUSH_TIME: Final = 2.0
READ_TIME: Final = 1.0  # longest a status waits for the counters
REFRESH_EVERY: Final = 10.0  # seconds between two reads of the class counters by the sweep
# New elements wait this long to go out together: one transaction (and one crossing to the
# netlink thread) for every answer of 20 ms, not one per install batch. A new address's
# first packets within it (a handshake) are not counted.
COUNT_DELAY: Final = 0.02
# Each transaction that adds elements makes the kernel validate the whole table again, every
# element's goto included (nft_table_validate walks the maps): about 53 ns an element on Linux
# 6.18, 1.6 ms a transaction with 30,000 held (measured in a namespace). Spacing the
# transactions by this much per held address keeps that walk under 4% of a CPU: 20 ms up to
# 13,000 held, 45 ms at 30,000.
SPACING_PER_HELD: Final = 1.5e-6


class Accounting:
    """The traffic counters and the conntrack flush of one breakout (kernel mode)."""

    def __init__(self, cfg: BreakoutConfig, count_delay: float = COUNT_DELAY) -> None:
        self.cfg = cfg
        self.count_delay = count_delay  # 0: each `count` goes out at once
        self.rows: dict[int, TrafficClass] = {}
        self.layout: Layout | None = None
        self.since: int | None = None
        self.counting = False  # the table is in place and elements go to it
        self.problem: str | None = None
        self.nfnl: netlink.ChannelLike | None = None  # the counters' elements and reads
        self.ct: netlink.ChannelLike | None = None  # conntrack: a dump must not delay the elements
        self.loop: asyncio.AbstractEventLoop | None = None
        self.counted: dict[bytes, TrafficClass] = {}  # address -> the class of its element
        self.totals: list[traffic.Traffic] = []
        self.flushed = 0
        self.flush_failed = 0
        self.element_errors = 0
        self._read_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._queued: dict[bytes, CountItem] = {}  # address -> its newest item (bounded by them)
        self._timer: asyncio.TimerHandle | None = None
        self._setup_lock = asyncio.Lock()
        self._unready = False  # the rows may name classes the next setup makes: elements wait

    def configure(self, cfg: BreakoutConfig, classes: dict[int, TrafficClass]) -> None:
        """The links and the rows' classes (start and reload); `open` applies them. Until
        then no element goes out: a new row's chain does not exist yet."""
        self.cfg, self.rows, self._unready = cfg, dict(classes), True

    async def open(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        try:
            if self.cfg.count_traffic and self.nfnl is None:
                nfnl = netlink.Channel(netlink.NETLINK_NETFILTER)
                nfnl.attach(loop)
                self.nfnl = nfnl
            if self.cfg.flush_conntrack and self.ct is None:
                ct = netlink.Channel(netlink.NETLINK_NETFILTER)
                ct.attach(loop)
                self.ct = ct
        except OSError as err:
            self.problem = f"cannot open a netfilter netlink socket: {err}"
            log.warning("breakout: %s; no traffic counters, no conntrack flush", self.problem)
            return
        if self.cfg.count_traffic:
            await self._setup()
        elif self.layout is not None and self.nfnl is not None:
            await self.remove()  # count_traffic turned off by a reload

    async def _setup(self) -> None:
        """Make or update the table for the links and the classes of the rows and of the held
        elements (idempotent); delete the classes left over (`trafficprune`). One at a time
        (a reload's, the sweep's after the table went); elements queued meanwhile go after
        it, when every class they name has its chain."""
        async with self._setup_lock:
            self._unready = True
            try:
                await self._make()
            finally:
                self._unready = False
                if self._queued:
                    self.send_counted()

    async def _make(self) -> None:
        assert self.nfnl is not None
        links = tuple(link.interface for link in self.cfg.links)
        try:
            since = await traffic.read_since(self.nfnl, BARE)
            if since is None:  # made anew: no element survived
                self.counted.clear()
            elif not self.counted:  # a restart: the elements that survived it keep their class
                await self._adopt()
            classes = set(self.rows.values()) | set(self.counted.values())
            layout = Layout(links, tuple(sorted(classes, key=traffic.class_order)))
            made, since = since is None, since or int(time.time())
            codes = await self._submit(traffic.setup(layout, since))
        except (netlink.NetlinkSocketError, OSError) as err:
            self._off(f"nftables table inet {traffic.TABLE}: {err}")
            return
        bad = nftables.failed(codes)
        if bad:
            self._off(f"nftables table inet {traffic.TABLE}: {errno.errorcode.get(bad, bad)}")
            return
        self.layout, self.since, self.counting, self.problem = layout, since, True, None
        if made:
            log.info("breakout: traffic counters start at zero (table inet %s made)", traffic.TABLE)
        await trafficprune.prune_table(self.nfnl, self._submit, layout)

    async def _adopt(self) -> None:
        """A restart: the elements that survived it keep their class; foreign ones go."""
        assert self.nfnl is not None
        try:
            counted, foreign = await trafficprune.read_classes(self.nfnl)
        except netlink.NetlinkSocketError as err:
            log.warning("breakout: cannot read the counters' elements: %s", err)
            return
        self.counted.update(counted)
        for family, gone in foreign.items():
            for transaction in traffic.release(BARE, family, gone):
                self._send(transaction)

    def _off(self, problem: str) -> None:
        self.counting, self.problem = False, problem
        log.warning("breakout: no traffic counters: %s", problem)

    def _submit(self, messages: list[netlink.Message]) -> asyncio.Future[list[int]]:
        assert self.loop is not None and self.nfnl is not None
        fut: asyncio.Future[list[int]] = self.loop.create_future()

        def settled(codes: list[int]) -> None:
            if not fut.done():
                fut.set_result(codes)

        self.nfnl.submit(messages, settled, atomic=True)
        return fut

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._tasks:
            task.cancel()
        for channel in (self.nfnl, self.ct):
            if channel is not None:
                channel.close()
        self.nfnl = self.ct = None
        self.counting = False

    # -- elements (with the set entries; nothing waits on them) ---------------------------

    def count(self, items: Sequence[CountItem]) -> None:
        """Add or refresh the elements of held addresses, each in its row's class, within
        COUNT_DELAY (longer with many held: SPACING_PER_HELD)."""
        if not self.counting or self.nfnl is None or self.layout is None:
            return
        queued = self._queued
        for item in items:
            queued[item[1]] = item
        if self.count_delay <= 0 or self.loop is None:
            self.send_counted()
        elif self._timer is None:
            delay = max(self.count_delay, len(self.counted) * SPACING_PER_HELD)
            self._timer = self.loop.call_later(delay, self.send_counted)

    def send_counted(self) -> None:
        self._timer = None
        if self._unready:
            return  # `_setup` sends them
        items, self._queued = self._queued, {}
        if not self.counting or self.nfnl is None or self.layout is None:
            return
        fresh: dict[int, list[tuple[bytes, TrafficClass, int]]] = {4: [], 6: []}
        counted, rows, layout = self.counted, self.rows, self.layout
        for family, packed, timeout, row in items.values():
            cls = rows.get(row)
            if cls is None:
                continue
            old = counted.get(packed)
            if old is None or old == cls:
                fresh[family].append((packed, cls, timeout))
            else:  # the address's answers now come from another row
                self._send(traffic.reclassify(layout, family, packed, cls, timeout))
            counted[packed] = cls
        for family, todo in fresh.items():
            for transaction in traffic.hold(layout, family, todo) if todo else ():
                self._send(transaction)

    def release(self, items: Iterable[tuple[int, bytes]]) -> None:
        if not self.counting or self.nfnl is None or self.layout is None:
            return
        items = list(items)
        if self._queued and self._unready:  # not sent yet: it must not be, after this
            for _, packed in items:
                self._queued.pop(packed, None)
        elif self._queued:
            self.send_counted()  # an element queued now must not outlive its release
        gone: dict[int, list[bytes]] = {4: [], 6: []}
        for family, packed in items:
            if self.counted.pop(packed, None) is not None:
                gone[family].append(packed)
        for family, packed_list in gone.items():
            for transaction in traffic.release(self.layout, family, packed_list):
                self._send(transaction)

    def release_unheld(self, held: Container[bytes]) -> int:
        """At start, once the holds are restored: the elements adopted from before the restart
        whose address no hold keeps go (nothing else would release them; their classes can
        then be pruned). Returns how many went."""
        if not self.counting:
            return 0
        gone = [(4 if len(p) == 4 else 6, p) for p in self.counted if p not in held]
        if gone:  # (a release sends what is queued at once)
            self.release(gone)
        return len(gone)

    def _send(self, messages: list[netlink.Message]) -> None:
        assert self.nfnl is not None
        self.nfnl.submit(messages, self._settled, atomic=True)

    def _settled(self, codes: list[int]) -> None:
        bad = nftables.failed(codes)
        if bad:
            self.element_errors += 1
            log.debug("breakout: traffic elements refused: %s", errno.errorcode.get(bad, bad))

    # -- conntrack --------------------------------------------------------------------------

    def flush(self, addresses: Collection[bytes]) -> None:
        """Delete, in the background, the conntrack entries whose original destination is
        one of `addresses` (their routes moved or went): their NAT is the old link's."""
        if self.ct is None or not self.cfg.flush_conntrack or not addresses or self.loop is None:
            return  # (a reload may turn flush_conntrack off: the channel stays, unused)
        task = self.loop.create_task(self._flush(list(addresses)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, addresses: list[bytes]) -> None:
        assert self.ct is not None
        started = time.monotonic()
        done = await conntrack.flush(self.ct, addresses, started + FLUSH_TIME)
        self.flushed += done.deleted
        self.flush_failed += done.failed
        log.info(
            "breakout: %d conntrack entries to %d moved addresses deleted in %.0f ms%s",
            done.deleted, len(addresses), (time.monotonic() - started) * 1000,
            "" if done.complete else " (stopped at the deadline or on an error)",
        )  # fmt: skip

    # -- reading ----------------------------------------------------------------------------

    def refresh_due(self) -> bool:
        return self.counting and time.monotonic() - self._read_at >= REFRESH_EVERY

    async def refresh(self) -> None:
        """Read the class counters (the sweep, every REFRESH_EVERY; a status, first)."""
        if not self.counting or self.nfnl is None or self.layout is None:
            return
        self._read_at = time.monotonic()
        channel, layout = self.nfnl, self.layout
        try:
            totals = await asyncio.wait_for(traffic.read_counters(channel, layout), READ_TIME)
            since = await asyncio.wait_for(traffic.read_since(channel, layout), READ_TIME)
        except (TimeoutError, netlink.NetlinkSocketError) as err:
            log.warning("breakout: cannot read the traffic counters: %s", err)
            return
        if since is None:  # someone flushed the ruleset: make it anew, counters from zero
            log.warning("breakout: table inet %s is gone; making it again", traffic.TABLE)
            await self._setup()
            return
        self.totals, self.since = totals, since

    async def per_address(self) -> dict[bytes, tuple[int, int]]:
        """Bytes and packets per held address (`routes`): one dump per family."""
        if not self.counting or self.nfnl is None or self.layout is None:
            return {}
        out: dict[bytes, tuple[int, int]] = {}
        try:
            for family in (4, 6):
                held = await asyncio.wait_for(
                    traffic.read_held(self.nfnl, self.layout, family), READ_TIME
                )
                out.update((h.address, (h.bytes, h.packets)) for h in held)
        except (TimeoutError, netlink.NetlinkSocketError) as err:
            log.warning("breakout: cannot read the per-address counters: %s", err)
        return out

    async def remove(self) -> None:
        """Delete the table, counters and all (`resolverd --cleanup`, count_traffic off)."""
        if self.nfnl is None:
            return
        layout = self.layout or BARE
        codes = await self._submit(traffic.remove(layout))
        bad = nftables.failed(codes)
        if bad and bad != errno.ENOENT:
            log.warning("breakout: cannot delete table inet %s: %s", traffic.TABLE, bad)
        self.layout, self.counting, self.since = None, False, None
        self.counted.clear()
        self.totals = []

    def report(self) -> dict[str, Any]:
        rows = [
            {"row": t.row, "category": t.category or "", "link": t.link, "bytes": t.bytes,
             "packets": t.packets}
            for t in self.totals
        ]  # fmt: skip
        out: dict[str, Any] = {
            "traffic": rows, "traffic_since": self.since, "conntrack_flushed": self.flushed,
        }  # fmt: skip
        if self.problem:
            out["traffic_error"] = self.problem
        return out
