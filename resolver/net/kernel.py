"""Everything resolverd changes in the kernel, behind one small interface.

`Kernel` programs routes in the breakout table, the ip rules, and the ipset/nftables entries.
Its batch methods never block and never raise for kernel errors: they hand back an errno per
item through a callback (see netlink.Channel). The breakout's tests substitute a fake with
the same methods.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
from collections.abc import Callable, Sequence
from typing import Protocol

from pyroute2.netlink.exceptions import NetlinkError

from resolver.config import BreakoutConfig, NftSet
from resolver.net import ipsets, netlink, nftsets, routes
from resolver.net.errors import BreakoutError
from resolver.net.routes import Route, RouteEncoder

log = logging.getLogger(__name__)

CAP_NET_ADMIN = 12
RouteItem = tuple[int, bytes, int]  # family, packed address, prefix length
EntryItem = tuple[int, bytes, int]  # family, packed address, timeout seconds
Settled = Callable[[list[int]], None]


def has_net_admin() -> bool:
    """Whether this process holds CAP_NET_ADMIN in its effective set."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError as err:
        log.warning("cannot read capabilities from /proc/self/status: %s", err)
    return False


def needs_net_admin(what: str) -> BreakoutError:
    return BreakoutError(
        f"breakout mode kernel needs CAP_NET_ADMIN to {what}: run resolverd as root or with "
        "AmbientCapabilities=CAP_NET_ADMIN (see systemd/resolverd.service), or set "
        "breakout.mode: dry-run"
    )


def set_timeout(expires: float, now: float) -> int:
    """Seconds for a set entry that must live until `expires` (at least 1: 0 means forever)."""
    return max(1, math.ceil(expires - now))


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


class KernelLike(Protocol):
    """What the breakout needs from the kernel side: `Kernel`, or a fake in unit tests."""

    @property
    def has_sets(self) -> bool: ...
    async def start(self, loop: asyncio.AbstractEventLoop) -> None: ...
    async def check(self, loop: asyncio.AbstractEventLoop) -> None: ...
    async def create_sets(self) -> None: ...
    def close(self) -> None: ...
    def set_link(self, oif: int | None) -> None: ...
    def add_routes(self, items: Sequence[RouteItem], settled: Settled) -> None: ...
    def del_routes(self, items: Sequence[RouteItem], settled: Settled) -> None: ...
    def add_entries(self, items: Sequence[EntryItem], settled: Settled) -> None: ...
    def del_entries(self, items: Sequence[EntryItem], settled: Settled) -> None: ...
    async def dump_routes(self) -> list[Route]: ...
    async def ensure_rules(self) -> int: ...
    async def remove_rules(self) -> int: ...


class Kernel:
    """Routes, rules and set entries for one breakout configuration."""

    def __init__(self, cfg: BreakoutConfig) -> None:
        self.cfg = cfg
        self.rtnl: netlink.Channel | None = None
        self.nfnl: netlink.Channel | None = None
        self.encoder = RouteEncoder(cfg.table, cfg.route_protocol, None, cfg.gateway4, cfg.gateway6)
        self.ipset: dict[int, ipsets.IpsetEncoder] = {}
        self.nftset: dict[int, nftsets.NftSetEncoder] = {}
        self._missing: list[tuple[int, str]] = []  # ipsets to create: (family, name)

    @property
    def has_sets(self) -> bool:
        return bool(self.ipset or self.nftset)

    async def start(self, loop: asyncio.AbstractEventLoop, create: bool = True) -> None:
        """Check everything, then create the missing ipsets. Raises BreakoutError.

        With `create` false (cleanup), missing sets and unusable nftables sets are left alone.
        """
        await self.check(loop, strict=create)
        if create:
            await self.create_sets()

    async def check(self, loop: asyncio.AbstractEventLoop, strict: bool = True) -> None:
        """Open the sockets and check every set, changing nothing (`create_sets` then creates
        the missing ipsets). Raises BreakoutError for a set that cannot be used; with `strict`
        false, a missing or unusable nftables set is logged and left out instead."""
        if not has_net_admin():
            raise needs_net_admin("install routes, rules and set entries")
        sets = self._sets()
        self._missing = []
        try:
            if self.rtnl is None:
                self.rtnl = netlink.Channel(netlink.NETLINK_ROUTE, strict=True)
                self.rtnl.attach(loop)
            if self.nfnl is None and any(name or nft for _, name, nft in sets):
                self.nfnl = netlink.Channel(netlink.NETLINK_NETFILTER)
                self.nfnl.attach(loop)
        except PermissionError as err:
            raise needs_net_admin("open netlink sockets") from err
        except OSError as err:
            raise BreakoutError(f"cannot open a netlink socket: {err}") from err
        for family, name, nft in sets:
            try:
                if name:
                    proto = await ipsets.inspect_ipset(name, family)
                    if proto is None:
                        if strict:
                            self._missing.append((family, name))
                    else:
                        log.info("using existing ipset %s", name)
                        self.ipset[family] = ipsets.IpsetEncoder(name, family, proto)
                if nft is not None and self.nfnl is not None:
                    try:
                        await nftsets.check_nftset(self.nfnl, nft, family)
                    except BreakoutError as err:
                        if strict:
                            raise
                        log.info("leaving nftables set alone: %s", err)
                        continue
                    self.nftset[family] = nftsets.NftSetEncoder(nft, family)
            except (OSError, NetlinkError) as err:
                raise _set_error(err, "use ipsets and nftables sets") from err

    async def create_sets(self) -> None:
        """Create the ipsets `check` found missing. Raises BreakoutError (after trying all)."""
        cfg = self.cfg
        default_timeout = cfg.min_hold + cfg.grace or 1
        missing, self._missing = self._missing, []
        failed: list[str] = []
        for family, name in missing:
            try:
                proto = await ipsets.create_ipset(
                    name, family, default_timeout, max(65536, cfg.max_entries)
                )
            except BreakoutError as err:
                failed.append(str(err))
                continue
            except (OSError, NetlinkError) as err:
                failed.append(str(_set_error(err, "create ipsets")))
                continue
            self.ipset[family] = ipsets.IpsetEncoder(name, family, proto)
        if failed:
            raise BreakoutError("; ".join(failed))

    def _sets(self) -> list[tuple[int, str | None, NftSet | None]]:
        cfg = self.cfg
        return [(4, cfg.ipset4, cfg.nftset4), (6, cfg.ipset6, cfg.nftset6)]

    def close(self) -> None:
        for ch in (self.rtnl, self.nfnl):
            if ch is not None:
                ch.close()
        self.rtnl = self.nfnl = None

    def set_link(self, oif: int | None) -> None:
        """The breakout interface's current index (None: gone); routes go out through it."""
        if oif != self.encoder.oif:
            cfg = self.cfg
            self.encoder = RouteEncoder(
                cfg.table, cfg.route_protocol, oif, cfg.gateway4, cfg.gateway6
            )

    # -- routes -----------------------------------------------------------------------------

    def add_routes(self, items: Sequence[RouteItem], settled: Settled) -> None:
        if self.rtnl is None or self.encoder.oif is None:
            settled([errno.ENODEV] * len(items))
            return
        enc = self.encoder
        self.rtnl.submit([enc.add(f, p, n) for f, p, n in items], settled)

    def del_routes(self, items: Sequence[RouteItem], settled: Settled) -> None:
        if self.rtnl is None:
            settled([errno.ESHUTDOWN] * len(items))
            return
        enc = self.encoder
        self.rtnl.submit([enc.delete(f, p, n) for f, p, n in items], settled)

    async def dump_routes(self) -> list[Route]:
        """Every route in the breakout table, ours and others'."""
        assert self.rtnl is not None
        return await routes.dump_routes(self.rtnl, self.cfg.table)

    async def ensure_rules(self) -> int:
        cfg = self.cfg
        try:
            return await routes.ensure_rules(cfg.table, cfg.rule_priority, cfg.route_protocol)
        except NetlinkError as err:
            if err.code == errno.EPERM:
                raise needs_net_admin("add ip rules") from err
            raise BreakoutError(f"cannot add the ip rule for table {cfg.table}: {err}") from err

    async def remove_rules(self) -> int:
        cfg = self.cfg
        try:
            return await routes.remove_rules(cfg.table, cfg.rule_priority, cfg.route_protocol)
        except NetlinkError as err:
            if err.code == errno.EPERM:
                raise needs_net_admin("remove ip rules") from err
            raise BreakoutError(f"cannot remove the ip rules for table {cfg.table}: {err}") from err

    # -- set entries ------------------------------------------------------------------------

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
        jobs: list[tuple[list[int], list[list[netlink.Message]], bool]] = []
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
                jobs.append((index, [msgs], False))
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
                    jobs.append((index[k * step : (k + 1) * step], [tx], True))
        if not jobs:
            settled([0] * len(items))
            return
        join = _Join(len(items), len(jobs), settled)
        for index, groups, atomic in jobs:
            for msgs in groups:
                done = join.part(index)
                if atomic:
                    # A transaction settles as one: its element message's errno covers all items.
                    self.nfnl.submit(msgs, _spread(done, len(index)), atomic=True)
                else:
                    self.nfnl.submit(msgs, done if add else _ipset_errors(done))


def _set_error(err: OSError | NetlinkError, what: str) -> BreakoutError:
    """A BreakoutError for a failure to inspect or create a set (EPERM: the capability)."""
    code = err.code if isinstance(err, NetlinkError) else err.errno
    if isinstance(err, PermissionError) or code == errno.EPERM:
        return needs_net_admin(what)
    return BreakoutError(f"breakout sets: {err}")


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
