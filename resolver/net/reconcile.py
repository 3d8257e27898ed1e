"""Start-up: what the journal and the kernel's table say, sorted out before anything is served.

- A journaled hold still running, whose names still match the policy and whose address may be
  routed, is restored (its expiry is the journal's, which is never short of the truth).
- In the table: an owned route (our protocol) for a restored hold or a config route is adopted
  (kept as it is when it goes through the link now active for its family, else re-installed
  in place: NLM_F_REPLACE, no gap); any other owned route is stale and removed, unless the
  journal could not be read: then nothing of ours is removed (a route we cannot account for
  may be live), the unknown host routes are held for one hold period, and status says why.
  Routes of other protocols are never touched, and their addresses never taken over.
- Then the stale routes go and what is missing goes in, in one batch, the set entries'
  timeouts are realigned, the traffic counters' elements of addresses no hold keeps go, and
  the journal is rewritten from what is held now.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from policy.model import Policy
from resolver.config import BreakoutConfig
from resolver.hooks import wait
from resolver.net.holds import MAX_NAMES, Hold
from resolver.net.journal import AHEAD, CLOCK_SLACK
from resolver.net.parts import MatcherLike, Parts
from resolver.net.records import UNACCOUNTED, Saved
from resolver.net.routes import AF, HOST_LEN, Route, foreign_hosts, owned

log = logging.getLogger(__name__)


def restore_holds(
    saved: dict[str, Saved],
    match: Callable[[str], Any],
    skip_reason: Callable[[bytes], str | None],
    now: float,
    wall: float,
) -> dict[bytes, Hold]:
    """Holds from the journal that are still running and still wanted (monotonic times)."""
    out: dict[bytes, Hold] = {}
    for address, s in saved.items():
        if s.expires <= wall:
            continue
        newest = sorted(s.names.items(), key=lambda item: item[1])[-MAX_NAMES:]
        names = {n: now + (e - wall) for n, e in newest if e > wall}
        # A route kept unaccounted (an earlier start could not read the journal) stays for
        # the hold period it was given, whatever the policy says.
        if not names or not any(n == UNACCOUNTED or match(n) is not None for n in names):
            continue
        try:
            packed = socket.inet_pton(AF[6 if ":" in address else 4], address)
        except OSError:
            continue
        if skip_reason(packed) is not None:
            continue
        first = next(iter(names))
        h = Hold(packed, first, now + (s.expires - wall), s.row)
        if len(names) > 1:
            h.names = names
        h.noted = h.expires
        out[packed] = h
    return out


@dataclass
class Review:
    adopted: list[Hold] = field(default_factory=list)
    stale: list[Route] = field(default_factory=list)
    unaccounted: list[Route] = field(default_factory=list)  # kept: the journal was unreadable
    foreign: set[str] = field(default_factory=set)  # host addresses routed by someone else


def review_table(cfg: BreakoutConfig, parts: Parts, routes: list[Route], trust: bool) -> Review:
    """Sort the table's routes; mark adopted holds and config routes installed when they go
    where they should."""
    ledger = parts.ledger
    review = Review(foreign=foreign_hosts(routes, cfg.route_protocol))
    hops = parts.links.choice.next_hops()
    for r in owned(routes, cfg.route_protocol):
        hop = hops[r.family]
        same_hop = hop is not None and r.oif == hop.oif and r.gateway == hop.gateway
        host = r.dst_len == HOST_LEN[r.family]
        held = ledger.get(socket.inet_pton(AF[r.family], r.dst)) if host else None
        config_route = ledger.config_routes.routed.get(f"{r.dst}/{r.dst_len}")
        if held is not None and hop is not None:
            if same_hop:  # a changed next hop is re-installed in place
                ledger.installed(held, None)
            review.adopted.append(held)
        elif config_route is not None and hop is not None:
            config_route.installed = same_hop
        elif trust:
            review.stale.append(r)
        else:
            review.unaccounted.append(r)
    return review


async def run(cfg: BreakoutConfig, parts: Parts, policy: Policy, matcher: MatcherLike) -> None:
    """Reconcile at start (see the module docstring)."""
    ledger, installs, links, journal = parts.ledger, parts.installs, parts.links, parts.journal
    now, wall = parts.clock(), parts.wall()
    latest = wall + cfg.max_hold + AHEAD + CLOCK_SLACK
    loaded = journal.load(latest)
    for problem in loaded.problems:
        log.error("hold journal: %s", problem)
    if not loaded.ok:
        log.error(
            "the hold journal cannot be trusted: keeping every route of ours in table %d for "
            "one hold period rather than removing what may be live", cfg.table,
        )  # fmt: skip
    restored = restore_holds(loaded.holds, matcher.match, links.skip_reason, now, wall)
    ledger.adopt(restored.values())
    resolvers = [host for host, _port in cfg.resolvers]
    _gone, skipped = ledger.config_routes.load(policy.cidrs, resolvers, links.never)
    ledger.counters["skipped"] += skipped
    review = review_table(cfg, parts, await installs.kernel.dump_routes(), loaded.ok)
    links.set_foreign(review.foreign)
    for address in review.foreign:
        packed = socket.inet_pton(AF[6 if ":" in address else 4], address)
        if ledger.pop(packed) is not None:
            log.warning("not adopting %s: table %d routes it for someone else", address, cfg.table)
    expires = now + cfg.min_hold + cfg.grace
    unaccounted = []
    for r in review.unaccounted:
        if r.dst_len == HOST_LEN[r.family]:
            h = Hold(socket.inet_pton(AF[r.family], r.dst), UNACCOUNTED, expires, 0)
            h.installed = True
            unaccounted.append(h)
    ledger.adopt(unaccounted)
    ledger.counters["adopted"] += len(review.adopted)
    if review.stale:
        installs.errnos.settle("remove stale routes")(
            await installs.delete_table_routes(review.stale)
        )
    ready = links.ready()
    await installs.install_prefixes(ledger.config_routes.missing(ready))
    todo = ledger.missing.ready(ready)
    for h in todo:
        installs.enqueue(h)
    await wait(installs.flush_now())
    for h in review.adopted:  # the set timeouts kept running in the kernel: realign them
        if h.installed:
            installs.queue_refresh(h)
    installs.flush_refresh()
    orphans = installs.accounting.release_unheld(ledger.holds)  # keyed by packed address
    if orphans:
        log.info("breakout: deleted %d counters' elements no hold keeps", orphans)
    await journal.compact(list(ledger))
    log.info(
        "reconciled table %d: %d holds from the journal, %d routes adopted, %d installed, "
        "%d removed, %d kept unaccounted", cfg.table, len(restored), len(review.adopted),
        len(todo), len(review.stale), len(review.unaccounted),
    )  # fmt: skip
    log.info(
        "breakout %s on %s (table %d, rule priority %d, protocol %d): %d holds, %d routes "
        "from the config; IPv4 via %s, IPv6 via %s", cfg.mode,
        ", ".join(link.interface for link in cfg.links), cfg.table, cfg.rule_priority,
        cfg.route_protocol, len(ledger), len(ledger.config_routes.routed),
        links.choice.describe(4), links.choice.describe(6),
    )  # fmt: skip
