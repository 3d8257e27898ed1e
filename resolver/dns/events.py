"""What one answered query looks like to an observer: `resolverctl monitor`, the debug log.

Built only while somebody watches (or debug logging is on): the handler's fast path checks one
flag (`Tracer.on`) and builds nothing otherwise. The fields are the monitor's contract
(README, `resolverctl monitor`):
``{time, client, name, type, rcode, source, row, via, addresses, installed, waited_ms}``, plus
``pattern``: the policy pattern that matched `via` (null when untagged), and ``in_scope``
while the breakout runs: whether the client's traffic breaks out (`breakout.clients`,
`client_interfaces`; the breakout answers through `Tracer.scope`). The answer itself is the
same for every client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final

from resolver.dns import wire
from resolver.dns.query import Query
from resolver.hooks import Tagged, address_text, address_texts

log = logging.getLogger("resolver.dns.handler")  # the debug log says "handler", as it always did

Event = dict[str, Any]
Observer = Callable[[Event], None]
Build = Callable[..., Event]  # `event`'s signature: what a Tracer builds its events with
ScopeCheck = Callable[[str], bool]  # a client's address -> whether its traffic breaks out

QTYPES: Final = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
    33: "SRV", 43: "DS", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 255: "ANY",
}  # fmt: skip
RCODES: Final = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
}  # fmt: skip


def event(
    q: Query,
    rcode: int,
    source: str,
    tag: Tagged | None,
    installed: list[bytes] | None = None,
    waited: float = 0.0,
    in_scope: bool | None = None,
) -> Event:
    """The event for the query `q` answered with `rcode`; `in_scope` None leaves it out."""
    data, qend = q.data, q.qend
    qtype = (data[qend - 4] << 8) | data[qend - 3] if qend >= 16 else 0
    e: Event = {
        "time": round(time.time(), 6),
        "client": q.client,
        "name": wire.name_text(data[12 : qend - 4]) if qend >= 16 else "",
        "type": QTYPES.get(qtype, str(qtype)),
        "rcode": RCODES.get(rcode, str(rcode)),
        "source": source,
        "row": tag.match.rule.row if tag is not None else None,
        "via": tag.via if tag is not None else None,
        "pattern": tag.match.pattern if tag is not None else None,  # extra: the rule's pattern
        "addresses": address_texts(tag.addresses) if tag is not None else [],
        "installed": [address_text(a) for a in installed or ()],
        "waited_ms": round(waited * 1000.0, 3),
    }
    if in_scope is not None:
        e["in_scope"] = in_scope
    return e


def log_line(e: Event) -> tuple[str, tuple[object, ...]]:
    """The debug log's line for an event: a %-format and its arguments."""
    if e["row"] is None:
        return "query %s %s from %s: %s (%s)", (
            e["name"], e["type"], e["client"], e["rcode"], e["source"],
        )  # fmt: skip
    return "query %s %s from %s: %s (%s) tagged row %s via %s, installed %s, waited %.3f ms", (
        e["name"], e["type"], e["client"], e["rcode"], e["source"], e["row"], e["via"],
        ",".join(e["installed"]) or "-", e["waited_ms"],
    )  # fmt: skip


class Tracer:
    """Who wants to see each answered query: the monitor (`observer`) and the debug log.
    `on` is the one flag the hot paths test; `refresh` after changing either. `scope`, set
    by whoever wires the breakout, says whether a client is in its scope (None: no breakout).
    `build` makes each event (`event`; a test counts the events built through it)."""

    __slots__ = ("build", "observer", "on", "scope")

    def __init__(self, build: Build = event) -> None:
        self.build = build
        self.observer: Observer | None = None
        self.on = False
        self.scope: ScopeCheck | None = None

    def refresh(self) -> None:
        self.on = log.isEnabledFor(logging.DEBUG) or self.observer is not None

    def answered(
        self, q: Query, rcode: int, source: str, tag: Tagged | None = None,
        installed: list[bytes] | None = None, waited: float = 0.0,
    ) -> None:  # fmt: skip
        """Tell the observer and the debug log about an answered query, when they want it."""
        if not self.on:
            return
        scope = self.scope
        in_scope = scope(q.client) if scope is not None else None
        e = self.build(q, rcode, source, tag, installed, waited, in_scope)
        if log.isEnabledFor(logging.DEBUG):
            fmt, args = log_line(e)
            log.debug(fmt, *args)
        observer = self.observer
        if observer is not None:
            observer(e)
