"""The monitor's plumbing: who watches, what each one asked to see, and what waits for them.

`resolverctl monitor` opens a `Watcher` through the control socket; `Watchers` holds them and is
the DNS handler's observer while at least one is open (`connect` wires it: the first watcher sets
``handler.observer``, the last one to leave clears it, and the handler's fast path comes back).
The observer call, `Watchers.publish`, runs on the DNS path, so it does bounded work: a filter
check and a list append per watcher, never a write. The control server's stream task takes the
queued events and writes them (resolver.control.server).

At most `MAX_WATCHERS` are open at once, shared by uid (resolver.control.shares): one user
of the socket's group cannot take them all. A watcher holds at most `MAX_QUEUE` events. When
its reader is slower than the queries, the newest events are dropped and counted; the stream
then carries ``{"dropped": N}`` after the events that were kept, and `status` shows the totals.

Pure: no asyncio, no sockets. resolverctl uses `Filter` to check its options before connecting.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from resolver.clients import client_ip
from resolver.control.shares import UidShares

log = logging.getLogger(__name__)

Event = dict[str, Any]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_QUEUE = 1024  # events waiting for one watcher's socket; beyond, new ones are dropped
MAX_WATCHERS = 8  # monitors open at once; the other control connections stay free
MAX_NAME = 253  # text length of a DNS name without its trailing dot
_CLIENT_CACHE_MAX = 4096  # client address -> inside the filter's prefix, remembered


class Observed(Protocol):
    """What the monitor watches: the DNS handler (resolver.dns.handler.Handler)."""

    observer: Callable[[Event], None] | None

    def refresh_log_level(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Filter:
    """What one watcher wants to see: a client prefix, a name suffix, tagged answers only."""

    client: Network | None = None
    name: str | None = None  # lower case, no trailing dot
    tagged: bool = False

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Filter:
        """The filter of a monitor request's args; ValueError says what is wrong."""
        unknown = sorted(set(args) - {"client", "name", "tagged"})
        if unknown:
            raise ValueError(f"unknown arguments: {', '.join(unknown)}")
        client, name, tagged = args.get("client"), args.get("name"), args.get("tagged", False)
        if client is not None and not isinstance(client, str):
            raise ValueError('"client" must be a string: an address or a prefix')
        if name is not None and not isinstance(name, str):
            raise ValueError('"name" must be a string')
        if not isinstance(tagged, bool):
            raise ValueError('"tagged" must be true or false')
        return cls(
            parse_client(client) if client is not None else None,
            parse_name(name) if name is not None else None,
            tagged,
        )

    def to_args(self) -> dict[str, Any]:
        """The request args for this filter (None where it does not filter)."""
        return {
            "client": str(self.client) if self.client is not None else None,
            "name": "." if self.name == "" else self.name,  # the root: every name
            "tagged": self.tagged,
        }

    def describe(self) -> str:
        """For the log: ``client 10.1.0.0/24, name teams.microsoft.com, tagged``."""
        parts = [f"client {self.client}"] if self.client is not None else []
        parts += [f"name {self.name}"] if self.name is not None else []
        parts += ["tagged"] if self.tagged else []
        return ", ".join(parts) or "everything"


def parse_client(text: str) -> Network:
    """``10.1.0.0/24``, ``2001:db8::/48`` or one address (a /32 or /128); host bits may be set."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"client {text!r} is not an address or a prefix") from None


def parse_name(text: str) -> str:
    """A name suffix in the form events carry it: lower case, no trailing dot; ``.`` is all."""
    name = text.strip().lower()
    if name != ".":
        name = name.rstrip(".")
    if not name:
        raise ValueError("name is empty")
    if name == ".":
        return ""
    if len(name) > MAX_NAME:
        raise ValueError(f"name longer than {MAX_NAME} characters")
    labels = name.split(".")
    if any(not label or len(label) > 63 for label in labels):
        raise ValueError(f"name {text!r} has an empty label or one longer than 63 characters")
    return name


class Matcher:
    """A `Filter` applied to events: cheap, and the client check remembered per address."""

    __slots__ = ("_clients", "filter")

    def __init__(self, spec: Filter) -> None:
        self.filter = spec
        self._clients: dict[str, bool] = {}

    def __call__(self, event: Mapping[str, Any]) -> bool:
        spec = self.filter
        if spec.tagged and event.get("row") is None:
            return False
        if spec.name is not None and not (
            _below(event.get("name"), spec.name) or _below(event.get("via"), spec.name)
        ):
            return False
        if spec.client is not None:
            client = event.get("client")
            if not isinstance(client, str):
                return False
            inside = self._clients.get(client)
            if inside is None:
                inside = self._inside(client)
            if not inside:
                return False
        return True

    def _inside(self, client: str) -> bool:
        assert self.filter.client is not None
        ip = client_ip(client)
        net = self.filter.client
        inside = ip is not None and ip.version == net.version and ip in net
        if len(self._clients) >= _CLIENT_CACHE_MAX:
            self._clients.clear()
        self._clients[client] = inside
        return inside


def _below(name: Any, suffix: str) -> bool:
    """Whether `name` is `suffix` or a name below it, in whole labels ("" is the root)."""
    if not isinstance(name, str):
        return False
    return not suffix or name == suffix or name.endswith("." + suffix)


def _nothing() -> None:
    return None


class Watcher:
    """One monitor connection: its filter, its queue of events and what it lost."""

    __slots__ = ("dropped", "dropped_total", "label", "limit", "matches", "queue", "sent", "wake")

    def __init__(self, spec: Filter, label: str = "", limit: int = MAX_QUEUE) -> None:
        self.matches = Matcher(spec)
        self.label = label  # who watches, for the log
        self.limit = limit
        self.queue: list[Event] = []
        self.dropped = 0  # since the stream last said so
        self.dropped_total = 0
        self.sent = 0
        self.wake: Callable[[], None] = _nothing  # set by the stream task: events are waiting

    def offer(self, event: Event) -> None:
        """On the DNS path: keep the event if it passes the filter and there is room."""
        if not self.matches(event):
            return
        if len(self.queue) >= self.limit:
            self.dropped += 1
            self.dropped_total += 1
            return
        self.queue.append(event)
        self.wake()

    def take(self) -> tuple[list[Event], int]:
        """The events queued so far and the drops since the last take (they came after them)."""
        events, dropped = self.queue, self.dropped
        self.queue, self.dropped = [], 0
        self.sent += len(events)
        return events, dropped


class Refused(Exception):
    """A monitor beyond its uid's share, or beyond all of them: the message says which."""


class Watchers:
    """The open watchers; the observer of the `Observed` it is connected to while any is open."""

    def __init__(
        self, limit: int = MAX_WATCHERS, queue: int = MAX_QUEUE, daemon_uid: int | None = None
    ) -> None:
        self.queue = queue
        # Shared by uid as the control connections are: a quarter each, a reserve for root.
        uid = os.geteuid() if daemon_uid is None else daemon_uid
        self.shares = UidShares(limit, uid, "monitor")
        self._watchers: dict[Watcher, int] = {}  # open, in order, -> the uid charged for it
        self._target: Observed | None = None
        self.published = 0  # events handed to the watchers
        self.dropped = 0  # by watchers that have left; the open ones hold their own counts

    def connect(self, target: Observed) -> None:
        """Watch `target` (the DNS handler): its observer is set while a watcher is open."""
        self._target = target
        self._observe(bool(self._watchers))

    def _observe(self, on: bool) -> None:
        target = self._target
        if target is None:
            return
        target.observer = self.publish if on else None
        target.refresh_log_level()  # the fast path is skipped only while somebody watches

    @property
    def connected(self) -> bool:
        return self._target is not None

    def open(self, spec: Filter, uid: int, label: str = "") -> Watcher:
        """A new watcher for `uid`; `Refused` says which share it is beyond."""
        refusal = self.shares.take(uid)
        if refusal is not None:
            raise Refused(refusal)
        watcher = Watcher(spec, label, self.queue)
        self._watchers[watcher] = uid
        if len(self._watchers) == 1:
            try:
                self._observe(True)
            except BaseException:
                # No watcher is left behind holding its uid's share, and the handler publishes
                # to nobody: the caller sees the error.
                del self._watchers[watcher]
                self.shares.give_back(uid)
                if self._target is not None:
                    self._target.observer = None
                raise
        log.info("monitor: %s watching (%s)", label or "a client", spec.describe())
        return watcher

    def close(self, watcher: Watcher) -> None:
        if watcher not in self._watchers:
            return
        self.shares.give_back(self._watchers.pop(watcher))
        self.dropped += watcher.dropped_total
        if not self._watchers:
            self._observe(False)
        log.info(
            "monitor: %s stopped watching: %d events sent, %d dropped",
            watcher.label or "a client", watcher.sent, watcher.dropped_total,
        )  # fmt: skip

    def publish(self, event: Event) -> None:
        """The DNS handler's observer: bounded work per watcher, no I/O."""
        self.published += 1
        for watcher in self._watchers:
            watcher.offer(event)

    def status(self) -> dict[str, int]:
        """For `resolverctl status`: watchers open, events published, events dropped."""
        return {
            "watchers": len(self._watchers),
            "events": self.published,
            "dropped": self.dropped + sum(w.dropped_total for w in self._watchers),
        }
