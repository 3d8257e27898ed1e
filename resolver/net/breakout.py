"""The breakout: routes the addresses of Microsoft 365 answers out of the local link(s).

For each tagged answer the DNS handler calls `Breakout.on_answer` before the reply leaves.
Addresses already routed only have their hold extended (the cache-hit path).
New ones are queued (installs.py): the answers of one loop iteration share one batch, the
journal records it, and each answer waits for its own addresses' acks, at most `ack_timeout`.

`Breakout` composes the owners and keeps none of their state (parts.py lists them):
the `Ledger` (holds, their transitions, the epoch), the kernel side (`Installs`, holding a
kernel.Kernel or, in dry-run, a dryrun.DryRunKernel), the `LinkWatch` (the router's links,
where routes may go, which link carries them), the `Probes` (the links' health), the
`Repairs` (sweeps, audits) and the journal (journal.Journal, or NullJournal in dry-run). This
is the composition root: the one place that knows which kernel and which journal it made.
Start-up (reconcile.py), reload (reload.py), flush (cleanup.py) and status (report.py) have
modules of their own and work on the parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from policy.model import Policy
from resolver.clients import client_key
from resolver.config import BreakoutConfig, Mode
from resolver.hooks import Epoch, Pending, Tagged
from resolver.net import cleanup, reconcile, reload, report, traffic
from resolver.net.accounting import Accounting
from resolver.net.accountingapi import AccountingLike, NullAccounting
from resolver.net.batches import InstallBatch, Joined
from resolver.net.dryrun import DryRunKernel
from resolver.net.errors import BreakoutError
from resolver.net.health import PathChecks
from resolver.net.holds import Hold
from resolver.net.installs import Installs
from resolver.net.journal import Journal
from resolver.net.journalapi import JournalLike, NullJournal
from resolver.net.kernel import Kernel
from resolver.net.kernelapi import KernelLike
from resolver.net.ledger import Ledger
from resolver.net.linkchoice import LinkChoice, health_thresholds
from resolver.net.links import NetView
from resolver.net.linkwatch import LinkWatch
from resolver.net.parts import MatcherLike, Parts
from resolver.net.probes import Probes
from resolver.net.repairs import AUDIT_INTERVAL, Repairs
from resolver.scope import scope_of

__all__ = ["Breakout", "BreakoutError"]

log = logging.getLogger(__name__)


class Breakout:
    """BreakoutHook that installs routes and set entries for tagged answers (module doc)."""

    def __init__(
        self,
        cfg: BreakoutConfig,
        state_dir: str,
        matcher: MatcherLike,
        policy: Policy,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        kernel: KernelLike | None = None,
        kernel_factory: Callable[[BreakoutConfig], KernelLike] | None = None,
        journal: JournalLike | None = None,
        accounting: AccountingLike | None = None,
        view: NetView | None = None,
        checks: PathChecks | None = None,
        watch: bool = True,
        sweep_interval: float = 1.0,
        audit_interval: float = AUDIT_INTERVAL,
    ) -> None:
        self.cfg = cfg
        self.matcher = matcher
        self.policy = policy
        dry_run = cfg.mode is Mode.DRY_RUN
        if kernel_factory is None:
            kernel_factory = (lambda c: DryRunKernel(c, wall)) if dry_run else Kernel
        self._kernel_factory = kernel_factory
        if kernel is None:
            kernel = kernel_factory(cfg)
        if journal is None:
            route = (cfg.table, cfg.route_protocol)
            journal = NullJournal() if dry_run else Journal(state_dir, *route, clock, wall)
        if accounting is None:  # with both keys off it opens nothing until a reload says so
            accounting = NullAccounting() if dry_run else Accounting(cfg)
        accounting.configure(cfg, traffic.classes_of(policy.rules))
        ledger = Ledger(cfg.max_entries, cfg.client_share)
        installs = Installs(ledger, kernel, journal, clock, cfg.ack_timeout, accounting)
        choice = LinkChoice(cfg.links, health_thresholds(cfg, kernel.can_probe))
        links = LinkWatch(cfg, installs, choice, view, watch)
        probes = Probes(cfg, installs, choice, self._verdict_changed, checks)
        links.probes = probes
        repairs = Repairs(cfg, installs, journal, links)
        self.parts = Parts(ledger, installs, links, probes, repairs, journal, clock, wall)
        self.ledger = ledger
        self.epoch: Epoch = ledger.epoch  # hooks.BreakoutHook.epoch
        self.sweep_interval, self.audit_interval = sweep_interval, audit_interval
        self._active = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._refreshing: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        """hooks.BreakoutHook.ready: a breakout link can carry routes now."""
        return self._active and self.parts.links.any_ready()

    def in_scope(self, client: str) -> bool:
        """Whether `client`'s traffic breaks out (`breakout.clients`, `client_interfaces`; see
        resolver/scope.py): the monitor's `in_scope`."""
        cfg = self.cfg
        scope = scope_of(cfg.clients, cfg.client_interfaces)
        return scope.contains(client, connected=self.parts.links.view.connected)

    @property
    def mode(self) -> str:
        return str(self.cfg.mode)

    @property
    def holds(self) -> dict[bytes, Hold]:
        return self.ledger.holds

    @property
    def counters(self) -> dict[str, int]:
        return self.ledger.counters

    @property
    def kernel(self) -> KernelLike:
        return self.parts.installs.kernel

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Kernel side, links and their health, rules, reconcile, then watch. BreakoutError
        when the kernel cannot be changed (no CAP_NET_ADMIN, a set of the wrong type, ...)."""
        if self.cfg.mode is Mode.OFF:
            return
        parts = self.parts
        loop = self._loop = asyncio.get_running_loop()
        try:
            await parts.installs.kernel.open(loop)
            await parts.installs.accounting.open(loop)
            parts.installs.start(loop)
            await parts.links.start(loop)
            parts.links.reassess(initial=True)
            await parts.probes.start(loop)  # the links' state is known before any install
            await parts.repairs.ensure_rules()
            await reconcile.run(self.cfg, parts, self.policy, self.matcher)
        except BaseException:
            self._close()
            raise
        self._active = parts.repairs.active = True
        self._tasks.append(loop.create_task(self._every(self.sweep_interval, self.sweep)))
        self._tasks.append(loop.create_task(self._every(self.audit_interval, self.audit)))

    async def stop(self) -> None:
        """Stop watching and write the journal out. Routes stay: a restart adopts them."""
        if self._loop is None:
            return
        self._active = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._close()

    def _close(self) -> None:
        parts = self.parts
        parts.repairs.close()
        parts.probes.close()
        parts.installs.close()
        parts.journal.close()
        parts.links.close()
        parts.installs.kernel.close()
        parts.installs.accounting.close()
        self._loop = None

    async def _every(self, interval: float, job: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                result = job()
                if asyncio.iscoroutine(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("breakout periodic job %s failed", getattr(job, "__name__", job))

    def _verdict_changed(self) -> None:
        # Before the breakout is active (its first probe round at start) nothing is installed
        # yet: the start's reconcile installs through the links chosen now.
        self.parts.links.reassess(initial=not self._active)

    # -- the hot path -----------------------------------------------------------------------

    def on_answer(
        self, tagged: Tagged, ttl: int, client: str = "", installed: list[bytes] | None = None
    ) -> Pending | None:
        """Extend the holds of `tagged.addresses`; the Pending kernel work when new routes
        must go in first. Never raises: a bug here must not cost the client its answer."""
        if not self._active:
            return None
        try:
            return self._on_answer(tagged, ttl, client, installed)
        except Exception:
            self.ledger.counters["netlink_errors"] += 1
            log.exception("breakout failed on an answer for %s", tagged.qname)
            return None

    def _on_answer(
        self, tagged: Tagged, ttl: int, client: str, installed: list[bytes] | None
    ) -> Pending | None:
        cfg, parts, ledger = self.cfg, self.parts, self.ledger
        installs = parts.installs
        now = parts.clock()
        hold = (ttl if ttl > cfg.min_hold else cfg.min_hold) + cfg.grace
        expires = now + (hold if hold < cfg.max_hold else cfg.max_hold)
        # The hold is the policy name's that earned it, never the client's query name that only
        # led there through a CNAME (that name is anybody's to choose).
        name = tagged.via
        row = tagged.match.rule.row
        holds, links, journal = ledger.holds, parts.links, parts.journal
        wait: InstallBatch | None = None
        more: list[InstallBatch] | None = None
        blob, at = tagged.addresses, 0
        while at < len(blob):
            packed = blob[at + 1 : at + 1 + blob[at]]
            at += 1 + blob[at]
            h = holds.get(packed)
            if h is None:
                h = self._new_hold(packed, name, row, expires, client)
                if h is None:
                    continue
            else:
                before = h.expires
                if h.names != name:
                    ledger.extend(h, name, row, expires)
                elif expires > h.expires:
                    h.expires, h.row = expires, row
                # Only an extension can outrun the journal (a hold restored at start is at
                # what the journal says: recording it again would add AHEAD on top).
                if h.expires > before and h.expires > h.noted - 15.0:
                    journal.extended(h)
            if h.installed:
                if (
                    h.set_expires - now < (h.expires - now) * 0.5
                ):  # less than half the hold left on them
                    parts.installs.kernel.note("refresh", h.packed, name, "hold extended")
                    installs.queue_refresh(h)
                continue
            batch = h.batch
            if batch is None:
                if not links.ready_for(h.family):
                    continue  # no usable link: the hold stays, the route follows the link
                batch = installs.enqueue(h)
                if installed is not None:
                    installed.append(packed)
            if batch.done:
                if batch.timed_out:
                    ledger.counters["ack_timeouts"] += 1
                continue
            if wait is None or wait is batch:
                wait = batch
            elif more is None:
                more = [batch]
            elif batch not in more:
                more.append(batch)
        if wait is None:
            return None
        wait.waiters += 1
        if more is None:
            return wait
        for batch in more:
            batch.waiters += 1
        return Joined([wait, *more])

    def _new_hold(
        self, packed: bytes, name: str, row: int, expires: float, client: str
    ) -> Hold | None:
        """A hold for an address not seen yet, or None when it must not be routed."""
        parts = self.parts
        note = parts.installs.kernel.note
        reason = parts.links.cached_skip_reason(packed)
        if reason is None:
            ledger = self.ledger
            h = ledger.add(packed, name, expires, row, client_key(client))
            if h is not None:
                note("install", packed, name, "row %d, hold %d s", row, expires - parts.clock())
                return h
            if len(ledger) >= ledger.max_entries:
                note("skip", packed, name, "max_entries reached")
            else:
                note("skip", packed, name, "client %s holds its share of max_entries", client)
            return None
        self.ledger.counters["skipped"] += 1
        note("skip", packed, name, reason)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("not routing %s (%s): %s", Hold(packed, "", 0.0, 0).address, name, reason)
        return None

    # -- periodic work, links, control ------------------------------------------------------

    def sweep(self) -> int:
        """Remove lapsed holds, put back what someone removed, write the journal's buffer.
        Returns how many holds lapsed."""
        lapsed = self.parts.repairs.sweep()
        accounting = self.parts.installs.accounting
        if accounting.refresh_due() and self._loop is not None:
            task = self._loop.create_task(accounting.refresh())
            self._refreshing.add(task)
            task.add_done_callback(self._refreshing.discard)
        return lapsed

    async def audit(self) -> None:
        """Check that our rules and sets are still there, and put back what is not."""
        await self.parts.repairs.audit()

    def reassess(self) -> None:
        """Recompute connected networks and the links' usability; act on what changed."""
        self.parts.links.reassess()

    async def flush(self) -> dict[str, int]:
        """Remove every route, rule and set entry resolverd owns; forget the holds."""
        return await cleanup.flush(self.cfg, self.parts)

    async def reconfigure(self, cfg: BreakoutConfig, matcher: MatcherLike, policy: Policy) -> None:
        """Apply a new breakout config and policy, all or nothing (see reload.py)."""
        old = self.cfg
        if cfg.mode != old.mode:
            raise BreakoutError(
                f"changing breakout.mode ({old.mode} -> {cfg.mode}) needs a restart"
            )
        if self._loop is None:  # mode off, or not started
            self.cfg, self.matcher, self.policy = cfg, matcher, policy
            return
        change = reload.Change.between(old, cfg)
        verified = None
        if change.moved or change.sets:
            verified = await reload.verify(self.parts, old, cfg, change, self._kernel_factory)
        # Verified: the point of no return. Nothing below raises for a kernel error.
        self.matcher, self.policy = matcher, policy
        await reload.apply(self.parts, old, cfg, change, verified, matcher, policy)
        self.cfg = cfg

    def latency(self) -> tuple[int, float]:
        """(install batches acked, total seconds from send to last ack) since start: metrics."""
        acks = self.parts.installs.acks
        return acks.count, acks.total

    def status(self) -> dict[str, Any]:
        return report.status(self.cfg, self.parts)

    async def read_counters(self) -> None:
        """Read the traffic counters now (a status asks for them fresh)."""
        await self.parts.installs.accounting.refresh()

    async def routes_json_counted(self) -> bytes:
        """`routes` with each address's bytes and packets, read from the kernel now."""
        return await report.routes_counted(self.cfg, self.parts, self.in_scope)

    def routes(self) -> list[dict[str, Any]]:
        return report.routes(self.ledger, self.parts.clock())

    def routes_json(self) -> bytes:
        return report.routes_json(self.ledger, self.parts.clock())
