"""Everything resolverd changes in the kernel, behind one interface, and its dry-run twin.

`Kernel` programs routes in resolverd's tables, the ip rules, and the ipset/nftables entries,
through two `netlink.Channel`s (rtnetlink, nfnetlink). Its batch methods never block and never
raise for kernel errors: they hand back an errno per item through a callback, on the loop.
`dryrun.DryRunKernel` has the same methods and changes nothing. The breakout holds one or the
other and never asks which (breakout.mode off means no breakout at all).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from resolver.config import BreakoutConfig, NftSet
from resolver.net import ipsets, netlink, nftsets, routes
from resolver.net.errors import BreakoutError, has_net_admin, needs_net_admin
from resolver.net.kernelapi import EntryItem, RouteItem, Settled, settled_future
from resolver.net.routes import AF, NextHop, Route, RouteEncoder, Rule, RuleSpec

log = logging.getLogger(__name__)

# Whether an ipset exists and can take entries with timeouts (ipsets.inspect's signature).
InspectIpset = Callable[[netlink.Channel, str, int], Awaitable[bool]]


class Kernel:
    """Routes, rules and set entries for one breakout configuration. `net_admin` (whether the
    process may change the network) and `inspect_ipset` are the capability probes it asks;
    the defaults ask the kernel (tests hand in their own)."""

    can_probe = True  # health probes can use its probe tables

    def __init__(
        self,
        cfg: BreakoutConfig,
        *,
        net_admin: Callable[[], bool] = has_net_admin,
        inspect_ipset: InspectIpset = ipsets.inspect,
    ) -> None:
        self.cfg = cfg
        self._net_admin = net_admin
        self._inspect_ipset = inspect_ipset
        self.rtnl: netlink.Channel | None = None
        self.nfnl: netlink.Channel | None = None
        self.encoder = RouteEncoder(cfg.table, cfg.route_protocol, {4: None, 6: None})
        self.ipset: dict[int, ipsets.IpsetEncoder] = {}
        self.nftset: dict[int, nftsets.NftSetEncoder] = {}
        self._missing: list[tuple[int, str]] = []  # ipsets to create: (family, name)

    @property
    def has_sets(self) -> bool:
        return bool(self.ipset or self.nftset)

    async def open(
        self, loop: asyncio.AbstractEventLoop, create: bool = True, strict: bool = True
    ) -> None:
        """Open the sockets and check every set, changing nothing; with `create`, then create
        the missing ipsets. BreakoutError for a set that cannot be used. Not `strict`
        (cleanup): missing sets and unusable nftables sets are left alone."""
        if not self._net_admin():
            raise needs_net_admin("install routes, rules and set entries")
        sets = [(4, self.cfg.ipset4, self.cfg.nftset4), (6, self.cfg.ipset6, self.cfg.nftset6)]
        try:
            if self.rtnl is None:
                self.rtnl = netlink.Channel(netlink.NETLINK_ROUTE, strict=True)
                self.rtnl.attach(loop)
            if self.nfnl is None and any(name or nft for _, name, nft in sets):
                # One writer thread for both: an answer's routes and set entries cross together.
                self.nfnl = netlink.Channel(netlink.NETLINK_NETFILTER, share=self.rtnl)
                self.nfnl.attach(loop)
        except PermissionError as err:
            raise needs_net_admin("open netlink sockets") from err
        except OSError as err:
            raise BreakoutError(f"cannot open a netlink socket: {err}") from err
        self._missing = []
        for family, name, nft in sets:
            if name:
                await self._check_ipset(family, name, strict)
            if nft is not None:
                await self._check_nftset(family, nft, strict)
        if create:
            await self.create_sets()

    async def _check_ipset(self, family: int, name: str, strict: bool) -> None:
        assert self.nfnl is not None
        try:
            exists = await self._inspect_ipset(self.nfnl, name, family)
        except netlink.NetlinkSocketError as err:
            if err.code == errno.EPERM:
                raise needs_net_admin("use ipsets") from err
            raise BreakoutError(f"ipset {name}: {err.strerror}") from err
        if exists:
            self.ipset[family] = ipsets.IpsetEncoder(name, family)
        elif strict:
            self._missing.append((family, name))

    async def _check_nftset(self, family: int, nft: NftSet, strict: bool) -> None:
        assert self.nfnl is not None
        try:
            await nftsets.check_nftset(self.nfnl, nft, family)
        except BreakoutError as err:
            if strict:
                raise
            log.info("leaving nftables set alone: %s", err)
            return
        self.nftset[family] = nftsets.NftSetEncoder(nft, family)

    async def create_sets(self) -> None:
        """Create the ipsets `open` found missing. BreakoutError (after trying all)."""
        cfg = self.cfg
        missing, self._missing = self._missing, []
        if not missing:
            return
        nfnl = self.nfnl
        if nfnl is None:
            raise BreakoutError(f"cannot create ipset {missing[0][1]}: the kernel side is closed")
        failed: list[str] = []
        for family, name in missing:
            try:
                await ipsets.create(
                    nfnl, name, family, cfg.min_hold + cfg.grace or 1, max(65536, cfg.max_entries)
                )
            except BreakoutError as err:
                failed.append(str(err))
                continue
            self.ipset[family] = ipsets.IpsetEncoder(name, family)
        if failed:
            raise BreakoutError("; ".join(failed))

    async def missing_sets(self) -> list[str]:
        """The configured ipsets that do not exist any more (someone destroyed one); they are
        queued for `create_sets`. nftables sets belong to the firewall: only reported."""
        gone: list[str] = []
        if self.nfnl is None:
            return gone
        for family, encoder in list(self.ipset.items()):
            if not await self._inspect_ipset(self.nfnl, encoder.name, family):
                gone.append(f"ipset {encoder.name}")
                self._missing.append((family, encoder.name))
        for family, nft in list(self.nftset.items()):
            try:
                await nftsets.check_nftset(self.nfnl, nft.set, family)
            except BreakoutError:
                gone.append(f"nftables set {nftsets.describe(nft.set)}")
        return gone

    def close(self) -> None:
        for ch in (self.rtnl, self.nfnl):
            if ch is not None:
                ch.close()
        self.rtnl = self.nfnl = None

    def set_next_hops(self, hops: dict[int, NextHop | None]) -> None:
        """Where each family's routes go now (None: nowhere, the family is withdrawn)."""
        if hops != self.encoder.next_hops:
            self.encoder = RouteEncoder(self.cfg.table, self.cfg.route_protocol, dict(hops))

    # -- routes and rules ---------------------------------------------------------------------

    def add_routes(self, items: Sequence[RouteItem], settled: Settled) -> None:
        enc = self.encoder
        if self.rtnl is None:
            settled([errno.ESHUTDOWN] * len(items))
            return
        if not all(enc.can_add(f) for f, _, _ in items):
            settled([0 if enc.can_add(f) else errno.ENETUNREACH for f, _, _ in items])
            return
        self.rtnl.submit([enc.add(f, p, n) for f, p, n in items], settled)

    def del_routes(self, items: Sequence[RouteItem], settled: Settled) -> None:
        if self.rtnl is None:
            settled([errno.ESHUTDOWN] * len(items))
            return
        enc = self.encoder
        self.rtnl.submit([enc.delete(f, p, n) for f, p, n in items], settled)

    def del_table_routes(self, found: Sequence[Route], settled: Settled) -> None:
        """Remove routes a dump found, each in its own table (ours: the protocol must match)."""
        if self.rtnl is None:
            settled([errno.ESHUTDOWN] * len(found))
            return
        encoders: dict[int, RouteEncoder] = {}
        messages = []
        for r in found:
            enc = encoders.get(r.table)
            if enc is None:
                enc = encoders[r.table] = RouteEncoder(r.table, self.cfg.route_protocol, {})
            messages.append(enc.delete(r.family, socket.inet_pton(AF[r.family], r.dst), r.dst_len))
        self.rtnl.submit(messages, settled)

    def probe_table(self, table: int, family: int, hop: NextHop | None, settled: Settled) -> None:
        """A health probe table of ours: `unreachable default` (its last word, so that a
        lookup there never falls through to the next rule: to the tunnel) and, while the link
        is there, the default route through it."""
        if self.rtnl is None:
            settled([errno.ESHUTDOWN])
            return
        enc = RouteEncoder(table, self.cfg.route_protocol, {family: hop})
        messages = [enc.unreachable(family)]
        if hop is not None:
            messages.append(enc.add(family, bytes(4 if family == 4 else 16), 0))
        self.rtnl.submit(messages, settled)

    async def dump_routes(self, table: int | None = None) -> list[Route]:
        """Every route in the breakout table (or `table`), ours and others'."""
        assert self.rtnl is not None
        return await routes.dump_routes(self.rtnl, self.cfg.table if table is None else table)

    async def dump_rules(self) -> list[Rule]:
        assert self.rtnl is not None
        return await routes.dump_rules(self.rtnl)

    async def change_rules(self, add: Iterable[RuleSpec], remove: Iterable[RuleSpec]) -> int:
        """Add the rules of `add` that are missing (v4 and v6), remove those of `remove` that
        carry our protocol; returns how many were changed. BreakoutError on a refusal."""
        assert self.rtnl is not None
        present = await self.dump_rules()
        messages: list[netlink.Message] = []
        for spec in add:
            for family in spec.families:
                if not any(r.family == family and spec.matches(r) for r in present):
                    messages.append(spec.message(family, add=True))
        for spec in remove:
            for family in spec.families:
                if any(r.family == family and spec.matches(r) and r.protocol == spec.protocol
                       for r in present):  # fmt: skip
                    messages.append(spec.message(family, add=False))
        rtnl = self.rtnl
        codes = await settled_future(lambda settled: rtnl.submit(messages, settled))
        bad = [c for c in codes if c not in (0, errno.EEXIST, errno.ENOENT)]
        if errno.EPERM in bad:
            raise needs_net_admin("change ip rules")
        if bad:
            raise BreakoutError(f"cannot change the ip rules: {os.strerror(bad[0])}")
        return sum(1 for c in codes if c == 0)

    # -- set entries --------------------------------------------------------------------------

    def add_entries(self, items: Sequence[EntryItem], settled: Settled) -> None:
        """Add (or refresh the timeout of) the set entries of (family, packed, timeout)."""
        self._entries(items, settled, add=True)

    def del_entries(self, items: Sequence[EntryItem], settled: Settled) -> None:
        """Remove set entries: 0 removed, ENOENT was not there (nftables always says 0)."""
        self._entries(items, settled, add=False)

    def _entries(self, items: Sequence[EntryItem], settled: Settled, add: bool) -> None:
        if self.nfnl is None or not items:
            settled([0] * len(items))
            return
        jobs: list[tuple[list[int], list[netlink.Message], bool]] = []
        for family in (4, 6):
            index = [i for i, it in enumerate(items) if it[0] == family]
            if not index:
                continue
            ips = self.ipset.get(family)
            if ips is not None:
                msgs = [
                    ips.add(items[i][1], items[i][2]) if add else ips.delete(items[i][1])
                    for i in index
                ]
                jobs.append((index, msgs, False))
            nft = self.nftset.get(family)
            if nft is not None:
                # One transaction per message group; each covers a slice of the items.
                step = nftsets.ELEMENTS_PER_MESSAGE
                txs = (
                    nft.add([(items[i][1], items[i][2]) for i in index])
                    if add
                    else nft.delete([items[i][1] for i in index])
                )
                for k, tx in enumerate(txs):
                    jobs.append((index[k * step : (k + 1) * step], tx, True))
        if not jobs:
            settled([0] * len(items))
            return
        join = _Join(len(items), len(jobs), settled)
        for index, msgs, atomic in jobs:
            done = join.part(index)
            if atomic:
                # A transaction settles as one: its element message's errno covers all items.
                self.nfnl.submit(msgs, _spread(done, len(index)), atomic=True)
            else:
                self.nfnl.submit(msgs, done if add else _ipset_errors(done))

    def note(
        self, action: str, packed: bytes, names: str | list[str], reason: str, *args: object
    ) -> None:
        """A decision worth recording (`reason` % `args`): only the dry-run kernel keeps
        them; here it costs a call and nothing is formatted."""

    def report(self) -> dict[str, Any]:
        """What status adds for this kernel side: nothing."""
        return {}


class _Join:
    """Merge the errno lists of several batches over the same items into one callback."""

    def __init__(self, size: int, parts: int, settled: Settled) -> None:
        self.errors = [0] * size
        self.left = parts
        self.settled = settled

    def part(self, index: Sequence[int]) -> Settled:
        def done(errors: list[int]) -> None:
            for i, code in zip(index, errors, strict=False):
                if code and not self.errors[i]:
                    self.errors[i] = code
            self.left -= 1
            if self.left == 0:
                self.settled(self.errors)

        return done


def _spread(done: Settled, count: int) -> Settled:
    """Map an nf_tables transaction's errnos (begin, elements, end) onto its `count` items."""

    def settled(errors: list[int]) -> None:
        code = next((e for e in errors if e), 0)
        done([code] * count)

    return settled


def _ipset_errors(done: Settled) -> Settled:
    """An entry that was not there (it timed out) becomes ENOENT: not an error, not removed."""

    def settled(errors: list[int]) -> None:
        done([errno.ENOENT if e and ipsets.delete_ok(e) else e for e in errors])

    return settled
