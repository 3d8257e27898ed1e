"""resolverctl's side of the control socket: blocking, stdlib only, one request per call (or,
for ``monitor``, one stream of lines per call).

Where the socket is: ``--socket``, else ``control.socket`` from the config file (``--config``, or
the default config file when it exists), else the built-in default. Errors become `CtlError`,
whose `code` is resolverctl's exit status: 3 when the daemon is not running, 1 otherwise.
"""

from __future__ import annotations

import argparse
import errno
import grp
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from resolver.control.protocol import (
    MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES,
    PERMISSION_DENIED,
    RELOAD_FAILED,
    UPDATE_FAILED,
    ControlError,
    encode_request,
    parse_response,
    raw_result,
)
from resolver.ctl.printable import printable

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NOT_RUNNING = 3

READ_TIMEOUT = 10.0  # seconds for status, routes
ADMIN_TIMEOUT = 300.0  # flush, reload, policy update: the daemon answers when it is done

_EXPECTED_FAILURES = frozenset({RELOAD_FAILED, UPDATE_FAILED})


class CtlError(Exception):
    """An error resolverctl reports on stderr and exits with `code` for."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class RemoteError(CtlError):
    """The daemon answered with an error response.

    Reads ``reload failed: MESSAGE``; the error's name is shown too unless it is the one the
    command is expected to fail with (ReloadFailed, UpdateFailed). A message of several lines
    (one per config error) starts on the next line, indented.
    """

    def __init__(self, command: str, name: str, message: str, hint: str = "") -> None:
        head = f"{command} failed" if name in _EXPECTED_FAILURES else f"{command} failed ({name})"
        lines = [line for line in message.splitlines() if line.strip()] or ["(no message)"]
        if hint:
            lines[-1] += f"; {hint}"
        if len(lines) == 1:
            text = f"{head}: {lines[0]}"
        else:
            text = f"{head}:" + "".join(f"\n  {line}" for line in lines)
        super().__init__(text)
        self.name = name


class SocketPath(NamedTuple):
    path: str
    origin: str  # "--socket", "config FILE" or "default"


class Defaults(NamedTuple):
    """Where resolverctl looks when the command line does not say: resolver.config's
    DEFAULT_CONFIG and DEFAULT_SOCKET (`installed_defaults`), or a test's own."""

    config: str  # read for control.socket when it exists and --config is not given
    socket: str  # when neither --socket nor a config names one


# How a request reaches the daemon: (socket path, command, args, timeout) -> the response line.
# `call_line`, or a test's own; resolverctl's main hands it to the commands in `args.call_line`.
CallLine = Callable[[str, str, dict[str, Any] | None, float], bytes]


def installed_defaults() -> Defaults:
    # Imported here: with --socket, resolverctl never needs the config code (or PyYAML).
    from resolver.config import DEFAULT_CONFIG, DEFAULT_SOCKET

    return Defaults(DEFAULT_CONFIG, DEFAULT_SOCKET)


def warn(message: str) -> None:
    print(f"resolverctl: warning: {printable(message)}", file=sys.stderr)


def socket_path(
    socket_opt: str | None, config_opt: str | None, defaults: Defaults | None = None
) -> SocketPath:
    """Find the control socket; a config that cannot be read is warned about, not fatal."""
    if socket_opt:
        return SocketPath(socket_opt, "--socket")
    if defaults is None:
        defaults = installed_defaults()
    config = config_opt or (defaults.config if os.path.exists(defaults.config) else None)
    if config is not None:
        path = _socket_from_config(config)
        if path is not None:
            return SocketPath(path, f"config {config}")
    return SocketPath(defaults.socket, "default")


def _where(args: argparse.Namespace) -> SocketPath:
    """The socket the command line names (main puts a test's `defaults` in `args`)."""
    return socket_path(
        getattr(args, "socket", None), getattr(args, "config", None),
        getattr(args, "defaults", None),
    )  # fmt: skip


def _socket_from_config(config: str) -> str | None:
    from resolver.config import ConfigError, load_config

    try:
        return load_config(config).control.socket
    except ConfigError as exc:
        first = exc.errors[0] if exc.errors else str(exc)
        more = f" (and {len(exc.errors) - 1} more)" if len(exc.errors) > 1 else ""
        lenient = _socket_from_bad_config(config)
        using = f"using control.socket {lenient}" if lenient else "using the default socket"
        warn(f"{config}: {first}{more}; {using}")
        return lenient


def _socket_from_bad_config(config: str) -> str | None:
    """control.socket from a config that fails validation (the daemon may still run)."""
    import yaml

    try:
        with open(config, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return None
    control = data.get("control") if isinstance(data, dict) else None
    path = control.get("socket") if isinstance(control, dict) else None
    return path if isinstance(path, str) and path else None


def call(path: str, command: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    """Send one request and return its result.

    Raises OSError for socket errors (TimeoutError when no answer comes in time), ControlError
    for an error response and ValueError for an answer that is not the protocol.
    """
    return parse_response(call_line(path, command, args, timeout))


def call_line(
    path: str, command: str, args: dict[str, Any] | None = None, timeout: float = 10.0
) -> bytes:
    """Send one request and return its response line, unparsed (see `call`)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(encode_request(command, args))
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionResetError(errno.ECONNRESET, "the daemon closed the connection")
            chunks.append(chunk)
            size += len(chunk)
            if b"\n" in chunk:
                break
            if size > MAX_RESPONSE_BYTES:
                raise ValueError(f"answer longer than {MAX_RESPONSE_BYTES} bytes")
    return b"".join(chunks).split(b"\n", 1)[0]


def request(args: argparse.Namespace, command: str, timeout: float = READ_TIMEOUT) -> Any:
    """Run `command` on the daemon named by the command line; errors become CtlError."""
    return _request(args, command, timeout, raw=False)


def request_raw(args: argparse.Namespace, command: str, timeout: float = READ_TIMEOUT) -> bytes:
    """`request`, with the result as the JSON bytes the daemon sent (not parsed)."""
    result: bytes = _request(args, command, timeout, raw=True)
    return result


def _request(args: argparse.Namespace, command: str, timeout: float, raw: bool) -> Any:
    where = _where(args)
    timeout = getattr(args, "timeout", None) or timeout
    send: CallLine = getattr(args, "call_line", None) or call_line
    try:
        line = send(where.path, command, None, timeout)
        result = raw_result(line) if raw else None
        return result if result is not None else parse_response(line)
    except (OSError, ControlError, ValueError) as exc:
        raise _failure(exc, where, command, timeout) from None


def stream(args: argparse.Namespace, command: str, command_args: dict[str, Any]) -> Iterator[Any]:
    """Run a streaming command (``monitor``): its lines as parsed JSON, until the daemon
    closes the connection (CtlError, exit 3: it stopped). Errors become CtlError, as for
    `request`; only the first answer is bounded by the timeout."""
    where = _where(args)
    timeout = getattr(args, "timeout", None) or READ_TIMEOUT
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, sock.makefile("rb") as lines:
        try:
            sock.settimeout(timeout)
            sock.connect(where.path)
            sock.sendall(encode_request(command, command_args))
            parse_response(_read_line(lines))  # an error answer raises ControlError
            sock.settimeout(None)
        except (OSError, ControlError, ValueError) as exc:
            raise _failure(exc, where, command, timeout) from None
        while True:
            try:
                line = _read_line(lines)
            except ConnectionError:
                raise CtlError(
                    f"resolverd closed the connection at {where.path} (it stopped or restarted)",
                    EXIT_NOT_RUNNING,
                ) from None
            except (OSError, ValueError) as exc:
                raise _failure(exc, where, command, timeout) from None
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise _failure(exc, where, command, timeout) from None
            yield item


def _read_line(lines: Any) -> bytes:
    line: bytes = lines.readline(MAX_REQUEST_BYTES)
    if not line:
        raise ConnectionResetError(errno.ECONNRESET, "the daemon closed the connection")
    if not line.endswith(b"\n"):
        raise ValueError(f"line longer than {MAX_REQUEST_BYTES} bytes")
    return line


def _failure(exc: Exception, where: SocketPath, command: str, timeout: float) -> CtlError:
    """A socket or protocol error while talking to the daemon, as the CtlError to report."""
    path = where.path
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return CtlError(
            f"resolverd is not running (no socket at {path}, from {where.origin})",
            EXIT_NOT_RUNNING,
        )
    if isinstance(exc, ConnectionRefusedError):
        return CtlError(
            f"resolverd is not running (nothing listens on {path}, from {where.origin})",
            EXIT_NOT_RUNNING,
        )
    if isinstance(exc, PermissionError):
        return CtlError(f"cannot connect to {path}: permission denied; {_hint(path)}")
    if isinstance(exc, TimeoutError):
        return CtlError(f"no answer from resolverd at {path} within {timeout:g}s")
    if isinstance(exc, OSError):
        return CtlError(f"cannot talk to resolverd at {path}: {exc.strerror or exc}")
    if isinstance(exc, ControlError):
        hint = _hint(path) if exc.name == PERMISSION_DENIED else ""
        return RemoteError(command.replace("_", " "), exc.name, exc.message, hint)
    return CtlError(f"garbled answer from resolverd at {path}: {exc}")


def _hint(path: str) -> str:
    try:
        gid = os.stat(path).st_gid
    except OSError:
        return "run as root or as a member of the socket's group"
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return f"run as root or as a member of group {group}"


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))
