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
  timeouts are realigned, and the journal is rewritten from what is held now.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from resolver.net import journal
from resolver.net.holds import MAX_NAMES, Hold
from resolver.net.replay import UNACCOUNTED
from resolver.net.routes import AF, HOST_LEN, Route, foreign_hosts, owned

if TYPE_CHECKING:
    from resolver.net.breakout import Breakout

log = logging.getLogger(__name__)


def restore_holds(
    saved: dict[str, journal.Saved],
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


def review_table(b: Breakout, routes: list[Route], trust: bool) -> Review:
    """Sort the table's routes; mark adopted holds and config routes installed when they go
    where they should."""
    cfg = b.cfg
    review = Review(foreign=foreign_hosts(routes, cfg.route_protocol))
    paths = b.paths.paths()
    for r in owned(routes, cfg.route_protocol):
        path = paths[r.family]
        same_hop = path is not None and r.oif == path.oif and r.gateway == path.gateway
        host = r.dst_len == HOST_LEN[r.family]
        held = b.holds.get(socket.inet_pton(AF[r.family], r.dst)) if host else None
        config_route = b.ledger.routes.routed.get(f"{r.dst}/{r.dst_len}")
        if held is not None and path is not None:
            held.installed = same_hop  # a changed next hop is re-installed in place
            review.adopted.append(held)
        elif config_route is not None and path is not None:
            config_route.installed = same_hop
        elif trust:
            review.stale.append(r)
        else:
            review.unaccounted.append(r)
    return review


async def run(b: Breakout) -> None:
    """Reconcile at start (see the module docstring)."""
    cfg, now, wall = b.cfg, b.clock(), b.wall()
    latest = wall + cfg.max_hold + journal.AHEAD + journal.CLOCK_SLACK
    loaded = (
        journal.load(b.state_dir, latest) if not b.dry_run else journal.Loaded({}, True, [], False)
    )
    for problem in loaded.problems:
        log.error("hold journal: %s", problem)
    if not loaded.ok:
        log.error(
            "the hold journal cannot be trusted: keeping every route of ours in table %d for "
            "one hold period rather than removing what may be live", cfg.table,
        )  # fmt: skip
    b.journal_problems = loaded.problems
    restored = restore_holds(loaded.holds, b.matcher.match, b.skip_reason, now, wall)
    b.ledger.adopt(restored.values())
    resolvers = [host for host, _port in cfg.resolvers]
    _gone, skipped = b.ledger.routes.load(b.policy.cidrs, resolvers, b.never)
    b.counters["skipped"] += skipped
    review = review_table(b, await b.kernel.dump_routes(), loaded.ok)
    b.foreign = review.foreign
    for address in review.foreign:
        packed = socket.inet_pton(AF[6 if ":" in address else 4], address)
        if b.ledger.pop(packed) is not None:
            log.warning("not adopting %s: table %d routes it for someone else", address, cfg.table)
    expires = now + cfg.min_hold + cfg.grace
    for r in review.unaccounted:
        if r.dst_len == HOST_LEN[r.family]:
            h = Hold(socket.inet_pton(AF[r.family], r.dst), UNACCOUNTED, expires, 0)
            h.installed = True
            b.ledger.adopt([h])
    b.counters["adopted"] += len(review.adopted)
    if review.stale:
        b.io.errnos.settle("remove stale routes")(await b.io.delete_table_routes(review.stale))
    ready = b.paths.ready()
    await b.io.install_prefixes(b.ledger.routes.missing(ready))
    todo = [h for h in b.holds.values() if not h.installed and ready[h.family]]
    for h in todo:
        b.io.enqueue(h)
    fut = b.io.flush_now()
    if fut is not None:
        await fut
    for h in review.adopted:  # the set timeouts kept running in the kernel: realign them
        if h.installed:
            b.io.queue_refresh(h)
    b.io.flush_refresh()
    await b.journal.compact(list(b.holds.values()))
    log.info(
        "reconciled table %d: %d holds from %s, %d routes adopted, %d installed, %d removed, "
        "%d kept unaccounted", cfg.table, len(restored), journal.path_of(b.state_dir),
        len(review.adopted), len(todo), len(review.stale), len(review.unaccounted),
    )  # fmt: skip
