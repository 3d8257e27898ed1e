"""The interface between the DNS path and the breakout: what a tagged answer hands over.

The DNS handler calls `BreakoutHook.on_answer` for every tagged answer, cache hits included,
before the reply is sent. The call is synchronous so that a cache hit whose routes are already
in place costs no task: it returns None. When kernel work is needed it returns an awaitable,
and the handler sends the reply once that completes (the breakout bounds the wait).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

from policy.model import Match


@dataclass(frozen=True, slots=True)
class Tagged:
    """A Microsoft 365 answer: the name on the CNAME chain that matched, and its addresses."""

    qname: str  # the query name, lower case, no trailing dot
    name: str  # the first name on the chain (qname, then CNAME targets) that matched
    match: Match
    addresses: tuple[str, ...]  # A and AAAA addresses on the chain, text form, v4 and v6


class BreakoutHook(Protocol):
    def on_answer(self, tagged: Tagged, ttl: int) -> Awaitable[None] | None:
        """Note that `tagged.addresses` are handed out for `ttl` seconds from now.

        Returns None when nothing needs waiting for, else an awaitable that completes when the
        kernel holds the routes (or the bounded wait is over). Never raises for kernel errors.
        """
        ...


class NullHook:
    """The hook when breakout is off: nothing to do, nothing to wait for."""

    def on_answer(self, tagged: Tagged, ttl: int) -> Awaitable[None] | None:
        return None
