"""The monitor without sockets: filters, the bounded per-watcher queue and its drop count, the
observer wiring, the protocol's monitor request and its permission rule."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from typing import Any

import pytest

from resolver.control import protocol
from resolver.control.monitor import Event, Filter, Refused, Watcher, Watchers, parse_name
from resolver.control.protocol import Dispatcher, Peer, may_run, parse_request

pytestmark = pytest.mark.unit

ROOT = Peer(pid=1, uid=0, gid=0)
NOBODY = Peer(pid=77, uid=65534, gid=65534)
ADMIN_GID = 4242


def ev(
    name: str = "www.example.test",
    client: str = "10.1.0.5",
    row: int | None = None,
    via: str | None = None,
) -> Event:
    return {
        "time": 1.0, "client": client, "name": name, "type": "A", "rcode": "NOERROR",
        "source": "cache", "row": row, "via": via, "pattern": None, "addresses": [],
        "installed": [], "waited_ms": 0.0,
    }  # fmt: skip


def sees(args: dict[str, Any], event: Event) -> bool:
    return Watcher(Filter.from_args(args)).matches(event)


# --- filters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "inside", "outside"),
    [
        ("10.1.0.0/24", ["10.1.0.5", "10.1.0.255"], ["10.1.1.5", "::1", "2001:db8::5"]),
        ("10.1.0.7", ["10.1.0.7"], ["10.1.0.5", "10.1.0.70"]),  # one address: a /32
        ("10.1.0.9/24", ["10.1.0.5"], ["10.2.0.5"]),  # host bits set: still the /24
        ("2001:db8:1::/48", ["2001:db8:1::5", "2001:db8:1:ff::1"], ["2001:db8:2::1", "10.1.0.5"]),
        ("fe80::/10", ["fe80::1%eth0"], ["2001:db8::1"]),  # a scoped client address
        ("10.1.0.0/24", ["::ffff:10.1.0.5"], []),  # v4-mapped counts as IPv4
    ],
)
def test_client_filter(client: str, inside: list[str], outside: list[str]) -> None:
    watcher = Watcher(Filter.from_args({"client": client}))
    for address in inside:
        assert watcher.matches(ev(client=address)), address
        assert watcher.matches(ev(client=address)), address  # remembered, same answer
    for address in outside:
        assert not watcher.matches(ev(client=address)), address
    assert not watcher.matches(ev(client="not-an-address"))
    assert not watcher.matches({**ev(), "client": None})


@pytest.mark.parametrize(
    ("suffix", "name", "seen"),
    [
        ("teams.microsoft.com", "teams.microsoft.com", True),
        ("teams.microsoft.com", "eu.teams.microsoft.com", True),
        ("teams.microsoft.com", "xteams.microsoft.com", False),  # whole labels only
        ("teams.microsoft.com", "microsoft.com", False),
        ("Teams.Microsoft.COM.", "teams.microsoft.com", True),  # case and the trailing dot
        ("com", "teams.microsoft.com", True),
        (".", "anything.example", True),  # the root holds every name
    ],
)
def test_name_filter(suffix: str, name: str, seen: bool) -> None:
    assert sees({"name": suffix}, ev(name=name)) is seen


def test_name_filter_also_matches_the_chain_link_that_tagged() -> None:
    """A corporate alias that CNAMEs into Teams shows under --name teams.microsoft.com."""
    tagged = ev(name="teams.corp.example", row=10, via="teams.microsoft.com")
    assert sees({"name": "teams.microsoft.com"}, tagged)
    assert not sees({"name": "office.com"}, tagged)


def test_tagged_filter_and_all_filters_together() -> None:
    args = {"client": "10.1.0.0/24", "name": "microsoft.com", "tagged": True}
    assert sees(args, ev("teams.microsoft.com", "10.1.0.5", row=10, via="teams.microsoft.com"))
    assert not sees(args, ev("teams.microsoft.com", "10.1.0.5"))  # not tagged
    assert not sees(args, ev("teams.microsoft.com", "10.9.0.5", row=10))  # other client
    assert not sees(args, ev("outlook.office.com", "10.1.0.5", row=2, via="outlook.office.com"))
    assert sees({}, ev())  # no filter: everything
    assert not sees({"tagged": True}, ev())


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({"client": "10.1.0.0/33"}, "not an address or a prefix"),
        ({"client": "teams.microsoft.com"}, "not an address or a prefix"),
        ({"client": 10}, '"client" must be a string'),
        ({"name": ""}, "name is empty"),
        ({"name": "a..b"}, "empty label"),
        ({"name": "x" * 64 + ".com"}, "longer than 63"),
        ({"name": ("a" * 60 + ".") * 5}, "longer than 253"),
        ({"name": ["a"]}, '"name" must be a string'),
        ({"tagged": "yes"}, '"tagged" must be true or false'),
        ({"tagged": 1}, '"tagged" must be true or false'),
        ({"regex": ".*"}, "unknown arguments: regex"),
    ],
)
def test_filter_rejects(args: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        Filter.from_args(args)
    assert fragment in str(info.value)


def test_filter_args_round_trip_normalised() -> None:
    spec = Filter.from_args({"client": "10.1.0.9/24", "name": "Teams.Microsoft.com."})
    assert spec.client == ipaddress.ip_network("10.1.0.0/24")
    assert spec.to_args() == {
        "client": "10.1.0.0/24",
        "name": "teams.microsoft.com",
        "tagged": False,
    }
    assert Filter.from_args(spec.to_args()) == spec
    assert Filter.from_args({"client": None, "name": None}) == Filter()
    assert spec.describe() == "client 10.1.0.0/24, name teams.microsoft.com"
    assert Filter().describe() == "everything"
    assert parse_name(".") == ""


# --- the queue: bounded, drops counted, in order -----------------------------------------------


def test_watcher_queue_is_bounded_and_counts_drops() -> None:
    woken: list[int] = []
    watcher = Watcher(Filter(), limit=3)
    watcher.wake = lambda: woken.append(1)
    for i in range(5):
        watcher.offer(ev(name=f"n{i}.example"))
    assert len(watcher.queue) == 3 and watcher.dropped == 2 and len(woken) == 3
    events, dropped = watcher.take()
    assert [e["name"] for e in events] == ["n0.example", "n1.example", "n2.example"]
    assert dropped == 2  # the newest were dropped: they came after the events kept
    assert watcher.take() == ([], 0)
    watcher.offer(ev(name="n5.example"))
    assert watcher.take() == ([ev(name="n5.example")], 0)
    assert (watcher.sent, watcher.dropped_total) == (4, 2)


def test_watcher_counts_only_what_its_filter_keeps() -> None:
    watcher = Watcher(Filter(tagged=True), limit=1)
    for _ in range(10):
        watcher.offer(ev())  # not tagged: neither queued nor dropped
    assert watcher.queue == [] and watcher.dropped == 0


class FakeHandler:
    """The DNS handler as the monitor sees it: `observer` and `refresh_log_level`."""

    def __init__(self) -> None:
        self.observer: Any = None
        self.refreshed: list[bool] = []  # observer set or not, at each refresh

    def refresh_log_level(self) -> None:
        self.refreshed.append(self.observer is not None)


def test_observer_is_set_by_the_first_watcher_and_cleared_by_the_last() -> None:
    handler, watchers = FakeHandler(), Watchers()
    watchers.connect(handler)
    assert handler.observer is None and handler.refreshed == [False]
    first = watchers.open(Filter(), 0, "uid 0 pid 1")
    assert handler.observer == watchers.publish and handler.refreshed == [False, True]
    second = watchers.open(Filter(tagged=True), 0)
    assert handler.refreshed == [False, True]  # already watched: nothing to change
    watchers.close(first)
    assert handler.observer is not None
    watchers.close(second)
    assert handler.observer is None and handler.refreshed == [False, True, False]
    watchers.close(second)  # twice: no harm
    assert handler.refreshed == [False, True, False]


def test_publish_fans_out_and_status_keeps_the_drops_of_watchers_gone() -> None:
    watchers = Watchers(limit=2, queue=2)
    a, b = watchers.open(Filter(), 0), watchers.open(Filter(tagged=True), 0)
    with pytest.raises(Refused, match="all 2 monitors are in use"):
        watchers.open(Filter(), 0)
    for _ in range(3):
        watchers.publish(ev())
    watchers.publish(ev(row=3, via="outlook.office365.com"))
    assert (len(a.queue), a.dropped, len(b.queue)) == (2, 2, 1)
    assert watchers.status() == {"watchers": 2, "events": 4, "dropped": 2}
    watchers.close(a)
    watchers.close(watchers.open(Filter(), 0))  # the slot is free again
    assert watchers.status() == {"watchers": 1, "events": 4, "dropped": 2}


def test_connect_after_a_watcher_opened_sets_the_observer() -> None:
    handler, watchers = FakeHandler(), Watchers()
    watchers.open(Filter(), 0)
    assert not watchers.connected
    watchers.connect(handler)
    assert watchers.connected and handler.observer is not None


# --- the protocol: the monitor request, its permission, the dispatcher -------------------------


def req(args: Any = None, command: str = "monitor") -> bytes:
    return json.dumps({"version": 1, "command": command, "args": args}).encode() + b"\n"


def test_parse_request_takes_monitor_args_normalised() -> None:
    request = parse_request(
        req({"client": "10.1.0.7", "name": "Teams.Microsoft.com", "tagged": True})
    )
    assert request == protocol.Request(
        "monitor", {"client": "10.1.0.7/32", "name": "teams.microsoft.com", "tagged": True}
    )
    assert parse_request(req(None)).args == {"client": None, "name": None, "tagged": False}
    # The root ("." : every name) goes through the request and back (it was an Internal error).
    assert parse_request(req({"name": "."})).args["name"] == "."
    assert Filter.from_args(parse_request(req({"name": "."})).args).name == ""


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (req({"client": "nope"}), "monitor: client 'nope' is not an address or a prefix"),
        (req({"tagged": "true"}), 'monitor: "tagged" must be true or false'),
        (req({"follow": True}), "monitor: unknown arguments: follow"),
        (req([]), '"args" must be a JSON object'),
        (req({"tagged": True}, "status"), "status takes no arguments"),  # others: still none
    ],
)
def test_parse_request_rejects_bad_monitor_args(data: bytes, fragment: str) -> None:
    with pytest.raises(protocol.BadRequest) as info:
        parse_request(data)
    assert fragment in info.value.message


def test_monitor_is_admin_only() -> None:
    assert "monitor" in protocol.ADMIN_COMMANDS and "monitor" not in protocol.READ_COMMANDS
    assert not may_run("monitor", NOBODY, ADMIN_GID, 999)
    assert may_run("monitor", Peer(5, 1000, 1000, frozenset({ADMIN_GID})), ADMIN_GID, 999)
    assert may_run("monitor", ROOT, ADMIN_GID, 999)


class NoHandlers:
    def status(self) -> dict[str, Any]:
        return {}

    def routes(self) -> list[dict[str, Any]]:
        return []

    async def flush(self) -> dict[str, Any]:
        return {}

    async def reload(self) -> dict[str, Any]:
        return {}

    async def policy_update(self) -> dict[str, Any]:
        return {}


def dispatch(dispatcher: Dispatcher, data: bytes, peer: Peer = ROOT) -> protocol.Answer:
    return asyncio.run(dispatcher.handle(data, peer))


def test_dispatch_monitor_opens_a_watcher(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    watchers = Watchers()
    dispatcher = Dispatcher(NoHandlers(), ADMIN_GID, 999, "netadmin", watchers)
    answer = dispatch(dispatcher, req({"name": "teams.microsoft.com", "tagged": True}))
    assert json.loads(answer.data) == {"version": 1, "ok": True, "result": {"streaming": True}}
    assert answer.watcher is not None
    assert answer.watcher.matches.filter == Filter(None, "teams.microsoft.com", True)
    assert watchers.status()["watchers"] == 1
    assert "monitor: uid 0 pid 1 watching (name teams.microsoft.com, tagged)" in caplog.text
    # Other commands answer without a watcher.
    assert dispatch(dispatcher, req(None, "ping")).watcher is None


def test_dispatch_monitor_denied_busy_or_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    watchers = Watchers(limit=1)
    dispatcher = Dispatcher(NoHandlers(), ADMIN_GID, 999, "netadmin", watchers)

    def error(answer: protocol.Answer) -> tuple[str, str]:
        assert answer.watcher is None
        response = json.loads(answer.data)
        return response["error"]["name"], response["error"]["message"]

    assert error(dispatch(dispatcher, req(None), NOBODY)) == (
        "PermissionDenied",
        "monitor needs root or membership of group netadmin",
    )
    assert "monitor denied to uid 65534" in caplog.text
    assert watchers.status()["watchers"] == 0
    assert dispatch(dispatcher, req(None)).watcher is not None
    name, message = error(dispatch(dispatcher, req(None)))
    assert (name, message) == ("Busy", "the one monitor is in use")
    assert error(dispatch(dispatcher, req({"client": "x"})))[0] == "BadRequest"
    bare = Dispatcher(NoHandlers(), ADMIN_GID, 999)
    assert error(dispatch(bare, req(None)))[0] == "UnknownCommand"
