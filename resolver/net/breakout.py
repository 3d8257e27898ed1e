"""The breakout: routes the addresses of Microsoft 365 answers out of the local link(s).

For each tagged answer the DNS handler calls `Breakout.on_answer` before the reply leaves.
Addresses already routed only have their hold extended (dict lookups: the cache-hit path).
New ones are queued (installs.py): the answers of one loop iteration share one batch, the
journal records it, and each answer waits for its own addresses' acks, at most `ack_timeout`.

Who owns what: the `Ledger` (holds.py) keeps the books, the kernel (kernel.py, or dryrun.py)
changes the kernel, `Paths` (paths.py) knows which link each family uses, fed by the events
and probes of watch.py, and the `Journal` makes holds survive a crash. This class wires them;
start (reconcile.py), repairs (repair.py), failover (failover.py), flush (cleanup.py), reload
(reload.py) and status (report.py) have modules of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from policy.model import Policy
from resolver.config import BreakoutConfig, Mode
from resolver.hooks import Tagged
from resolver.net import cleanup, failover, reconcile, reload, repair, report, watch
from resolver.net.dryrun import DryRunKernel
from resolver.net.errors import BreakoutError
from resolver.net.health import Prober
from resolver.net.holds import Hold, Ledger, client_key
from resolver.net.installs import InstallBatch, Installs
from resolver.net.journal import Journal
from resolver.net.kernel import Kernel, KernelLike
from resolver.net.links import Monitor, NetView
from resolver.net.neverroute import NeverRoute
from resolver.net.paths import Paths, health_thresholds

__all__ = ["Breakout", "BreakoutError"]

log = logging.getLogger(__name__)

SKIP_CACHE_MAX = 10_000
AUDIT_INTERVAL = 5.0  # seconds between checks that our rules and sets are still there


class MatcherLike(Protocol):
    def match(self, name: str) -> Any: ...


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
        kernel_factory: Callable[[BreakoutConfig], KernelLike] = Kernel,
        view: NetView | None = None,
        watch: bool = True,
        sweep_interval: float = 1.0,
        audit_interval: float = AUDIT_INTERVAL,
    ) -> None:
        self.cfg = cfg
        self.state_dir = state_dir
        self.matcher = matcher
        self.policy = policy
        self.dry_run = cfg.mode is Mode.DRY_RUN
        self.ledger = Ledger(cfg.max_entries, cfg.client_share)
        self.holds = self.ledger.holds
        self.counters = self.ledger.counters
        if kernel is None:
            kernel = DryRunKernel(cfg, wall) if self.dry_run else kernel_factory(cfg)
        self.kernel = kernel
        self.kernel_factory = kernel_factory
        self.clock, self.wall = clock, wall
        self.journal = Journal(
            "" if self.dry_run else state_dir, cfg.table, cfg.route_protocol, clock, wall
        )
        self.io = Installs(self.ledger, kernel, self.journal, clock, cfg.ack_timeout)
        self.io.ensure_rules = lambda: repair.rules_now(self)
        self.io.errnos.on_lost = repair.LostReplies(self)
        self.never = NeverRoute(cfg.never_route)
        self.paths = Paths(cfg.links, health_thresholds(cfg))
        self.view = view if view is not None else NetView()
        self._view_given = view is not None
        self._watch = watch
        self.sweep_interval, self.audit_interval = sweep_interval, audit_interval
        self.epoch = 0  # hooks.BreakoutHook.epoch: moves whenever a route may have gone
        self.foreign: set[str] = set()  # host routes someone else put in our table
        self._skip: dict[bytes, str] = {}
        self._connected: list[tuple[str, str]] | None = None
        self._active = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._monitor: Monitor | None = None
        self._reader: Any = None
        self._reassess_handle: asyncio.Handle | None = None
        self._resync: asyncio.Task[None] | None = None
        self._rules_task: asyncio.Future[int] | None = None
        self.prober: Prober | None = None
        self._probe_paths: dict[tuple[int, int], Any] = {}  # (table, family) -> the Path there
        self._probes_live = False  # the probe tables and rules are in place (watch.py)
        self._cap_logged = False
        self._share_logged = False
        self._repair_logged: set[str] = set()
        self.journal_problems: list[str] = []
        self._probe_task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """hooks.BreakoutHook.ready: a breakout link can carry routes now."""
        return self._active and any(self.paths.ready().values())

    @property
    def mode(self) -> str:
        return str(self.cfg.mode)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Kernel side, links and their health, rules, reconcile, then watch. BreakoutError
        when the kernel cannot be changed (no CAP_NET_ADMIN, a set of the wrong type, ...)."""
        if self.cfg.mode is Mode.OFF:
            return
        loop = self._loop = self.io.loop = asyncio.get_running_loop()
        try:
            await self.kernel.open(loop)
            await watch.load_view(self, loop)
            self.reassess(initial=True)
            await watch.start_health(self)  # the links' state is known before any install
            if not self.dry_run:
                await repair.ensure_rules(self)
            await reconcile.run(self)
        except BaseException:
            self._close()
            raise
        self._active = True
        self._tasks.append(loop.create_task(self._every(self.sweep_interval, self.sweep)))
        if not self.dry_run:
            self._tasks.append(loop.create_task(self._every(self.audit_interval, self.audit)))
        log.info(
            "breakout %s on %s (table %d, rule priority %d, protocol %d): %d holds, %d routes "
            "from the config; IPv4 via %s, IPv6 via %s", self.mode,
            ", ".join(link.interface for link in self.cfg.links), self.cfg.table,
            self.cfg.rule_priority, self.cfg.route_protocol, len(self.holds),
            len(self.ledger.routes.routed), self.paths.describe(4), self.paths.describe(6),
        )  # fmt: skip

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
        self.io.close()
        self.journal.close()
        if self._reassess_handle is not None:
            self._reassess_handle.cancel()
        for closable in (self._monitor, self._reader):
            if closable is not None:
                closable.close()
        self._monitor = self._reader = None
        self.kernel.close()
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

    # -- the hot path -----------------------------------------------------------------------

    def on_answer(
        self, tagged: Tagged, ttl: int, client: str = "", installed: list[bytes] | None = None
    ) -> Awaitable[None] | None:
        """Extend the holds of `tagged.addresses`; an awaitable when new routes must go in.
        Never raises: a bug here must not cost the client its answer."""
        if not self._active:
            return None
        try:
            return self._on_answer(tagged, ttl, client, installed)
        except Exception:
            self.counters["netlink_errors"] += 1
            log.exception("breakout failed on an answer for %s", tagged.qname)
            return None

    def _on_answer(
        self, tagged: Tagged, ttl: int, client: str, installed: list[bytes] | None
    ) -> Awaitable[None] | None:
        cfg = self.cfg
        now = self.clock()
        hold = (ttl if ttl > cfg.min_hold else cfg.min_hold) + cfg.grace
        expires = now + (hold if hold < cfg.max_hold else cfg.max_hold)
        # The hold is the policy name's that earned it, never the client's query name that only
        # led there through a CNAME (that name is anybody's to choose).
        name = tagged.via
        row = tagged.match.rule.row
        holds, ready, journal = self.holds, self.paths.ready(), self.journal
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
                    self.ledger.extend(h, name, row, expires)
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
                    self._refresh(h)
                continue
            batch = h.batch
            if batch is None:
                if not ready[h.family]:
                    continue  # no usable link: the hold stays, the route follows the link
                batch = self.io.enqueue(h)
                if installed is not None:
                    installed.append(packed)
            if batch.future.done():
                if batch.timed_out:
                    self.counters["ack_timeouts"] += 1
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
            # Shielded: an answer whose task is cancelled must not cancel the batch's future,
            # which other answers wait on too.
            return asyncio.shield(wait.future)
        for b in more:
            b.waiters += 1
        return _wait_all([wait.future, *(b.future for b in more)])

    def _new_hold(
        self, packed: bytes, name: str, row: int, expires: float, client: str
    ) -> Hold | None:
        """A hold for an address not seen yet, or None when it must not be routed."""
        reason = self._skip.get(packed)
        if reason is None:
            reason = self.skip_reason(packed)
            if reason is None:
                h = self.ledger.add(packed, name, expires, row, client_key(client))
                if h is None:
                    self._capped(packed, name, client)
                    return None
                self.kernel.note("install", h.address, (name,), f"row {row}, hold "
                                 f"{int(expires - self.clock())} s")  # fmt: skip
                return h
            if len(self._skip) >= SKIP_CACHE_MAX:
                self._skip.clear()
            self._skip[packed] = reason
        self.counters["skipped"] += 1
        address = Hold(packed, "", 0.0, 0).address
        self.kernel.note("skip", address, (name,), reason)
        log.debug("not routing %s (%s): %s", address, name, reason)
        return None

    def skip_reason(self, packed: bytes) -> str | None:
        family = 4 if len(packed) == 4 else 6
        reason = self.never.reason(family, packed)
        if reason is None and self.foreign:
            address = Hold(packed, "", 0.0, 0).address
            if address in self.foreign:
                reason = f"table {self.cfg.table} holds a route for it that resolverd does not own"
        return reason

    def _capped(self, packed: bytes, name: str, client: str) -> None:
        if len(self.holds) < self.cfg.max_entries:
            reason = f"client {client} holds its share of max_entries"
            if not self._share_logged:
                self._share_logged = True
                log.warning("client %s holds its share of breakout.max_entries (%d of %d): its "
                            "new addresses are not routed until its holds lapse (counter "
                            "'client_capped'; logged once)", client, self.ledger.per_client,
                            self.cfg.max_entries)  # fmt: skip
        else:
            reason = "max_entries reached"
            if not self._cap_logged:
                self._cap_logged = True
                log.warning("breakout.max_entries (%d) reached: new addresses are not routed "
                            "until holds lapse (counter 'capped')",
                            self.cfg.max_entries)  # fmt: skip
        self.kernel.note("skip", Hold(packed, "", 0.0, 0).address, (name,), reason)

    def _refresh(self, h: Hold) -> None:
        """The hold outgrew its set entries' timeout: refresh them (batched, off the path)."""
        self.kernel.note("refresh", h.address, h.live_names(self.clock()),
                         f"hold extended to {int(h.expires - self.clock())} s")  # fmt: skip
        self.io.queue_refresh(h)

    # -- the sweeper, repairs (repair.py) and removal ----------------------------------------

    def sweep(self) -> int:
        """Remove lapsed holds, put back what someone removed, write the journal's buffer.
        Returns how many holds lapsed."""
        return repair.sweep(self)

    async def audit(self) -> None:
        """Check that our rules and sets are still there, and put back what is not."""
        await repair.audit(self)

    # -- links: connected networks, failover and failback (failover.py) ----------------------

    def schedule_reassess(self) -> None:
        if self._reassess_handle is None and self._loop is not None:
            self._reassess_handle = self._loop.call_soon(self.reassess)

    def reassess(self, initial: bool = False) -> None:
        """Recompute connected networks and the links' usability; act on what changed."""
        self._reassess_handle = None
        failover.reassess(self, initial)

    # -- control ----------------------------------------------------------------------------

    async def flush(self) -> dict[str, int]:
        """Remove every route, rule and set entry resolverd owns; forget the holds."""
        return await cleanup.flush(self)

    async def reconfigure(self, cfg: BreakoutConfig, matcher: MatcherLike, policy: Policy) -> None:
        """Apply a new breakout config and policy, all or nothing (see reload.py)."""
        await reload.reconfigure(self, cfg, matcher, policy)

    def latency(self) -> tuple[int, float]:
        """(install batches acked, total seconds from send to last ack) since start: metrics."""
        return self.io.latency()

    def status(self) -> dict[str, Any]:
        return report.status(self)

    def routes(self) -> list[dict[str, Any]]:
        return report.routes(self.holds.values(), self.clock())

    def routes_json(self) -> bytes:
        return report.routes_json(self.holds.values(), self.clock())


async def _wait_all(futures: list[asyncio.Future[None]]) -> None:
    for fut in futures:
        await asyncio.shield(fut)
