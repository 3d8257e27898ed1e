"""The control protocol without sockets: parsing, authorization, dispatch, error responses."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from resolver.control import protocol
from resolver.control.protocol import (
    Dispatcher,
    Peer,
    ReloadFailed,
    may_run,
    parse_request,
    parse_response,
)

pytestmark = pytest.mark.unit

ROOT = Peer(pid=1, uid=0, gid=0)
ADMIN_GID = 4242
DAEMON_UID = 999


class FakeHandlers:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.reload_error: Exception | None = None

    def status(self) -> dict[str, Any]:
        self.calls.append("status")
        return {"uptime_s": 5}

    def routes(self) -> list[dict[str, Any]]:
        self.calls.append("routes")
        return [{"address": "192.0.2.7", "family": 4, "names": ["a.office.com"], "row": 2}]

    async def flush(self) -> dict[str, Any]:
        self.calls.append("flush")
        return {"routes_removed": 3}

    async def reload(self) -> dict[str, Any]:
        self.calls.append("reload")
        if self.reload_error is not None:
            raise self.reload_error
        return {"config": "/etc/resolverd/resolverd.yaml"}

    async def policy_update(self) -> dict[str, Any]:
        self.calls.append("policy_update")
        return {"changed": False}


def line(command: str, **extra: Any) -> bytes:
    return json.dumps({"version": 1, "command": command, **extra}).encode() + b"\n"


def handle(dispatcher: Dispatcher, data: bytes, peer: Peer = ROOT) -> dict[str, Any]:
    out = asyncio.run(dispatcher.handle(data, peer)).data
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    response: dict[str, Any] = json.loads(out)
    assert response["version"] == protocol.VERSION
    return response


@pytest.fixture
def handlers() -> FakeHandlers:
    return FakeHandlers()


@pytest.fixture
def dispatcher(handlers: FakeHandlers) -> Dispatcher:
    return Dispatcher(handlers, ADMIN_GID, DAEMON_UID, "netadmin")


# --- parse_request ------------------------------------------------------------------------------


def test_parse_request_accepts_the_documented_form() -> None:
    request = parse_request(b'{"version": 1, "command": "status", "args": {}}\n')
    assert request == protocol.Request("status", {})


def test_parse_request_args_may_be_left_out_or_null() -> None:
    assert parse_request(b'{"version": 1, "command": "routes"}').args == {}
    assert parse_request(b'{"version": 1, "command": "routes", "args": null}').args == {}


@pytest.mark.parametrize(
    ("data", "name", "fragment"),
    [
        (b"not json\n", "BadRequest", "not a JSON line"),
        (b"\xff\xfe\n", "BadRequest", "not a JSON line"),
        (b"[1, 2]\n", "BadRequest", "JSON object"),
        (b'{"command": "status"}', "BadRequest", '"version" must be an integer'),
        (b'{"version": "1", "command": "status"}', "BadRequest", '"version" must be an integer'),
        (b'{"version": true, "command": "status"}', "BadRequest", '"version" must be an integer'),
        (b'{"version": 2, "command": "status"}', "UnsupportedVersion", "version 2"),
        (b'{"version": 1}', "BadRequest", '"command"'),
        (b'{"version": 1, "command": ""}', "BadRequest", '"command"'),
        (b'{"version": 1, "command": 5}', "BadRequest", '"command"'),
        (b'{"version": 1, "command": "shutdown"}', "UnknownCommand", "'shutdown'"),
        (b'{"version": 1, "command": "status", "args": []}', "BadRequest", '"args"'),
        (b'{"version": 1, "command": "status", "args": {"x": 1}}', "BadRequest", "no arguments"),
        (b'{"version": 1, "command": "status", "extra": 1}', "BadRequest", "extra"),
        (b"[" * 100_000 + b"]" * 100_000, "BadRequest", "longer than"),
        (b"[" * 10_000 + b"]" * 10_000, "BadRequest", "not a JSON line"),
        (b"\xff\xfe{\x00", "BadRequest", "not a JSON line"),  # UTF-16, its last unit cut short
        (b"\x00\x00\x00", "BadRequest", "not a JSON line"),
    ],
)
def test_parse_request_rejects(data: bytes, name: str, fragment: str) -> None:
    with pytest.raises(protocol.ControlError) as info:
        parse_request(data)
    assert info.value.name == name
    assert fragment in info.value.message


def test_unknown_command_lists_the_known_ones() -> None:
    with pytest.raises(protocol.UnknownCommand, match="known: flush, monitor, ping, policy_update"):
        parse_request(line("nope"))


# --- responses ----------------------------------------------------------------------------------


def test_encode_request_and_parse_response_round_trip() -> None:
    assert json.loads(protocol.encode_request("status")) == {
        "version": 1,
        "command": "status",
        "args": {},
    }
    assert parse_response(b'{"version": 1, "ok": true, "result": {"a": 1}}') == {"a": 1}


def test_parse_response_raises_the_remote_error() -> None:
    with pytest.raises(protocol.ControlError) as info:
        parse_response(protocol.encode(protocol.error_response("ReloadFailed", "bad config")))
    assert (info.value.name, info.value.message) == ("ReloadFailed", "bad config")


@pytest.mark.parametrize("data", [b"{}", b"[]", b'{"ok": "yes"}', b'{"ok": false}', b"nope"])
def test_parse_response_rejects_non_protocol_answers(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_response(data)


# --- authorization ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(protocol.READ_COMMANDS))
def test_read_commands_are_open_to_anyone(command: str) -> None:
    assert may_run(command, Peer(10, 65534, 65534), ADMIN_GID, DAEMON_UID)


@pytest.mark.parametrize("command", sorted(protocol.ADMIN_COMMANDS))
@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        (Peer(10, 0, 0), True),  # root
        (Peer(10, 0, 65534), True),  # root with another group
        (Peer(10, DAEMON_UID, 65534), True),  # the daemon's own user (ExecReload)
        (Peer(10, 1000, ADMIN_GID), True),  # primary group is the socket's group
        (Peer(10, 1000, 1000, frozenset({27, ADMIN_GID})), True),  # supplementary group
        (Peer(10, 1000, 1000, frozenset({27, 100})), False),
        (Peer(10, 65534, 65534), False),
    ],
)
def test_admin_commands_need_root_or_the_group(command: str, peer: Peer, allowed: bool) -> None:
    assert may_run(command, peer, ADMIN_GID, DAEMON_UID) is allowed


def test_parse_proc_groups() -> None:
    text = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 4242 \nNgid:\t0\n"
    assert protocol.parse_proc_groups(text) == frozenset({4, 24, 27, 4242})
    assert protocol.parse_proc_groups("Groups:\t\n") == frozenset()
    assert protocol.parse_proc_groups("Name:\tx\n") == frozenset()


def test_groups_of_prefers_the_kernel_list() -> None:
    assert protocol.groups_of(1, [5, 6]) == frozenset({5, 6})
    assert protocol.groups_of(2**22 + 12345, None) == frozenset()  # no such process


# --- dispatch -----------------------------------------------------------------------------------


def test_dispatch_status(dispatcher: Dispatcher, handlers: FakeHandlers) -> None:
    assert handle(dispatcher, line("status")) == {
        "version": 1,
        "ok": True,
        "result": {"uptime_s": 5},
    }
    assert handlers.calls == ["status"]


def test_dispatch_ping_and_version(dispatcher: Dispatcher) -> None:
    assert handle(dispatcher, line("ping"))["result"] == {"pong": True}
    result = handle(dispatcher, line("version"))["result"]
    assert result["protocol"] == 1 and isinstance(result["version"], str)


def test_dispatch_awaits_async_handlers(dispatcher: Dispatcher, handlers: FakeHandlers) -> None:
    assert handle(dispatcher, line("flush"))["result"] == {"routes_removed": 3}
    assert handle(dispatcher, line("policy_update"))["result"] == {"changed": False}
    assert handlers.calls == ["flush", "policy_update"]


def test_dispatch_denies_admin_commands_without_calling_the_handler(
    dispatcher: Dispatcher, handlers: FakeHandlers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    nobody = Peer(pid=77, uid=65534, gid=65534)
    for command in ("flush", "reload", "policy_update"):
        response = handle(dispatcher, line(command), nobody)
        assert response["ok"] is False
        assert response["error"]["name"] == "PermissionDenied"
        assert "group netadmin" in response["error"]["message"]
    assert handlers.calls == []
    assert "reload denied to uid 65534 gid 65534 pid 77" in caplog.text
    assert handle(dispatcher, line("status"), nobody)["ok"] is True


def test_reload_failed_is_reported_not_logged_as_a_bug(
    dispatcher: Dispatcher, handlers: FakeHandlers, caplog: pytest.LogCaptureFixture
) -> None:
    handlers.reload_error = ReloadFailed("/etc/x.yaml: /upstreams: at least one upstream")
    response = handle(dispatcher, line("reload"))
    assert response == {
        "version": 1,
        "ok": False,
        "error": {
            "name": "ReloadFailed",
            "message": "/etc/x.yaml: /upstreams: at least one upstream",
        },
    }
    assert "Traceback" not in caplog.text


def test_handler_exception_becomes_internal_error_and_is_logged(
    dispatcher: Dispatcher, handlers: FakeHandlers, caplog: pytest.LogCaptureFixture
) -> None:
    handlers.reload_error = KeyError("boom")
    response = handle(dispatcher, line("reload"))
    assert response["ok"] is False
    assert response["error"]["name"] == "Internal"
    assert "KeyError" in response["error"]["message"]
    records = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert records and records[0].exc_info is not None
    # The dispatcher goes on answering.
    assert handle(dispatcher, line("status"))["ok"] is True


def test_result_that_is_not_json_is_an_internal_error(handlers: FakeHandlers) -> None:
    handlers.status = lambda: {"when": object()}  # type: ignore[method-assign]
    response = handle(Dispatcher(handlers, ADMIN_GID, DAEMON_UID), line("status"))
    assert response["error"]["name"] == "Internal"


def test_bad_request_line_gets_an_error_response(dispatcher: Dispatcher) -> None:
    response = handle(dispatcher, b"{oops\n")
    assert response["ok"] is False and response["error"]["name"] == "BadRequest"


# --- hostile request lines ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        # Python's int conversion limit (4300 digits) raises a plain ValueError inside json.loads.
        (b'{"version": ' + b"1" * 5000 + b', "command": "status"}', "value has 5000 digits"),
        (
            b'{"version": 1, "command": "status", "args": {"x": -' + b"9" * 4301 + b"}}",
            "value has 4301 digits",
        ),
    ],
)
def test_hostile_json_is_a_bad_request_without_a_traceback(
    dispatcher: Dispatcher,
    handlers: FakeHandlers,
    caplog: pytest.LogCaptureFixture,
    data: bytes,
    fragment: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    response = handle(dispatcher, data)
    assert response["error"]["name"] == "BadRequest"
    assert response["error"]["message"].startswith("not a JSON line: ")
    assert fragment in response["error"]["message"]
    assert "set_int_max_str_digits" not in response["error"]["message"]
    assert handlers.calls == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
