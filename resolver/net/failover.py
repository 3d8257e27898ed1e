"""Links: which networks are connected, and which link each family's routes go through.

`reassess` runs after every link, address or main-table route event, every probe verdict and
every reload: connected networks are never routed (holds inside one are removed, the config's
routes overlapping one are held back), and when a family's active link changes its routes
move in one batch (`move`): withdrawn when no link is usable (the traffic stays on the main
table: the tunnel; the holds are kept), restored when one is again, or re-installed through
the new link (NLM_F_REPLACE: a connection opened after the switch takes the new path at once).
Set entries stay (a move re-adds them with their holds' timeouts). Each move (the families
that changed together, from one link to another, to none or back) is logged once with its
reason and counted once (`failovers`); `withdrawn` and `restored` count the holds.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from resolver.net import repair, watch
from resolver.net.paths import LinkState

if TYPE_CHECKING:
    from resolver.net.breakout import Breakout

log = logging.getLogger(__name__)


def reassess(b: Breakout, initial: bool = False) -> None:
    """Recompute connected networks and the links' usability; act on what changed."""
    b._reassess_handle = None
    connected = b.view.connected()
    if connected != b._connected:
        b._connected = connected
        b.never.set_connected(connected)
        b._skip.clear()
        if not initial:
            drop_never_routed(b)
            follow_connected(b)
    b.paths.follow(b.view)
    watch.update_probe_tables(b)
    changes = b.paths.choose()
    b.kernel.set_paths(b.paths.paths())
    if initial or not changes:
        return
    # One move per (old, new) pair: both families leaving wan0 for wan1 are one event.
    moves: dict[tuple[LinkState | None, LinkState | None], list[int]] = {}
    for family, (old, new) in changes.items():
        moves.setdefault((old, new), []).append(family)
    for (old, new), families in moves.items():
        move(b, families, old, new)


def move(b: Breakout, families: list[int], old: LinkState | None, new: LinkState | None) -> None:
    """The active link of `families` changed: withdraw, restore or move their routes, in one
    batch; logged once with its reason and counted once (`failovers`)."""
    routes = [c for family in families for c in b.ledger.routes.family(family)]
    fams = " and ".join(f"IPv{family}" for family in families)
    now = b.clock()
    b.counters["failovers"] += 1
    b.epoch += 1  # hooks.BreakoutHook.epoch: a remembered "nothing to do" is stale now
    if new is None:
        holds = [h for f in families for h in b.ledger.family(f) if h.installed or h.batch]
        log.warning(
            "breakout %s: no usable link (%s): withdrawing %d routes and %d config routes, "
            "the traffic stays on the main table", fams, watch.why(b.paths), len(holds),
            len(routes),
        )  # fmt: skip
        b.io.delete_holds(holds)  # the kernel may have flushed them: ESRCH is fine
        for h in holds:
            h.installed, h.batch = False, None
        b.io.remove_prefixes(routes)
        b.counters["withdrawn"] += len(holds)
        return
    # Every live hold goes (again) through the new path: those queued go with the next flush,
    # which encodes the new path; those in a batch already sent carry the old one.
    holds = [
        h for f in families for h in b.ledger.family(f)
        if h.expires > now and (h.batch is None or h.batch.started)
    ]  # fmt: skip
    for h in holds:
        b.io.enqueue(h)  # NLM_F_REPLACE: a route that stays moves without a gap
    b.io.install_prefixes(routes)
    if old is None:
        b.counters["restored"] += len(holds)
        log.warning("breakout %s: %s usable: restoring %d routes and %d config routes", fams,
                    new.cfg.interface, len(holds), len(routes))  # fmt: skip
    elif old is new:
        log.warning("breakout %s: the path through %s changed: re-installing %d routes and %d "
                    "config routes", fams, new.cfg.interface, len(holds), len(routes))  # fmt: skip
    else:
        usable = all(old.usable(f) for f in families)  # failback, or a reload's new order
        reason = f"{new.cfg.interface} is preferred" if usable else watch.why(b.paths, old)
        log.warning(
            "breakout %s: moving %d routes and %d config routes from %s to %s (%s)", fams,
            len(holds), len(routes), old.cfg.interface, new.cfg.interface, reason,
        )  # fmt: skip


def drop_never_routed(b: Breakout) -> None:
    """Remove the holds of the addresses that must not be routed (any more)."""
    drop = [h for h in b.holds.values() if b.never.reason(h.family, h.packed)]
    if drop:
        log.info("removing %d holds inside networks that became connected", len(drop))
        repair.remove(b, drop, "inside a connected network")


def follow_connected(b: Breakout) -> None:
    """Hold back the config's routes that overlap a connected network now, and route again
    those that no longer do (no reload needed either way)."""
    blocked, freed = b.ledger.routes.follow(b.never)
    for c in freed:
        c.installed = False
    if blocked:  # all of them: an install may be in flight (a route not there is fine)
        b.io.remove_prefixes(blocked)
    ready = b.paths.ready()
    b.io.install_prefixes(c for c in freed if ready[c.family])
