"""Keeping the kernel's state right: lapsed holds go, what someone removed comes back.

- `sweep` (every second): lapsed holds are removed, routes the kernel lost (deleted by hand,
  or an install that failed) are put back, the journal's buffered records are written and the
  journal is compacted when due;
- `audit` (every `AUDIT_INTERVAL`, and at once when a rule is deleted): our ip rules and sets
  are checked, and put back (a destroyed ipset is created again and refilled);
- `LostReplies` (when a kernel batch fails with ENOBUFS: its acks were dropped, or it was never
  sent): the table is read again, what is missing is marked lost (the sweep puts it back), and
  the routes of ours that nothing holds (a removal that never happened) are removed.
Each kind of repair is logged once, until an audit finds that kind of state right again.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

from resolver.net import reload, watch
from resolver.net.errors import GONE, BreakoutError
from resolver.net.holds import Hold
from resolver.net.routes import AF, HOST_LEN, owned

if TYPE_CHECKING:
    from resolver.net.breakout import Breakout

log = logging.getLogger(__name__)


def sweep(b: Breakout) -> int:
    """Remove lapsed holds, put back what someone removed, write the journal's buffer.
    Returns how many holds lapsed."""
    now = b.clock()
    lapsed = b.ledger.lapsed(now)
    if lapsed:
        remove(b, lapsed, "hold expired")
    if b._active:
        repair(b, now)
    b.journal.write_buffered()
    if b.journal.due(b.ledger.names) and b._loop is not None:
        b._loop.create_task(b.journal.compact(list(b.holds.values())))
    if b._cap_logged and len(b.holds) < b.cfg.max_entries * 0.9:
        b._cap_logged = False
    if b._share_logged:
        per_client = b.ledger.per_client
        b._share_logged = any(o.holds >= per_client for o in b.ledger.owners.values())
    return len(lapsed)


def repair(b: Breakout, now: float) -> None:
    """Re-install the live routes that are not in the kernel (someone deleted them, or an
    install failed) and the config's routes that went missing: within a sweep."""
    ready = b.paths.ready()
    lost = [
        h for h in b.holds.values()
        if not h.installed and h.batch is None and h.expires > now and ready[h.family]
    ]  # fmt: skip
    for h in lost:
        b.io.enqueue(h)
    routes = b.ledger.routes.missing(ready)
    if routes:
        b.io.install_prefixes(routes)
    if lost or routes:
        b.counters["repaired"] += len(lost) + len(routes)
        repaired(b, "routes", f"putting back %d routes and %d config routes missing from "
                      f"table {b.cfg.table}", len(lost), len(routes))  # fmt: skip


def repaired(b: Breakout, what: str, message: str, *args: object) -> None:
    """Log a repair once per kind until the state is right again (see `audit`)."""
    if what not in b._repair_logged:
        b._repair_logged.add(what)
        log.warning(message, *args)


async def audit(b: Breakout) -> None:
    """Check that our rules and sets are still there, and put back what is not."""
    done = set()
    # After a flush the rules stay away until the next install (rules_ok false).
    if b.io.rules_ok and await ensure_rules_logged(b):
        repaired(b, "rules", "ip rules for table %d were missing: added again",
                      b.cfg.table)  # fmt: skip
    else:
        done.add("rules")
    gone = await b.kernel.missing_sets()
    if gone:
        repaired(b, "sets", "%s missing: creating again and re-adding the entries",
                      ", ".join(gone))  # fmt: skip
        await reload.recreate_sets(b)
    else:
        done.add("sets")
    if all(h.installed for h in b.holds.values()):
        done.add("routes")
    b._repair_logged -= done


async def ensure_rules(b: Breakout) -> int:
    """Our rules (main and probe rules) in place; how many had to be added."""
    added = await b.kernel.change_rules(watch.rule_specs(b.cfg), ())
    b.io.rules_ok = True
    return added


def rules_now(b: Breakout) -> asyncio.Future[Any]:
    """After a flush the rules are gone; the next install puts them back first."""
    if b._rules_task is None or b._rules_task.done():
        b._rules_task = asyncio.ensure_future(ensure_rules_logged(b))
    return b._rules_task


async def ensure_rules_logged(b: Breakout) -> int:
    try:
        return await ensure_rules(b)
    except (BreakoutError, OSError) as err:
        b.counters["netlink_errors"] += 1
        log.error("cannot put the ip rules back: %s", err)
        return 0


def remove(b: Breakout, holds: list[Hold], reason: str) -> None:
    """Forget `holds` and remove their routes and set entries from the kernel."""
    now = b.clock()
    forget(b, holds, reason)
    routed = b.ledger.routes.routed  # a policy /32 for the same address keeps its route
    b.io.delete_holds(
        h for h in holds
        if (h.installed or h.batch is not None) and f"{h.address}/{h.prefix_len}" not in routed
    )  # fmt: skip
    b.io.delete_entries(holds, now)  # those whose hold ran out timed out already
    for h in holds:
        h.installed = False
    b.epoch += 1


def forget(b: Breakout, holds: list[Hold], reason: str) -> None:
    for h in holds:
        b.io.forget(h)
        b.kernel.note("remove", h.address, h.live_names(b.clock()), reason)
    b.ledger.forget(holds)
    b.journal.removed(holds)
    log.debug("removing %d holds: %s", len(holds), reason)


class LostReplies:
    """`Errnos.on_lost` of a breakout: resync the table with the books, one run at a time (a
    loss during a run makes it run again), retried a few times when a dump fails."""

    RETRIES = 5

    def __init__(self, b: Breakout) -> None:
        self.b = b
        self.task: asyncio.Task[None] | None = None
        self.again = False

    def __call__(self) -> None:
        b = self.b
        if b._loop is None or not b._active:
            return  # at start, reconcile reads the table anyway
        if self.task is not None and not self.task.done():
            self.again = True
            return
        self.task = b._loop.create_task(self._run())
        b._tasks = [task for task in b._tasks if not task.done()]
        b._tasks.append(self.task)  # cancelled by stop()

    async def _run(self) -> None:
        tries = 0
        self.again = True
        while self.again:
            self.again = False
            try:
                await resettle(self.b)
            except (BreakoutError, OSError) as err:
                tries += 1
                if tries >= self.RETRIES:
                    log.error("cannot re-read table %d after lost netlink replies: %s",
                              self.b.cfg.table, err)  # fmt: skip
                    return
                self.again = True
                await asyncio.sleep(1.0)


async def resettle(b: Breakout) -> None:
    """Believe the kernel again: what is missing is marked lost (watch.resync), and routes of
    ours that neither a hold nor the config accounts for are removed."""
    await watch.resync(b)
    present = owned(await b.kernel.dump_routes(), b.cfg.route_protocol)
    routed = b.ledger.routes.routed
    stale = [
        r for r in present
        if f"{r.dst}/{r.dst_len}" not in routed
        and not (r.dst_len == HOST_LEN[r.family]
                 and socket.inet_pton(AF[r.family], r.dst) in b.holds)
    ]  # fmt: skip
    if stale:
        b.io.errnos.ratelog.log(
            logging.WARNING, "stale-routes", "removing %d routes of ours from table %d that "
            "nothing holds (netlink replies were lost)", len(stale), b.cfg.table,
        )  # fmt: skip
        b.io.errnos.settle("remove stale routes", GONE)(await b.io.delete_table_routes(stale))
