"""Keeping the kernel's state right: lapsed holds go, what someone removed comes back.

- `sweep` (every second): lapsed holds are removed, routes the kernel lost (deleted by hand,
  or an install that failed) are put back, the journal's buffered records are written and the
  journal is compacted when due. It costs what comes due and what is missing (the ledger keeps
  both apart), not what is held;
- `audit` (every AUDIT_INTERVAL, and at once when a rule is deleted): our ip rules (the
  scope's, per client prefix and interface, and the probe rules) and sets are checked, and put
  back (a destroyed ipset is created again and refilled); scope rules of an earlier config go;
- `lost_replies` (when a kernel batch fails with ENOBUFS: its acks were dropped, or it was
  never sent): the table is read again, what is missing is marked lost (the sweep puts it
  back), and the routes of ours that nothing holds (a removal that never happened) go.
Each kind of repair is logged once, until an audit finds that kind of state right again.
`Repairs` owns that bookkeeping, and the tasks it starts.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from resolver.config import BreakoutConfig
from resolver.net.errors import GONE, BreakoutError
from resolver.net.installs import Installs
from resolver.net.journalapi import JournalLike
from resolver.net.linkwatch import LinkWatch
from resolver.net.probes import describe_rule, rule_specs, stale_scope_rules
from resolver.net.routes import AF, HOST_LEN, owned

log = logging.getLogger(__name__)

AUDIT_INTERVAL = 5.0  # seconds between checks that our rules and sets are still there
LOST_RETRIES = 5  # tries to read the table again after lost replies


class Repairs:
    """Sweeps, audits and resettles (see the module docstring)."""

    def __init__(
        self, cfg: BreakoutConfig, installs: Installs, journal: JournalLike, links: LinkWatch
    ) -> None:
        self.cfg = cfg
        self.installs = installs
        self.ledger = installs.ledger
        self.journal = journal
        self.links = links
        self.active = False  # the breakout serves: repairs may start tasks
        self._logged: set[str] = set()  # kinds of repair logged since the state was last right
        self._rules: asyncio.Future[int] | None = None
        self._lost: asyncio.Task[None] | None = None
        self._lost_again = False
        self._tasks: set[asyncio.Task[object]] = set()
        installs.ensure_rules = self._rules_then
        installs.errnos.on_lost = self.lost_replies
        links.on_rule_gone = self._rule_gone

    def close(self) -> None:
        self.active = False
        for task in [*self._tasks, *([self._lost] if self._lost is not None else [])]:
            task.cancel()
        self._tasks.clear()

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the sweep ------------------------------------------------------------------------------

    def sweep(self) -> int:
        """Remove lapsed holds, put back what someone removed, write the journal's buffer.
        Returns how many holds lapsed."""
        installs, ledger = self.installs, self.ledger
        now = installs.clock()
        lapsed = ledger.lapsed(now)
        if lapsed:
            installs.remove(lapsed, "hold expired")
        if self.active:
            self._put_back(now)
        self.journal.write_buffered()
        if self.journal.due(ledger.names) and self.active:
            self._spawn(self.journal.compact(list(ledger)))
        ledger.sweep_logs()
        return len(lapsed)

    def _put_back(self, now: float) -> None:
        """Re-install the live routes that are not in the kernel (someone deleted them, or an
        install failed) and the config's routes that went missing: within a sweep."""
        ready = self.links.ready()
        lost = self.ledger.to_put_back(ready, now)
        for h in lost:
            self.installs.enqueue(h)
        routes = self.ledger.config_routes.missing(ready)
        if routes:
            self.installs.install_prefixes(routes)
        if lost or routes:
            self.ledger.counters["repaired"] += len(lost) + len(routes)
            self.repaired("routes", "putting back %d routes and %d config routes missing from "
                          "table %d", len(lost), len(routes), self.cfg.table)  # fmt: skip

    def repaired(self, what: str, message: str, *args: object) -> None:
        """Log a repair once per kind until the state is right again (see `audit`)."""
        if what not in self._logged:
            self._logged.add(what)
            log.warning(message, *args)

    # -- the audit ------------------------------------------------------------------------------

    async def audit(self) -> None:
        """Check that our rules and sets are still there, and put back what is not."""
        done = set()
        # After a flush the rules stay away until the next install (rules_ok false).
        if self.installs.rules_ok and await self.ensure_rules_logged():
            self.repaired("rules", "ip rules for table %d were missing: added again",
                          self.cfg.table)  # fmt: skip
        else:
            done.add("rules")
        gone = await self.installs.kernel.missing_sets()
        if gone:
            self.repaired("sets", "%s missing: creating again and re-adding the entries",
                          ", ".join(gone))  # fmt: skip
            await self.recreate_sets()
        else:
            done.add("sets")
        if not self.ledger.missing:
            done.add("routes")
        self._logged -= done

    def _rule_gone(self) -> None:
        if self.active:
            self._spawn(self.audit())

    async def recreate_sets(self) -> None:
        """A set is gone: create it again and re-add every live entry."""
        try:
            await self.installs.kernel.create_sets()
        except BreakoutError as err:
            self.ledger.counters["netlink_errors"] += 1
            log.error("cannot create the sets again: %s; set entries stay missing", err)
            return
        for h in self.ledger:
            h.set_expires = 0.0
            if h.installed:
                self.installs.queue_refresh(h)

    # -- our ip rules ---------------------------------------------------------------------------

    async def ensure_rules(self) -> int:
        """Our rules (the scope's and the probe rules) in place; how many had to be added.
        Then the scope rules an earlier config left at our priority go (a restart after
        `breakout.clients` or `client_interfaces` changed): after the new ones are in, so that
        no client in both scopes goes without a rule meanwhile."""
        kernel = self.installs.kernel
        added = await kernel.change_rules(rule_specs(self.cfg), ())
        self.installs.rules_ok = True
        stale = stale_scope_rules(await kernel.dump_rules(), self.cfg)
        if stale:
            await kernel.change_rules((), stale)
            log.info("removed %d ip rules of an earlier breakout scope: %s", len(stale),
                     ", ".join(describe_rule(s) for s in stale))  # fmt: skip
        return added

    async def ensure_rules_logged(self) -> int:
        try:
            return await self.ensure_rules()
        except (BreakoutError, OSError) as err:
            self.ledger.counters["netlink_errors"] += 1
            log.error("cannot put the ip rules back: %s", err)
            return 0

    def _rules_then(self, done: Callable[[], None]) -> None:
        """installs.Installs.ensure_rules: after a flush the rules are gone; the next install
        puts them back first, and goes on when that is done."""
        if self._rules is None or self._rules.done():
            self._rules = asyncio.ensure_future(self.ensure_rules_logged())
        self._rules.add_done_callback(lambda _f: done())

    # -- lost replies ---------------------------------------------------------------------------

    def lost_replies(self) -> None:
        """`Errnos.on_lost`: resettle the table with the books, one run at a time (a loss
        during a run makes it run again), retried a few times when a dump fails."""
        if not self.active:
            return  # at start, reconcile reads the table anyway
        if self._lost is not None and not self._lost.done():
            self._lost_again = True
            return
        self._lost = asyncio.ensure_future(self._resettle_runs())

    async def _resettle_runs(self) -> None:
        tries = 0
        self._lost_again = True
        while self._lost_again:
            self._lost_again = False
            try:
                await self.resettle()
            except (BreakoutError, OSError) as err:
                tries += 1
                if tries >= LOST_RETRIES:
                    log.error("cannot re-read table %d after lost netlink replies: %s",
                              self.cfg.table, err)  # fmt: skip
                    return
                self._lost_again = True
                await asyncio.sleep(1.0)

    async def resettle(self) -> None:
        """Believe the kernel again: what is missing is marked lost (LinkWatch.resync), and
        routes of ours that neither a hold nor the config accounts for are removed."""
        await self.links.resync()
        installs = self.installs
        present = owned(await installs.kernel.dump_routes(), self.cfg.route_protocol)
        routed = self.ledger.config_routes.routed
        stale = [
            r for r in present
            if f"{r.dst}/{r.dst_len}" not in routed
            and not (r.dst_len == HOST_LEN[r.family]
                     and self.ledger.get(socket.inet_pton(AF[r.family], r.dst)) is not None)
        ]  # fmt: skip
        if stale:
            installs.errnos.ratelog.log(
                logging.WARNING, "stale-routes", "removing %d routes of ours from table %d "
                "that nothing holds (netlink replies were lost)", len(stale), self.cfg.table,
            )  # fmt: skip
            installs.errnos.settle("remove stale routes", GONE)(
                await installs.delete_table_routes(stale)
            )
