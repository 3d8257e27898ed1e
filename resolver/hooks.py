"""The seam between the DNS side (resolver.dns) and the breakout (resolver.net).

Neither package imports the other; both import this module, and the daemon wires them. The DNS
handler calls `BreakoutHook.on_answer` for every tagged answer, cache hits included, before the
reply is sent. The call is synchronous: a hit whose routes are in place returns None and
costs nothing more. When kernel work is needed it returns a `Pending`, and the reply leaves
from the callback given to its `then` (the breakout bounds the wait).

One way to wait for the kernel, callbacks, from the netlink thread's acks to the reply: the
hot paths hold no future, task or timer of their own per answer. Code that awaits (start-up,
reload, tests) goes through the one adapter at the edge, `wait`.

Two values flow back, read as plain attributes on the hot path:
- `epoch`, an `Epoch` counter the breakout moves whenever a route the DNS side may believe
  installed is gone (lapsed, lost, withdrawn, flushed, moved): a remembered "nothing to do for
  this answer" is valid only for the value it was made at. The DNS side keeps the counter
  object and reads its `value`: one attribute, no call;
- `ready` says whether a breakout link is usable now, so that the names the policy matches
  may go to the ISP's resolvers (split DNS); when it is false they go to the default upstreams.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable, Iterator
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


class Epoch:
    """A counter the breakout moves and the DNS side reads (see the module docstring)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def move(self) -> None:
        self.value += 1


@dataclass(slots=True, init=False)
class Tagged:
    """A Microsoft 365 answer: the name on its CNAME chain that matched, and its addresses.
    Read-only once made: cached answers share it."""

    qname: str  # the query name, lower case, no trailing dot
    via: str  # the first name on the chain (qname, then CNAME targets) that matched
    match: Match
    addresses: bytes  # the chain's A and AAAA addresses, packed (see pack_addresses)

    # Written out (init=False, and so not frozen: a frozen dataclass cannot assign its fields
    # in an __init__ of its own): a dataclass's own __init__ stays Python code when compiled.
    def __init__(self, qname: str, via: str, match: Match, addresses: bytes) -> None:
        self.qname = qname
        self.via = via
        self.match = match
        self.addresses = addresses


class Pending(Protocol):
    """Kernel work an answer waits for."""

    def then(self, done: Callable[[], None]) -> None:
        """Call `done` (on the loop, once) when the kernel holds the routes or the bounded
        wait is over; at once when that is so already."""
        ...


def wait(pending: Pending | None) -> asyncio.Future[None]:
    """A future done when `pending` is (at once for None): the one adapter from callbacks to
    awaiting, for code off the hot path."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def done() -> None:
        if not fut.done():
            fut.set_result(None)

    if pending is None:
        done()
    else:
        pending.then(done)
    return fut


class BreakoutHook(Protocol):
    @property
    def epoch(self) -> Epoch: ...

    @property
    def ready(self) -> bool: ...

    def on_answer(
        self, tagged: Tagged, ttl: int, client: str = "", installed: list[bytes] | None = None
    ) -> Pending | None:
        """Note that `tagged.addresses` are handed out to `client` for `ttl` seconds from now.

        Returns None when nothing needs waiting for, else the Pending kernel work (see its
        `then`). Never raises for kernel errors.
        When `installed` is a list, the packed addresses programmed for this answer are
        appended to it (the monitor asks; nobody else pays for it).
        """
        ...


class NullHook:
    """The hook when breakout is off: nothing to do, nothing to wait for, no breakout path."""

    epoch = Epoch()
    ready = False

    def on_answer(
        self, tagged: Tagged, ttl: int, client: str = "", installed: list[bytes] | None = None
    ) -> Pending | None:
        return None
