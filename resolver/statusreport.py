"""The daemon's status tree (resolver.statusmodel), assembled in one place from its parts.

`snapshot` is what the control socket's `status` sends, what the metrics and the sd_notify
summary read. It is built on request only: nothing here runs on the DNS path.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

from resolver import __version__, buildinfo
from resolver.statusmodel import (
    BreakoutStatus,
    MonitorStatus,
    PolicyStatus,
    Status,
    breakout_off,
)

if TYPE_CHECKING:
    from resolver.control.monitor import Watchers
    from resolver.daemon import Daemon


def snapshot(daemon: Daemon) -> Status:
    """The whole tree, from a started daemon."""
    if daemon.dns is None:
        raise RuntimeError("status: the daemon has not started its DNS server")
    dns = daemon.dns.status()
    status: Status = {
        "version": __version__,
        "build": buildinfo.build(),
        "uptime_s": round(time.monotonic() - daemon.started, 1),
        "config": daemon.loaded.config.path,
        "listen": dns["listen"],
        "upstreams": dns["upstreams"],
        "cache": dns["cache"],
        "queries": dns["queries"],
        "forwarding": dns["forwarding"],
        "udp": dns["udp"],
        "tcp": dns["tcp"],
        "policy": policy(daemon),
        "breakout": breakout(daemon),
    }
    control = daemon.control
    if control is not None and control.monitor.connected:
        status["monitor"] = monitor(control.monitor)
    if control is not None and control.refused:  # only once it refused a connection
        status["control"] = {"connections": control.shares.open, "refused": control.refused}
    return status


def policy(daemon: Daemon) -> PolicyStatus:
    """The policy in force and the endpoint web service's feed (also reload's answer)."""
    p = daemon.loaded.policy
    feed = daemon.feed.status(daemon.loaded.config.policy.endpoints)
    return {
        "source": p.source, "version": p.version, "rules": len(p.rules),
        "last_check": feed["last_check"], "last_error": feed["last_error"],
        "next_check": feed["next_check"],
    }  # fmt: skip


def breakout(daemon: Daemon) -> BreakoutStatus:
    """The breakout's own report (resolver.net.report builds it as a BreakoutStatus; Breakout
    hands it on as a plain dict), or the typed default while breakout is off."""
    if daemon.breakout is not None:
        return cast(BreakoutStatus, daemon.breakout.status())
    cfg = daemon.loaded.config.breakout
    return breakout_off(cfg.interface, cfg.table, (link.interface for link in cfg.links))


def monitor(watchers: Watchers) -> MonitorStatus:
    counts = watchers.status()
    return {
        "watchers": counts["watchers"],
        "events": counts["events"],
        "dropped": counts["dropped"],
    }
