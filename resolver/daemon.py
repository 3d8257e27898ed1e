"""resolverd's composition root: start, reload (SIGHUP), stop; sd_notify.

Error policy (as Knot Resolver's manager writes it down):
- start: any error is fatal; the message says what and where, exit status 1, no traceback;
- reload: parse and verify everything first, then swap; a bad file keeps the old config running,
  logs why, and `resolverctl reload` reports it;
- stop: drain in-flight queries (bounded), save the breakout state, keep live routes, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from policy.loader import PolicyError
from policy.matcher import Matcher
from policy.model import Policy
from resolver import __version__, allocator, buildinfo, collector, logsetup, sdnotify, statusreport
from resolver.config import DEFAULT_CONFIG, Config, ConfigError, load_config
from resolver.control.protocol import RawJSON, ReloadFailed, UpdateFailed
from resolver.control.server import ControlServer
from resolver.dns.server import DnsServer
from resolver.endpointcache import EndpointSets, effective_policy
from resolver.feed import EndpointFeed
from resolver.hooks import BreakoutHook, NullHook
from resolver.metrics import Metric, MetricsServer
from resolver.metricset import collect
from resolver.net.breakout import Breakout, BreakoutError
from resolver.net.cleanup import cleanup
from resolver.net.traffic import remove_table

log = logging.getLogger("resolverd")

HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
DRAIN_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class Loaded:
    """Everything derived from one config file, verified before it is used."""

    config: Config
    policy: Policy
    matcher: Matcher


def load_everything(path: str) -> Loaded:
    """Config + policy (+ the endpoint web service's rules, if cached). Raises ConfigError or
    PolicyError; nothing is changed by a failure."""
    config = load_config(path)
    policy = effective_policy(config)
    return Loaded(config, policy, Matcher(policy.rules))


async def _no_counters() -> None:
    """count_traffic is off: the counters' table an earlier run left (it survives restarts on
    purpose) goes, so that no packet is counted for nobody (a reload deletes it too)."""
    try:
        if await remove_table():
            log.info("breakout: count_traffic is off: table inet resolverd deleted")
    except (BreakoutError, OSError) as err:
        log.warning("breakout: count_traffic is off, but %s", err)


class Daemon:
    """Owns the running pieces and implements the control socket's handlers."""

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded
        self.started = time.monotonic()
        self.feed = EndpointFeed(loaded.config.state_dir)
        self.breakout: Breakout | None = None
        self.dns: DnsServer | None = None
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self.stop_event = asyncio.Event()
        self.endpoints_changed = asyncio.Event()
        self.reload_lock = asyncio.Lock()
        self.tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        cfg, policy, matcher = self.loaded.config, self.loaded.policy, self.loaded.matcher
        hook: BreakoutHook = NullHook()
        if cfg.breakout.mode == "kernel" and not cfg.breakout.count_traffic:
            await _no_counters()
        if cfg.breakout.mode != "off":
            self.breakout = Breakout(cfg.breakout, cfg.state_dir, matcher, policy)
            await self.breakout.start()
            hook = self.breakout
        self.dns = DnsServer(cfg, matcher, hook)
        if self.breakout is not None:
            self.dns.handler.tracer.scope = self.breakout.in_scope  # the monitor's in_scope
        await self.dns.start()
        self.control = ControlServer(cfg.control.socket, self, cfg.control.group)
        self.control.monitor.connect(self.dns.handler)  # resolverctl monitor: the observer
        await self.control.start()
        if cfg.metrics.listen is not None:
            self.metrics = MetricsServer(cfg.metrics.listen, self.collect_metrics)
            await self.metrics.start()
        self.tasks.append(asyncio.create_task(self._poll_endpoints()))
        interval = sdnotify.watchdog_interval()
        if interval:
            self.tasks.append(asyncio.create_task(self._watchdog(interval / 2)))

    async def stop(self) -> None:
        sdnotify.stopping()
        log.info("stopping: draining in-flight queries")
        for task in self.tasks:
            task.cancel()
        if self.dns is not None:
            await self.dns.stop(DRAIN_TIMEOUT)
        if self.control is not None:
            await self.control.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        if self.breakout is not None:
            await self.breakout.stop()
        log.info("stopped")

    def summary(self) -> str:
        """The line `systemctl status` shows (sd_notify STATUS=), read from the status tree."""
        s = statusreport.snapshot(self)
        q, c, b = s["queries"], s["cache"], s["breakout"]
        return (
            f"{q['total']} queries, {q['tagged']} tagged, {c['entries']} cached, "
            f"{b['routes_v4'] + b['routes_v6']} routes"
        )

    async def _watchdog(self, every: float) -> None:
        while True:
            sdnotify.watchdog()
            sdnotify.status(self.summary())
            await asyncio.sleep(every)

    async def _poll_endpoints(self) -> None:
        """Check the endpoint web service at start, then when the feed says the next check is
        due (every poll_interval, never while a 429's Retry-After runs). The settings are read
        afresh each time, and a reload that enables or changes them wakes the loop. It never
        ends but by cancellation: every failure is logged, kept as the feed's last_error (see
        status) and followed by the next check on time."""
        while True:
            self.endpoints_changed.clear()
            endpoints = self.loaded.config.policy.endpoints
            try:
                if endpoints is not None and not self.feed.rate_limited():
                    await self.policy_update()
            except (UpdateFailed, ReloadFailed) as err:
                log.warning("policy update: %s", err)
            except Exception as err:  # noqa: BLE001 - a bug: logged, shown, checked again
                self.feed.unexpected(err, counts_as_check=True)
            delay = self.feed.seconds_to_next_check(self.loaded.config.policy.endpoints)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.endpoints_changed.wait(), delay)

    # -- control handlers ------------------------------------------------------------------
    async def reload(self) -> dict[str, Any]:
        """Parse and verify, then swap. A failure changes nothing and raises ReloadFailed."""
        async with self.reload_lock:
            sdnotify.reloading()
            try:
                return await self._reload()
            finally:
                sdnotify.ready(self.summary())

    async def _reload(self) -> dict[str, Any]:
        path = self.loaded.config.path
        try:
            new = await asyncio.to_thread(load_everything, path)
        except (ConfigError, PolicyError) as err:
            message = "\n".join(_error_lines(err))
            log.error("reload failed, keeping the running config: %s", message)
            raise ReloadFailed(message) from None
        old = self.loaded.config
        problems = _restart_only_changes(old, new.config)
        if problems:
            message = "; ".join(problems)
            log.error("reload refused, keeping the running config: %s", message)
            raise ReloadFailed(message)
        try:
            await self._swap(new)
        except BreakoutError as err:
            log.error("reload failed, keeping the running config: %s", err)
            raise ReloadFailed(str(err)) from None
        feed_settings = (new.config.policy.endpoints, new.config.policy.tenant)
        if feed_settings != (old.policy.endpoints, old.policy.tenant):
            self.endpoints_changed.set()  # check the service now with the new settings
        log.info("reloaded %s: %d rules from %s", path, len(new.policy.rules), new.policy.source)
        return {"config": path, "policy": statusreport.policy(self)}

    async def _swap(self, new: Loaded) -> None:
        """Put a verified config and policy in place. The breakout goes first: it verifies
        before it changes anything and raises BreakoutError if it cannot take the change."""
        assert self.dns is not None
        if self.breakout is not None:
            await self.breakout.reconfigure(new.config.breakout, new.matcher, new.policy)
        set_log_level(new.config.log_level)  # first: the DNS server reads it to pick its path
        self.dns.reconfigure(new.config, new.matcher)
        self.loaded = new

    async def flush(self) -> dict[str, Any]:
        if self.breakout is None:
            return {"removed": 0, "mode": "off"}
        return await self.breakout.flush()

    async def policy_update(self) -> dict[str, Any]:
        """Check the endpoint web service's version now (see resolver.feed); UpdateFailed if
        it is not configured, unreachable, rate-limited or its sets cannot be applied."""
        return await self.feed.update(self.loaded.config.policy, self._refresh_policy)

    async def _refresh_policy(self, sets: EndpointSets) -> None:
        """The running config with the policy rebuilt from new endpoint sets; the config file
        on disk is not re-read: that is what reload is for."""
        async with self.reload_lock:
            config = self.loaded.config
            try:
                policy = await asyncio.to_thread(effective_policy, config, sets)
                await self._swap(Loaded(config, policy, Matcher(policy.rules)))
            except (PolicyError, BreakoutError) as err:
                raise UpdateFailed(f"the new endpoint sets were not applied: {err}") from None
            log.info("policy updated: %d rules from %s", len(policy.rules), policy.source)

    async def status(self) -> dict[str, Any]:
        """The control socket's `status`: the status tree (resolver.statusreport), the JSON
        object it is sent as, with the traffic counters read from the kernel first."""
        if self.breakout is not None:
            await self.breakout.read_counters()
        return dict(statusreport.snapshot(self))

    async def routes(self) -> RawJSON:
        """Every hold, with its address's bytes and packets when the kernel counts them."""
        if self.breakout is None:
            return RawJSON(b"[]")
        return RawJSON(await self.breakout.routes_json_counted())

    def collect_metrics(self) -> Iterable[Metric]:
        assert self.dns is not None
        latency = self.breakout.latency() if self.breakout is not None else None
        return collect(statusreport.snapshot(self), self.dns.tagged_by_row, latency)


def _restart_only_changes(old: Config, new: Config) -> list[str]:
    """Settings a reload cannot apply: say so instead of half-applying them."""
    problems = []
    if old.listen != new.listen:
        problems.append("listen changed: that needs a restart")
    if old.control != new.control:
        problems.append("control changed: that needs a restart")
    if old.metrics != new.metrics:
        problems.append("metrics changed: that needs a restart")
    if old.state_dir != new.state_dir:
        problems.append("state_dir changed: that needs a restart")
    if old.breakout.mode != new.breakout.mode:
        problems.append(
            f"breakout.mode changed ({old.breakout.mode} -> {new.breakout.mode}): "
            "that needs a restart"
        )
    return problems


def _error_lines(err: ConfigError | PolicyError) -> list[str]:
    return list(err.errors)  # each names its file and line already


def set_log_level(level: str) -> None:
    """Our loggers at the configured level; libraries (pyroute2) never below info."""
    value = logging.getLevelName(level.upper())
    logging.getLogger().setLevel(max(value, logging.INFO))
    for name in ("resolverd", "resolver", "policy"):
        logging.getLogger(name).setLevel(value)


def _install_loop() -> str:
    """uvloop when it is installed (about 3x the cache-hit rate), else asyncio's own loop."""
    if os.environ.get("RESOLVERD_LOOP", "") == "asyncio":
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def serve(loaded: Loaded, loop_name: str) -> int:
    loop = asyncio.get_running_loop()
    daemon = Daemon(loaded)
    try:
        await daemon.start()
    except (OSError, ValueError, BreakoutError) as err:
        # OSError: a port or socket path in use; ValueError: an unknown control.group.
        log.error("start failed: %s", err)
        await daemon.stop()
        return 1
    stop = daemon.stop_event

    def on_hup() -> None:
        if stop.is_set():
            log.info("SIGHUP while stopping: no reload")
            return
        task = asyncio.create_task(_reload_logged(daemon))
        daemon.tasks.append(task)
        task.add_done_callback(daemon.tasks.remove)  # one per SIGHUP: not kept once done

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
    cfg = loaded.config
    log.info(
        "resolverd %s (%s build) ready on %s (%s loop), %d rules, breakout %s",
        __version__,
        buildinfo.build(),
        ", ".join(f"{h}:{p}" for h, p in cfg.listen),
        loop_name,
        len(loaded.policy.rules),
        cfg.breakout.mode,
    )
    sdnotify.ready(daemon.summary())
    await stop.wait()
    await daemon.stop()
    return 0


async def _reload_logged(daemon: Daemon) -> None:
    with contextlib.suppress(ReloadFailed):  # already logged with its reason by reload()
        await daemon.reload()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="resolverd", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="config file (YAML)")
    parser.add_argument(
        "--cleanup", action="store_true", help="remove every route, rule and set entry it owns"
    )
    parser.add_argument("--version", action="version", version=f"resolverd {__version__}")
    args = parser.parse_args(argv)
    # Signals wait until the handlers are in place: a SIGHUP during start-up must not kill us.
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    # Before the config is read: what loading it warns of (a kept copy of the endpoint sets
    # left out...) is logged in the daemon's format.
    logsetup.start(sys.stderr)
    try:
        loaded = load_everything(args.config)
    except (ConfigError, PolicyError) as err:
        for line in _error_lines(err):
            print(f"resolverd: {line}", file=sys.stderr)
        return 1
    set_log_level(loaded.config.log_level)
    if args.cleanup:
        return _cleanup(loaded)
    allocator.tune()
    collector.tune()
    loop_name = _install_loop()
    return asyncio.run(serve(loaded, loop_name))


def _cleanup(loaded: Loaded) -> int:
    cfg = loaded.config
    try:
        removed = asyncio.run(cleanup(cfg.breakout, cfg.state_dir, loaded.policy.cidrs))
    except BreakoutError as err:
        print(f"resolverd: cleanup failed: {err}", file=sys.stderr)
        return 1
    print(", ".join(f"{k}: {v}" for k, v in removed.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
