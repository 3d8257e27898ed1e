"""A reload's new kernel side: verified before anything changes, then moved to.

`verify` opens the kernel side of the new config and reads what the move needs, changing
nothing: any failure is a BreakoutError and the running config stays in force. `move` runs past
the point of no return: it creates the new config's missing ipsets and, when the table, route
protocol or rule priority changed, adds the new rules, empties the old table of resolverd's
routes and removes the old rules. Its kernel errors are logged and counted, never raised.
What happens to the holds is the breakout's business (Breakout.reconfigure).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from resolver.config import BreakoutConfig
from resolver.net.errors import BreakoutError
from resolver.net.holds import Hold
from resolver.net.installs import Installs
from resolver.net.kernel import KernelLike
from resolver.net.prefixes import CidrRoute, PolicyPrefixes
from resolver.net.routes import HOST_LEN, RTN_UNICAST, Route, foreign_hosts, owned

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Change:
    """What a new breakout config changes on the kernel side."""

    moved: bool  # table, route protocol or rule priority: everything moves over
    sets: bool  # ipsets or nftables sets
    hop: bool  # interface or gateways: every route is re-installed in place

    @classmethod
    def between(cls, old: BreakoutConfig, new: BreakoutConfig) -> Change:
        return cls(
            moved=(new.table, new.route_protocol, new.rule_priority)
            != (old.table, old.route_protocol, old.rule_priority),
            sets=(new.ipset4, new.ipset6, new.nftset4, new.nftset6)
            != (old.ipset4, old.ipset6, old.nftset4, old.nftset6),
            hop=(new.interface, new.gateway4, new.gateway6)
            != (old.interface, old.gateway4, old.gateway6),
        )

    @property
    def kernel(self) -> bool:
        """Whether the kernel side must be swapped for a new one."""
        return self.moved or self.sets or self.hop


@dataclass(frozen=True, slots=True)
class Swap:
    """A verified kernel side for a new config, and what was read for the move to it."""

    kernel: KernelLike
    old_owned: list[Route]  # our routes in the old table (when the table moves)
    foreign: set[str]  # host routes in the new table that are not ours


async def verify(
    cfg: BreakoutConfig,
    old_cfg: BreakoutConfig,
    old_kernel: KernelLike | None,
    factory: Callable[[BreakoutConfig], KernelLike],
    loop: asyncio.AbstractEventLoop | None,
    moved: bool,
) -> Swap:
    """Start the kernel side of `cfg` and read what the move needs, changing nothing.
    BreakoutError when it cannot be used (the new side is closed again)."""
    if cfg.interface is None:
        raise BreakoutError("breakout.interface is required when breakout.mode is kernel")
    assert loop is not None and old_kernel is not None
    new = factory(cfg)
    try:
        await new.check(loop)  # sockets and sets; missing ipsets are created by `move`
        table = await new.dump_routes()
        old_table = await old_kernel.dump_routes() if moved else []
    except BaseException as err:
        new.close()
        if isinstance(err, OSError):  # netlink.NetlinkSocketError from a dump
            raise BreakoutError(f"breakout: cannot read the routing tables: {err}") from err
        raise
    return Swap(
        new, owned(old_table, old_cfg.route_protocol), foreign_hosts(table, cfg.route_protocol)
    )


async def move(
    swap: Swap,
    old_kernel: KernelLike,
    old_cfg: BreakoutConfig,
    cfg: BreakoutConfig,
    moved: bool,
    io: Installs,
    prefixes: PolicyPrefixes,
) -> bool:
    """Create the new side's sets; when the table moved, add its rules, empty the old table and
    remove the old rules. Returns whether the rules for `cfg` are in place (`io.rules_ok`)."""
    try:
        await swap.kernel.create_sets()
    except (BreakoutError, OSError) as err:
        _failed(io, "set entries for the missing sets will fail", err)
    if not moved:
        return io.rules_ok  # the same table and priority: the rules stay as they are
    rules_ok = True
    try:
        await swap.kernel.ensure_rules()
    except (BreakoutError, OSError) as err:
        rules_ok = False  # the next install tries again
        _failed(io, f"no ip rule for table {cfg.table} yet", err)
    stale = old_table_routes(swap.old_owned, io.holds.values(), prefixes.routed.values(), old_cfg)
    io.count_errors("remove the old table's routes")(await io.delete_table_routes(stale))
    try:
        await old_kernel.remove_rules()
    except (BreakoutError, OSError) as err:
        _failed(io, f"the ip rules for table {old_cfg.table} stay", err)
    return rules_ok


def old_table_routes(
    read: list[Route], holds: Iterable[Hold], prefixes: Iterable[CidrRoute], old_cfg: BreakoutConfig
) -> list[Route]:
    """Our routes in the old table: those read when verified, and whatever was installed since
    (every hold and prefix; deleting a route that is not there is fine)."""
    stale = {f"{r.dst}/{r.dst_len}": r for r in read}
    for family, address, length in [
        *((h.family, h.address, HOST_LEN[h.family]) for h in holds),
        *((c.family, c.cidr.split("/")[0], c.length) for c in prefixes),
    ]:
        stale.setdefault(
            f"{address}/{length}",
            Route(family, address, length, old_cfg.table, old_cfg.route_protocol, 0, RTN_UNICAST,
                  None, None),
        )  # fmt: skip
    return list(stale.values())


def _failed(io: Installs, consequence: str, err: Exception) -> None:
    io.counters["netlink_errors"] += 1
    log.error("breakout reconfigure: %s; %s", err, consequence)
