"""The control protocol: JSON lines over a Unix stream socket, apart from any socket.

A client sends one JSON object per line and reads one JSON object per line back, in order; a
connection may carry several requests::

    {"version": 1, "command": "status", "args": {}}
    {"version": 1, "ok": true, "result": {...}}
    {"version": 1, "ok": false, "error": {"name": "PermissionDenied", "message": "..."}}

Read commands (``status``, ``routes``, ``ping``, ``version``) are open to anyone who can connect
to the socket. Commands that change state (``flush``, ``reload``, ``policy_update``) and
``monitor`` (it shows which client asked for which name) need root, the daemon's own user (so
that ``ExecReload=resolverctl reload`` works), or membership of the socket file's group, as the
peer's primary or a supplementary group.

``monitor`` is the one streaming command and the one that takes arguments, all optional::

    {"version": 1, "command": "monitor", "args": {"client": "10.1.0.0/24",
                                                  "name": "teams.microsoft.com", "tagged": true}}
    {"version": 1, "ok": true, "result": {"streaming": true}}
    {"time": ..., "client": ..., "name": ..., ...}      one line per answered query
    {"dropped": 12}                                       events this watcher was too slow for

The event lines follow until the client closes the connection (or its sending side); nothing
the client sends after the request is read. See resolver.control.monitor.

This module is stdlib only and imports no asyncio: ``resolverctl`` uses it too. `Dispatcher`
holds the parse/validate/authorize/dispatch logic; `resolver.control.server` only moves lines.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, NamedTuple, Protocol

from resolver import __version__
from resolver.control.monitor import Filter, Refused, Watcher, Watchers

log = logging.getLogger(__name__)

VERSION = 1
MAX_REQUEST_BYTES = 64 * 1024  # one request line, newline included
MAX_RESPONSE_BYTES = 256 * 1024 * 1024  # what a client accepts (routes can be long)

# Error names: the "name" of an error response.
BAD_REQUEST = "BadRequest"
UNSUPPORTED_VERSION = "UnsupportedVersion"
UNKNOWN_COMMAND = "UnknownCommand"
PERMISSION_DENIED = "PermissionDenied"
RELOAD_FAILED = "ReloadFailed"
UPDATE_FAILED = "UpdateFailed"
BUSY = "Busy"
INTERNAL = "Internal"

MONITOR = "monitor"  # the streaming command
READ_COMMANDS = frozenset({"status", "routes", "ping", "version"})
ADMIN_COMMANDS = frozenset({"flush", "reload", "policy_update", MONITOR})
COMMANDS = READ_COMMANDS | ADMIN_COMMANDS


class ControlError(Exception):
    """An error a request ends with; sent to the client as ``{"name", "message"}``."""

    name = INTERNAL

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if name is not None:
            self.name = name

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "message": self.message}


class BadRequest(ControlError):
    name = BAD_REQUEST


class UnsupportedVersion(ControlError):
    name = UNSUPPORTED_VERSION


class UnknownCommand(ControlError):
    name = UNKNOWN_COMMAND


class PermissionDenied(ControlError):
    name = PERMISSION_DENIED


class ReloadFailed(ControlError):
    """Raised by `ControlHandlers.reload` when the new config is bad; the old one stays."""

    name = RELOAD_FAILED


class UpdateFailed(ControlError):
    """Raised by `ControlHandlers.policy_update` when the endpoint service cannot be used."""

    name = UPDATE_FAILED


class ControlHandlers(Protocol):
    """What the daemon provides to the control socket.

    A handler signals an expected failure by raising a `ControlError` subclass (`ReloadFailed`,
    `UpdateFailed`); the client sees its name and message. Any other exception is a bug: it is
    logged with its traceback and answered with an ``Internal`` error.
    """

    def status(self) -> dict[str, Any] | Awaitable[dict[str, Any]]: ...

    def routes(self) -> list[dict[str, Any]] | RawJSON | Awaitable[RawJSON]: ...

    async def flush(self) -> dict[str, Any]: ...

    async def reload(self) -> dict[str, Any]:
        """Return only once the new config is in force (or raise ReloadFailed)."""
        ...

    async def policy_update(self) -> dict[str, Any]: ...


class Request(NamedTuple):
    command: str
    args: dict[str, Any]


class Answer(NamedTuple):
    """What `Dispatcher.handle` sends back: the response line, and for ``monitor`` the watcher
    whose events follow it on the same connection."""

    data: bytes
    watcher: Watcher | None = None


class Peer(NamedTuple):
    """The credentials of a connected client, from SO_PEERCRED (and SO_PEERGROUPS)."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()  # supplementary groups, where known


def encode(message: Mapping[str, Any]) -> bytes:
    """One JSON line, compact, ASCII-safe."""
    return json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n"


class RawJSON(bytes):
    """A result a handler has encoded already (compact, ASCII, no newline): it goes into the
    response as it is, and a client may print it without parsing it (`resolverctl routes
    --json` with 30,000 routes)."""


OK_PREFIX = b'{"version":%d,"ok":true,"result":' % VERSION


def encode_ok(result: Any) -> bytes:
    """The success response line for `result`."""
    if isinstance(result, RawJSON):
        return OK_PREFIX + result + b"}\n"
    return encode(ok_response(result))


def raw_result(line: bytes) -> bytes | None:
    """The result of a success response line as the bytes it was sent as (no parsing); None
    for any other line (an error: parse it with `parse_response`)."""
    if line.startswith(OK_PREFIX) and line.endswith(b"}"):
        return line[len(OK_PREFIX) : -1]
    return None


def encode_request(command: str, args: Mapping[str, Any] | None = None) -> bytes:
    return encode({"version": VERSION, "command": command, "args": dict(args or {})})


def ok_response(result: Any) -> dict[str, Any]:
    return {"version": VERSION, "ok": True, "result": result}


def error_response(name: str, message: str) -> dict[str, Any]:
    return {"version": VERSION, "ok": False, "error": {"name": name, "message": message}}


def _loads(line: bytes) -> Any:
    try:
        return json.loads(line)
    except RecursionError:
        raise BadRequest("not a JSON line: nested too deeply") from None
    except ValueError as exc:
        # JSONDecodeError and UnicodeDecodeError are ValueErrors; so is what int() raises for a
        # number longer than sys.get_int_max_str_digits() (4300 digits), without its advice.
        raise BadRequest(f"not a JSON line: {str(exc).partition('; use sys.')[0]}") from None


def parse_request(line: bytes) -> Request:
    """Validate one request line; raise a ControlError saying what is wrong."""
    if len(line) > MAX_REQUEST_BYTES:
        raise BadRequest(f"request longer than {MAX_REQUEST_BYTES} bytes")
    data = _loads(line)
    if not isinstance(data, dict):
        raise BadRequest("a request is a JSON object")
    unknown = sorted(set(data) - {"version", "command", "args"})
    if unknown:
        raise BadRequest(f"unknown request keys: {', '.join(unknown)}")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise BadRequest(f'"version" must be an integer (this daemon speaks {VERSION})')
    if version != VERSION:
        raise UnsupportedVersion(f"protocol version {version} is not supported (only {VERSION})")
    command = data.get("command")
    if not isinstance(command, str) or not command:
        raise BadRequest('"command" must be a non-empty string')
    args = data.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise BadRequest('"args" must be a JSON object')
    if command not in COMMANDS:
        raise UnknownCommand(
            f"unknown command {command[:64]!r} (known: {', '.join(sorted(COMMANDS))})"
        )
    if command == MONITOR:
        try:
            args = Filter.from_args(args).to_args()
        except ValueError as exc:
            raise BadRequest(f"monitor: {exc}") from None
    elif args:
        raise BadRequest(f"{command} takes no arguments, got: {', '.join(sorted(args))}")
    return Request(command, args)


def parse_response(line: bytes) -> Any:
    """The result of a response line (client side); an error response raises ControlError."""
    data = json.loads(line)  # ValueError for a broken daemon; the client reports it
    if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
        raise ValueError("response is not a control protocol object")
    if data["ok"]:
        return data.get("result")
    error = data.get("error")
    if not isinstance(error, dict):
        raise ValueError("error response without an error object")
    raise ControlError(str(error.get("message", "")), str(error.get("name", INTERNAL)))


def may_run(command: str, peer: Peer, admin_gid: int, daemon_uid: int) -> bool:
    """Whether `peer` may run `command`; `admin_gid` is the socket file's group."""
    if command not in ADMIN_COMMANDS:
        return True
    if peer.uid in (0, daemon_uid):
        return True
    return peer.gid == admin_gid or admin_gid in peer.groups


class Dispatcher:
    """Turns request lines into response objects: parse, authorize, call the handler (or, for
    ``monitor``, open a watcher in `watchers`)."""

    def __init__(
        self,
        handlers: ControlHandlers,
        admin_gid: int,
        daemon_uid: int,
        admin_group_name: str = "",
        watchers: Watchers | None = None,
    ) -> None:
        self.handlers = handlers
        self.admin_gid = admin_gid
        self.daemon_uid = daemon_uid
        self.admin_group_name = admin_group_name or str(admin_gid)
        self.watchers = watchers

    def _table(self) -> dict[str, Callable[[], Any]]:
        h = self.handlers
        return {
            "status": h.status,
            "routes": h.routes,
            "ping": lambda: {"pong": True},
            "version": lambda: {"version": __version__, "protocol": VERSION},
            "flush": h.flush,
            "reload": h.reload,
            "policy_update": h.policy_update,
        }

    def _monitor(self, request: Request, peer: Peer) -> Answer:
        watchers = self.watchers
        if watchers is None:
            raise UnknownCommand("monitor is not available on this socket")
        spec = Filter.from_args(request.args)
        try:
            watcher = watchers.open(spec, peer.uid, f"uid {peer.uid} pid {peer.pid}")
        except Refused as exc:
            raise ControlError(str(exc), BUSY) from None
        return Answer(encode(ok_response({"streaming": True})), watcher)

    async def handle(self, line: bytes, peer: Peer) -> Answer:
        """The encoded response line for one request line; never raises. For ``monitor`` the
        answer carries the watcher: the caller streams its events, then closes it."""
        command = "?"
        try:
            request = parse_request(line)
            command = request.command
            if not may_run(command, peer, self.admin_gid, self.daemon_uid):
                log.warning(
                    "control: %s denied to uid %d gid %d pid %d",
                    command,
                    peer.uid,
                    peer.gid,
                    peer.pid,
                )
                raise PermissionDenied(
                    f"{command} needs root or membership of group {self.admin_group_name}"
                )
            if command == MONITOR:
                return self._monitor(request, peer)  # logged by Watchers.open, with the filter
            if command in ADMIN_COMMANDS:
                log.info("control: %s by uid %d pid %d", command, peer.uid, peer.pid)
            result = self._table()[command]()
            if isinstance(result, Awaitable):
                result = await result
            return Answer(encode_ok(result))  # a result JSON cannot carry: below
        except ControlError as exc:
            if command in ADMIN_COMMANDS and not isinstance(exc, PermissionDenied):
                log.info("control: %s failed: %s: %s", command, exc.name, exc.message)
            return Answer(encode(error_response(exc.name, exc.message)))
        except Exception as exc:
            log.exception("control: %s: internal error", command)
            return Answer(
                encode(error_response(INTERNAL, f"{command}: {type(exc).__name__}: {exc}"))
            )


def parse_proc_groups(status_text: str) -> frozenset[int]:
    """The ``Groups:`` line of /proc/<pid>/status as a set of gids."""
    for line in status_text.splitlines():
        if line.startswith("Groups:"):
            return frozenset(int(g) for g in line[len("Groups:") :].split())
    return frozenset()


def groups_of(pid: int, known: Collection[int] | None = None) -> frozenset[int]:
    """Supplementary groups: `known` (from SO_PEERGROUPS) if given, else /proc/<pid>/status.

    Under ``ProtectProc=invisible`` another user's /proc entry is hidden; then the set is empty
    and only the peer's primary gid counts.
    """
    if known is not None:
        return frozenset(known)
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            return parse_proc_groups(fh.read())
    except OSError as exc:
        log.debug("control: cannot read groups of pid %d: %s", pid, exc)
        return frozenset()
