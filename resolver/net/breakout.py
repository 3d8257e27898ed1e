"""The breakout: routes the addresses of Microsoft 365 answers out of the local link.

For each tagged answer the DNS handler calls `Breakout.on_answer` before the reply leaves.
Addresses already routed only have their hold extended (dict lookups: the cache-hit path).
New ones are queued (installs.Installs): answers handled in the same loop iteration share one
batch, and each answer waits for the kernel's acks of its own addresses, at most `ack_timeout`.

Desired state lives in memory (holds.Hold per address), the kernel holds the routes (marked
with `route_protocol` in `table`) and the set timeouts, and the state file lets a restart
re-adopt what is still held (reconcile). Netlink events keep it honest: a route someone else
deleted is re-installed by the next answer that hands its address out, a breakout link that
goes down or loses its address has its routes withdrawn and restored when it returns, and
networks that become connected are never routed (the policy's prefixes they held back come
back when they go away).

This class coordinates; the parts with explicit inputs live beside it: reconcile (start-up),
swap (a reload's new kernel side), cleanup (flush's kernel half), prefixes (the policy's
prefixes), state (the state file and when it is written), report (status and routes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from policy.model import Policy
from resolver.config import BreakoutConfig
from resolver.hooks import Tagged, address_text, iter_packed
from resolver.net import netlink, reconcile, report, state, swap
from resolver.net.cleanup import cleanup, flush_owned
from resolver.net.decisions import DecisionLog
from resolver.net.errors import BreakoutError
from resolver.net.holds import Hold
from resolver.net.installs import InstallBatch, Installs
from resolver.net.kernel import Kernel, KernelLike
from resolver.net.links import KIND_ADDR, KIND_LINK, KIND_ROUTE, Addr, Link, Monitor, NetView
from resolver.net.neverroute import NeverRoute
from resolver.net.prefixes import PolicyPrefixes
from resolver.net.routes import AF, HOST_LEN, RT_TABLE_MAIN, Route, foreign_hosts, owned

__all__ = ["Breakout", "BreakoutError", "cleanup"]

log = logging.getLogger(__name__)

SAVE_TICK = 0.25  # how often the saver looks
SKIP_CACHE_MAX = 10_000
COUNTERS = (
    "installed", "removed", "refreshed", "skipped", "netlink_errors", "ack_timeouts", "capped",
    "withdrawn", "restored", "adopted", "route_lost",
)  # fmt: skip


class MatcherLike(Protocol):
    def match(self, name: str) -> Any: ...


class Breakout:
    """BreakoutHook that installs routes and set entries for tagged answers (see module doc)."""

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
        save_interval: float = 30.0,
    ) -> None:
        self.cfg = cfg
        self.state_dir = state_dir
        self.matcher = matcher
        self.policy = policy
        self.mode = cfg.mode
        self.sweep_interval = sweep_interval
        self.holds: dict[str, Hold] = {}
        self.prefixes = PolicyPrefixes()
        self.never = NeverRoute(cfg.never_route)
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.decisions = DecisionLog(wall=wall)
        self._clock = clock
        self._wall = wall
        self._kernel: KernelLike | None = kernel
        self._kernel_factory = kernel_factory
        self._view = view if view is not None else NetView()
        self._view_given = view is not None
        self._watch = watch
        self._io = Installs(self.holds, self.counters, clock, cfg.ack_timeout)
        self._active = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: dict[int, bool] = {4: False, 6: False}
        self._link: Link | None = None
        self._connected: list[tuple[str, str]] | None = None
        self._foreign: set[str] = set()
        self._skip_cache: dict[str, str] = {}
        self._cap_logged = False
        self._tasks: list[asyncio.Task[None]] = []
        self._reader: netlink.Channel | None = None
        self._monitor: Monitor | None = None
        self._reassess_handle: asyncio.Handle | None = None
        self._resync_task: asyncio.Task[None] | None = None
        self._saver = state.Saver(state_dir, save_interval)
        self._dirty = False  # holds extended since the last save
        self._changed = False  # holds added or removed since the last save
        self.epoch = 0  # hooks.BreakoutHook.epoch: moves whenever a route may have gone

    @property
    def ready(self) -> bool:
        """hooks.BreakoutHook.ready: a breakout link can carry routes now."""
        return self._active and (self._ready[4] or self._ready[6])

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Rules, sets, reconcile with the kernel and the state file, then watch. BreakoutError
        when the kernel cannot be changed (no CAP_NET_ADMIN, a set of the wrong type, ...)."""
        if self.mode == "off":
            return
        loop = self._loop = self._io.loop = asyncio.get_running_loop()
        if self.mode == "kernel" and self.cfg.interface is None:
            raise BreakoutError("breakout.interface is required when breakout.mode is kernel")
        try:
            if self.mode == "kernel" and self._kernel is None:
                self._kernel = self._kernel_factory(self.cfg)
            self._io.kernel = self._kernel
            if self._kernel is not None:
                await self._kernel.start(loop)
            await self._load_view(loop)
            self._reassess(initial=True)
            if self._kernel is not None:
                await self._kernel.ensure_rules()
                self._io.rules_ok = True
            await self._reconcile()
        except BaseException:
            self._close()
            raise
        self._active = True
        self._tasks = [
            loop.create_task(self._every(self.sweep_interval, self.sweep), name="breakout-sweep"),
            loop.create_task(self._every(SAVE_TICK, self._save_if_due), name="breakout-save"),
        ]
        log.info(
            "breakout %s on %s (table %d, rule priority %d, protocol %d): %d holds, %d prefixes",
            self.mode, self.cfg.interface, self.cfg.table, self.cfg.rule_priority,
            self.cfg.route_protocol, len(self.holds), len(self.prefixes.routed),
        )  # fmt: skip

    async def _load_view(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._view_given:
            return
        if self._watch:
            self._monitor = Monitor(self._on_event, self._on_overrun)
            self._monitor.start(loop)  # before the dump: no change falls between the two
        self._reader = netlink.Channel(netlink.NETLINK_ROUTE, strict=True)
        self._reader.attach(loop)
        await self._view.load(self._reader)

    async def stop(self) -> None:
        """Save the holds and stop watching. Routes stay: a restart re-adopts them, no gap."""
        if not self._active and self._loop is None:
            return
        self._active = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._saver.settle()
        if self.mode == "kernel":
            self._save()
        self._close()

    def _close(self) -> None:
        self._io.close()
        if self._reassess_handle is not None:
            self._reassess_handle.cancel()
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._kernel is not None:
            self._kernel.close()
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

        Never raises: a bug here must not cost the client its answer.
        """
        if not self._active:
            return None
        try:
            return self._on_answer(tagged, ttl, installed)
        except Exception:
            self.counters["netlink_errors"] += 1
            log.exception("breakout failed on an answer for %s", tagged.qname)
            return None

    def _on_answer(
        self, tagged: Tagged, ttl: int, installed: list[bytes] | None
    ) -> Awaitable[None] | None:
        cfg = self.cfg
        now = self._clock()
        expires = now + (ttl if ttl > cfg.min_hold else cfg.min_hold) + cfg.grace
        qname, name = tagged.qname, tagged.via
        names = (qname,) if qname == name else (qname, name)
        row = tagged.match.rule.row
        holds = self.holds
        wait: InstallBatch | None = None
        more: list[InstallBatch] | None = None
        self._dirty = True
        for packed in iter_packed(tagged.addresses):
            address = address_text(packed)
            h = holds.get(address)
            if h is None:
                h = self._new_hold(address, names, row, expires, now)
                if h is None:
                    continue
            else:
                h.extend(names, row, expires)
            if h.installed:
                if h.set_expires - now < (h.expires - now) * 0.5:  # Hold.wants_set_refresh
                    self._refresh(h)
                continue
            batch = h.batch
            if batch is None:
                if not self._ready[h.family]:
                    continue  # the link is down: the hold stays, the route follows the link
                batch = self._io.enqueue(h)
                if installed is not None:
                    installed.append(h.packed)
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
        self, address: str, names: Sequence[str], row: int, expires: float, now: float
    ) -> Hold | None:
        """A hold for an address not seen yet, or None when it must not be routed."""
        reason = self._skip_cache.get(address)
        if reason is None:
            family = 6 if ":" in address else 4
            try:
                packed = socket.inet_pton(AF[family], address)
            except OSError:
                packed = b""
                reason = "not an IP address"
            if not reason:
                canonical = socket.inet_ntop(AF[family], packed)
                if canonical != address:
                    h = self.holds.get(canonical)
                    if h is not None:
                        h.extend(names, row, expires)
                        return h
                    address = canonical
                reason = self._skip_reason(family, packed, address)
            if reason is None:
                return self._add_hold(address, family, packed, names, row, expires)
            if len(self._skip_cache) >= SKIP_CACHE_MAX:
                self._skip_cache.clear()
            self._skip_cache[address] = reason
        self.counters["skipped"] += 1
        if self.mode == "dry-run":
            self.decisions.record("skip", address, names, reason)
        log.debug("not routing %s (%s): %s", address, names[-1], reason)
        return None

    def _skip_reason(self, family: int, packed: bytes, address: str) -> str | None:
        reason = self.never.reason(family, packed)
        if reason is None and address in self._foreign:
            reason = f"table {self.cfg.table} holds a route for it that resolverd does not own"
        return reason

    def _add_hold(
        self, address: str, family: int, packed: bytes, names: Sequence[str], row: int,
        expires: float,
    ) -> Hold | None:  # fmt: skip
        if len(self.holds) >= self.cfg.max_entries:
            self.counters["capped"] += 1
            if not self._cap_logged:
                self._cap_logged = True
                log.warning(
                    "breakout.max_entries (%d) reached: new addresses are not routed until holds "
                    "lapse (counter 'capped')", self.cfg.max_entries,
                )  # fmt: skip
            if self.mode == "dry-run":
                self.decisions.record("skip", address, names, "max_entries reached")
            return None
        h = Hold(address, family, packed, expires, dict.fromkeys(names, expires), row)
        self.holds[address] = h
        self._changed = True
        if self.mode == "dry-run":
            h.installed = True
            h.set_expires = expires
            self.counters["installed"] += 1
            hold = int(expires - self._clock())
            self.decisions.record("install", address, names, f"row {row}, hold {hold} s")
        return h

    def _refresh(self, h: Hold) -> None:
        """The hold outgrew its set entries' timeout: refresh them (batched, off the path)."""
        if self.mode == "dry-run":
            h.set_expires = h.expires
            self.counters["refreshed"] += 1
            hold = int(h.expires - self._clock())
            self.decisions.record("refresh", h.address, h.names, f"hold extended to {hold} s")
            return
        self._io.queue_refresh(h)

    # -- removal ----------------------------------------------------------------------------

    def sweep(self) -> int:
        """Remove lapsed holds (routes and set entries in batches); returns how many."""
        now = self._clock()
        lapsed = []
        for h in self.holds.values():
            if h.expires <= now:
                lapsed.append(h)
            elif len(h.names) > 1:
                h.prune(now)
        if lapsed:
            self._remove(lapsed, "hold expired")
        if self._kernel is not None and self._active:
            missing = self.prefixes.missing(self._ready)
            if missing:  # a prefix someone deleted, or one the link took down
                self._io.install_prefixes(missing)
        if self._cap_logged and len(self.holds) < self.cfg.max_entries * 0.9:
            self._cap_logged = False
        return len(lapsed)

    def _forget(self, holds: list[Hold], reason: str) -> None:
        for h in holds:
            if self.holds.get(h.address) is h:
                del self.holds[h.address]
            self._io.forget(h)
            if self.mode == "dry-run":
                self.decisions.record("remove", h.address, h.names, reason)
        self.counters["removed"] += len(holds)
        self._changed = True

    def _remove(self, holds: list[Hold], reason: str) -> None:
        """Forget `holds` and remove their routes and set entries from the kernel."""
        now = self._clock()
        self._forget(holds, reason)
        log.debug("removing %d holds: %s", len(holds), reason)
        if self._kernel is None:
            return
        prefixes = self.prefixes.routed  # a hold for an address that is also a policy /32 keeps it
        self._io.delete_routes(
            [h for h in holds if (h.installed or h.batch is not None)
             and f"{h.address}/{HOST_LEN[h.family]}" not in prefixes]
        )  # fmt: skip
        self._io.delete_entries(holds, now)  # those whose hold ran out timed out already
        for h in holds:
            h.installed = False
            self.epoch += 1

    # -- reconcile at start -----------------------------------------------------------------

    async def _reconcile(self) -> None:
        """Adopt the routes still held, remove lapsed and unknown owned ones, install the rest."""
        cfg = self.cfg
        saved = state.load(self.state_dir) if self.mode == "kernel" else []
        restored = reconcile.restore_holds(
            saved, self.matcher.match,
            lambda f, p, a: self._skip_reason(f, p, a) is None, self._clock(), self._wall(),
        )  # fmt: skip
        self.holds.update(restored)
        self.counters["skipped"] += self.prefixes.load(self.policy, self.never)[1]
        if self._kernel is None:
            self.prefixes.mark(installed=True)
            return
        routes = await self._kernel.dump_routes()
        review = reconcile.review_table(
            routes, cfg, self.holds, self.prefixes.routed, self._link, self._ready
        )
        self._foreign = review.foreign
        self.counters["adopted"] += len(review.adopted)
        installed = await reconcile.apply(review, self._io, self.prefixes, self._ready, cfg.table)
        log.info(
            "reconciled table %d: %d holds from %s, %d routes adopted, %d installed, %d removed",
            cfg.table, len(restored), state.state_path(self.state_dir), len(review.adopted),
            installed, len(review.stale),
        )  # fmt: skip

    # -- netlink events ---------------------------------------------------------------------

    def _on_event(self, kind: int, new: bool, obj: object) -> None:
        if kind == KIND_ROUTE:
            assert isinstance(obj, Route)
            self._on_route(new, obj)
        elif kind == KIND_LINK:
            assert isinstance(obj, Link)
            self._view.apply_link(new, obj)
            self._schedule_reassess()
        elif kind == KIND_ADDR:
            assert isinstance(obj, list)
            addrs: list[Addr] = obj
            self._view.apply_addr(new, addrs)
            self._schedule_reassess()

    def _on_route(self, new: bool, r: Route) -> None:
        cfg = self.cfg
        if r.table == RT_TABLE_MAIN:
            if self._view.apply_route(new, r):
                self._schedule_reassess()
            return
        if r.table != cfg.table:
            return
        host = r.dst_len == HOST_LEN[r.family]
        if r.protocol != cfg.route_protocol:
            if host:  # someone else's route in our table: never take its address over
                if new:
                    self._foreign.add(r.dst)
                else:
                    self._foreign.discard(r.dst)
                self._skip_cache.pop(r.dst, None)
            return
        key = f"{r.dst}/{r.dst_len}"
        if new or self._io.own_delete(key):
            return
        h = self.holds.get(r.dst) if host else None
        if h is not None and h.installed:
            h.installed = False
            self.epoch += 1
            self.counters["route_lost"] += 1
            log.info(
                "route for %s in table %d was removed by someone else; the next answer "
                "re-installs it", r.dst, cfg.table,
            )  # fmt: skip
        c = self.prefixes.routed.get(key)
        if c is not None:
            c.installed = False  # the sweeper puts it back

    def _on_overrun(self) -> None:
        if self._loop is None or (self._resync_task is not None and not self._resync_task.done()):
            return
        self._resync_task = self._loop.create_task(self._resync())

    async def _resync(self) -> None:
        """Events were lost: re-read the view and our table, and believe the kernel."""
        if self._reader is not None:
            await self._view.load(self._reader)
        self._io.forget_own_deletes()
        self._reassess()
        if self._kernel is None:
            return
        protocol = self.cfg.route_protocol
        self._foreign.clear()
        table = await self._kernel.dump_routes()
        self._foreign.update(foreign_hosts(table, protocol))
        present = {f"{r.dst}/{r.dst_len}" for r in owned(table, protocol)}
        for h in self.holds.values():
            if h.installed and f"{h.address}/{HOST_LEN[h.family]}" not in present:
                h.installed = False
                self.epoch += 1
                self.counters["route_lost"] += 1
        for c in self.prefixes.routed.values():
            if c.installed and c.cidr not in present:
                c.installed = False

    def _schedule_reassess(self) -> None:
        if self._reassess_handle is None and self._loop is not None:
            self._reassess_handle = self._loop.call_soon(self._reassess)

    def _reassess(self, initial: bool = False) -> None:
        """Recompute connected networks and the breakout link's readiness; act on changes."""
        self._reassess_handle = None
        cfg = self.cfg
        connected = self._view.connected()
        if connected != self._connected:
            self._connected = connected
            self.never.set_connected(connected)
            self._skip_cache.clear()
            if not initial:
                self._drop_never_routed()
                self._sync_prefixes()
        link = self._view.find(cfg.interface)
        old_link, self._link = self._link, link
        if self._kernel is not None:
            self._kernel.set_link(link.index if link is not None else None)
        moved = old_link is not None and link is not None and old_link.index != link.index
        for family, gateway in ((4, cfg.gateway4), (6, cfg.gateway6)):
            ready = self._view.carries(link, family, gateway)
            was, self._ready[family] = self._ready[family], ready
            if initial or self.mode != "kernel":
                continue
            if was and not ready:
                self._withdraw(family)
            elif ready and (not was or moved):
                self._restore(family)

    def _drop_never_routed(self) -> None:
        """Remove the holds of the addresses that must not be routed (any more)."""
        drop = [h for h in self.holds.values() if self.never.reason(h.family, h.packed) is not None]
        if drop:
            log.info("removing %d holds inside networks that became connected", len(drop))
            self._remove(drop, "inside a connected network")

    def _sync_prefixes(self) -> None:
        """The connected networks changed: hold back the policy's prefixes that overlap one
        now, and route again those that no longer do (no reload needed either way)."""
        blocked, freed = self.prefixes.follow(self.never)
        for c in freed:
            c.installed = self._kernel is None  # dry-run: "installed" at once
        if self._kernel is None or self._loop is None:
            for c in blocked:
                c.installed = False
            return
        if blocked:  # all of them: an install may be in flight (a route not there is fine)
            self._io.remove_prefixes(blocked)
        ready = [c for c in freed if self._ready[c.family]]
        if ready:
            self._io.install_prefixes(ready)

    def _withdraw(self, family: int) -> None:
        """The link went down or lost its address: take the family's routes out."""
        holds = [h for h in self.holds.values() if h.family == family and (h.installed or h.batch)]
        # Every prefix of the family: one whose install is in flight is not marked yet.
        cidrs = self.prefixes.family(family)
        log.warning(
            "breakout link %s is not usable for IPv%d: withdrawing %d routes and %d prefixes",
            self.cfg.interface, family, len(holds), len(cidrs),
        )  # fmt: skip
        self._io.delete_routes(holds)  # the kernel may have flushed them already: ESRCH is fine
        for h in holds:
            h.installed = False
            self.epoch += 1
            h.batch = None
        self._io.remove_prefixes(cidrs)
        self.counters["withdrawn"] += len(holds)

    def _restore(self, family: int) -> None:
        """The link is back: put the family's live routes back in one batch."""
        now = self._clock()
        holds = [
            h for h in self.holds.values()
            if h.family == family and h.expires > now and not h.batch
        ]  # fmt: skip
        for h in holds:
            h.installed = False
            self.epoch += 1
            self._io.enqueue(h)
        self.counters["restored"] += len(holds)
        self._io.install_prefixes(self.prefixes.family(family))
        log.info(
            "breakout link %s usable for IPv%d: restoring %d routes", self.cfg.interface, family,
            len(holds),
        )  # fmt: skip

    # -- control ----------------------------------------------------------------------------

    async def flush(self) -> dict[str, int]:
        """Remove every route, rule and set entry resolverd owns; forget the holds.

        The prefixes of the policy come back with the next reconfigure or restart; host routes
        come back with the next answers (the rules are restored with the first of them).
        """
        counts = {"routes": 0, "cidr_routes": 0, "rules": 0, "set_entries": 0}
        holds = list(self.holds.values())
        prefixes = self.prefixes.clear()
        self._forget(holds, "flush")
        if self.mode == "dry-run":
            counts["routes"], counts["cidr_routes"] = len(holds), len(prefixes)
            return counts
        if self._kernel is None or self._loop is None:
            return counts
        counts = await flush_owned(
            self._kernel, self._io, self.cfg.route_protocol, prefixes, holds, self._clock()
        )
        self._io.rules_ok = False
        for h in holds:
            h.installed = False
            self.epoch += 1
        self._save()
        log.info(
            "flushed: %d routes, %d policy prefixes, %d rules, %d set entries",
            counts["routes"], counts["cidr_routes"], counts["rules"], counts["set_entries"],
        )  # fmt: skip
        return counts

    async def reconfigure(self, cfg: BreakoutConfig, matcher: MatcherLike, policy: Policy) -> None:
        """Apply a new breakout config and policy without a gap for what stays.

        All or nothing. First verify, changing nothing: the new kernel side's sockets and sets
        are checked and the tables read; any failure raises BreakoutError and the running
        config stays in force, untouched. Then swap: holds whose names no longer match any rule
        go, the rest stay installed; the policy's prefixes are diffed; missing ipsets are
        created; a new interface or gateway re-installs every route in place (replace); a new
        table, protocol or rule priority moves everything over. Once the swap has begun, a
        kernel error is logged and counted (`errors`), never raised half-way.
        """
        old = self.cfg
        if cfg.mode != old.mode:
            raise BreakoutError(
                f"changing breakout.mode ({old.mode} -> {cfg.mode}) needs a restart"
            )
        if self.mode == "off":
            self.cfg, self.matcher, self.policy = cfg, matcher, policy
            return
        change = swap.Change.between(old, cfg)
        never = NeverRoute(cfg.never_route) if cfg.never_route != old.never_route else None
        verified: swap.Swap | None = None
        if self.mode == "kernel" and change.kernel:
            verified = await swap.verify(
                cfg, old, self._kernel, self._kernel_factory, self._loop, change.moved
            )
        # Verified: the point of no return. Nothing below raises for a kernel error.
        self.matcher, self.policy = matcher, policy
        self._io.ack_timeout = cfg.ack_timeout
        if never is not None:
            self.never = never
            self._connected = self._view.connected()
            self.never.set_connected(self._connected)
            self._skip_cache.clear()
        dropped = [
            h for h in self.holds.values()
            if not any(matcher.match(n) is not None for n in h.names)
        ]  # fmt: skip
        if dropped:
            log.info("policy change: removing %d holds whose names no longer match", len(dropped))
            self._remove(dropped, "no longer in the policy")
        self._drop_never_routed()
        if verified is not None:
            await self._swap_kernel(verified, cfg, change)
        self.cfg = cfg
        # Every prefix that goes, installed or not: after a swap none is marked installed, but
        # the old table (when it did not move) still holds them. A route not there is fine.
        gone, skipped = self.prefixes.load(policy, self.never)
        self.counters["skipped"] += skipped
        if self._kernel is None:
            self.prefixes.mark(installed=True)
        else:
            await self._io.remove_prefixes(gone)
            await self._io.install_prefixes(self.prefixes.missing(self._ready))
        fut = self._io.flush_now()
        if fut is not None:
            await fut
        self._changed = True
        log.info(
            "breakout reconfigured: %d holds kept, %d removed, %d policy prefixes",
            len(self.holds), len(dropped), len(self.prefixes.routed),
        )  # fmt: skip

    async def _swap_kernel(
        self, verified: swap.Swap, cfg: BreakoutConfig, change: swap.Change
    ) -> None:
        """Move to the verified kernel side (swap.move), take out the routes of a family the new
        link cannot carry, and re-install the rest there. Kernel errors are counted, not raised."""
        old = self._kernel
        assert old is not None
        now = self._clock()
        rules_ok = await swap.move(
            verified, old, self.cfg, cfg, change.moved, self._io, self.prefixes
        )
        if change.sets:
            self._io.delete_entries(self.holds.values(), now)
        old.close()
        was = dict(self._ready)
        self._kernel = self._io.kernel = verified.kernel
        self.cfg = cfg
        self._io.rules_ok = rules_ok
        self._foreign = verified.foreign
        self._skip_cache.clear()
        self._reassess(initial=True)
        for family in (4, 6):
            if was[family] and not self._ready[family] and not change.moved:
                # The same table still holds the family's routes and nothing else would ever
                # remove them (a hold not installed is not removed from the kernel).
                self._withdraw(family)
        for h in self.holds.values():
            h.installed = False
            self.epoch += 1
            h.set_expires = 0.0
            if self._ready[h.family] and h.batch is None:
                self._io.enqueue(h)
        self.prefixes.mark(installed=False)

    # -- state file -------------------------------------------------------------------------

    def _snapshot(self) -> bytes:
        cfg = self.cfg
        now, wall = self._clock(), self._wall()
        return state.snapshot(self.holds.values(), now, wall, cfg.table, cfg.route_protocol)

    def _save(self) -> None:
        if self._saver.write_now(self._snapshot()):
            self._dirty = self._changed = False

    async def _save_if_due(self) -> None:
        """Write the holds when state.Saver says so (kernel mode only)."""
        if self.mode != "kernel" or not self._saver.due(self._changed, self._dirty):
            return
        self._changed = self._dirty = False
        if not await self._saver.write(self._snapshot):
            self._changed = True

    # -- reading ----------------------------------------------------------------------------

    def latency(self) -> tuple[int, float]:
        """(install batches acked, total seconds from send to last ack) since start: metrics."""
        return self._io.latency()

    def status(self) -> dict[str, Any]:
        out = report.status(
            self.cfg, self.holds.values(), self.prefixes, self.counters, self._ready, self._clock()
        )
        out["netlink_latency"] = self._io.latency_percentiles()
        out["connected_networks"] = [c for c, _ in self._view.connected()]
        if self.mode == "dry-run":
            out["dry_run_decisions"] = self.decisions.to_json()
            out["dry_run_decisions_total"] = self.decisions.total
        return out

    def routes(self) -> list[dict[str, Any]]:
        return report.routes(self.holds.values(), self._clock())


async def _wait_all(futures: list[asyncio.Future[None]]) -> None:
    for fut in futures:
        await asyncio.shield(fut)
