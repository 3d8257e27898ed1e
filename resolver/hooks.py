"""The seam between the DNS side (resolver.dns) and the breakout (resolver.net).

Neither package imports the other; both import this module, and the daemon wires them. The DNS
handler calls `BreakoutHook.on_answer` for every tagged answer, cache hits included, before the
reply is sent. The call is synchronous so that a hit whose routes are in place costs no task:
it returns None. When kernel work is needed it returns an awaitable, and the reply leaves once
that completes (the breakout bounds the wait).

Two values flow back, read as plain attributes on the hot path:
- `epoch` changes whenever a route the DNS side may believe installed is gone (lapsed, lost,
  withdrawn, flushed, moved): a remembered "nothing to do for this answer" is valid only for
  the epoch it was made in;
- `ready` says whether a breakout link is usable now, so that the names the policy matches
  may go to the ISP's resolvers (split DNS); when it is false they go to the default upstreams.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from policy.model import Match


def pack_addresses(texts: Iterable[str]) -> bytes:
    """Text addresses as one byte string: each packed address behind its length (4 or 16)."""
    out = bytearray()
    for text in texts:
        raw = socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
        out.append(len(raw))
        out += raw
    return bytes(out)


def iter_packed(blob: bytes) -> Iterator[bytes]:
    """The packed addresses of `pack_addresses`' format, in order."""
    at, end = 0, len(blob)
    while at < end:
        size = blob[at]
        yield blob[at + 1 : at + 1 + size]
        at += 1 + size


def address_text(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def address_texts(blob: bytes) -> list[str]:
    return [address_text(p) for p in iter_packed(blob)]


@dataclass(frozen=True, slots=True)
class Tagged:
    """A Microsoft 365 answer: the name on its CNAME chain that matched, and its addresses."""

    qname: str  # the query name, lower case, no trailing dot
    via: str  # the first name on the chain (qname, then CNAME targets) that matched
    match: Match
    addresses: bytes  # the chain's A and AAAA addresses, packed (see pack_addresses)


class BreakoutHook(Protocol):
    @property
    def epoch(self) -> int: ...

    @property
    def ready(self) -> bool: ...

    def on_answer(
        self, tagged: Tagged, ttl: int, client: str = "", installed: list[bytes] | None = None
    ) -> Awaitable[None] | None:
        """Note that `tagged.addresses` are handed out to `client` for `ttl` seconds from now.

        Returns None when nothing needs waiting for, else an awaitable that completes when the
        kernel holds the routes (or the bounded wait is over). Never raises for kernel errors.
        When `installed` is a list, the packed addresses programmed for this answer are
        appended to it (the monitor asks; nobody else pays for it).
        """
        ...


class NullHook:
    """The hook when breakout is off: nothing to do, nothing to wait for, no breakout path."""

    epoch = 0
    ready = False

    def on_answer(
        self, tagged: Tagged, ttl: int, client: str = "", installed: list[bytes] | None = None
    ) -> Awaitable[None] | None:
        return None
