"""The control socket: a Unix stream socket speaking `resolver.control.protocol`.

The socket file is created mode 0660, owned by the daemon's user and the configured group (or
the daemon's own group), atomically: it is bound under a temporary name, given its mode and group,
then renamed over the final path, so no client ever sees it with looser permissions. A stale
socket left by a crashed daemon is replaced; a live one (another daemon answering) is an error.
`stop()` removes the file, if it is still ours.

Each connection may carry several requests, one line each, answered in order. A request line is
at most `protocol.MAX_REQUEST_BYTES`; a connection idle for `idle_timeout` seconds is closed,
and one that has not taken an answer within `idle_timeout` is aborted (its answer dropped:
closing would keep it until read).
Commands that change state run one at a time. Peers share `max_connections` by uid
(`shares.UidShares`); one beyond its share is answered `Busy`.

A ``monitor`` request turns its connection into a stream: the watcher's events (see
resolver.control.monitor), one JSON line each, until the client closes. `monitor` holds the
watchers; the daemon connects it to the DNS handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import Any

from resolver.control.monitor import Event, Watcher, Watchers
from resolver.control.peers import PeerGroups, peer_credentials
from resolver.control.protocol import (
    BUSY,
    MAX_REQUEST_BYTES,
    BadRequest,
    ControlHandlers,
    Dispatcher,
    Peer,
    RawJSON,
    encode,
    error_response,
)
from resolver.control.shares import UidShares

log = logging.getLogger(__name__)

_MAX_PATH = 107  # sun_path is 108 bytes, NUL included

Drain = Callable[[asyncio.StreamWriter], Awaitable[None]]  # wait until the writer may write


def resolve_group(group: str | None) -> tuple[int, str]:
    """The gid and name for ``control.group``: a name, a number, or None (the daemon's group)."""
    if group is None:
        gid = os.getegid()
    elif group.isdigit():
        gid = int(group)
    else:
        try:
            return grp.getgrnam(group).gr_gid, group
        except KeyError:
            raise ValueError(f"control.group: no such group {group!r}") from None
    try:
        return gid, grp.getgrgid(gid).gr_name
    except KeyError:
        return gid, str(gid)


class _Connection:
    __slots__ = ("busy",)

    def __init__(self) -> None:
        self.busy = False


class _Serialized:
    """The daemon's handlers, with the state-changing ones run one at a time."""

    def __init__(self, handlers: ControlHandlers) -> None:
        self._handlers = handlers
        self._lock = asyncio.Lock()

    def status(self) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """The daemon's status tree as it is: its `monitor` and `control` sections (this
        server's counts) are built with the rest, in resolver.statusreport."""
        return self._handlers.status()

    def routes(self) -> list[dict[str, Any]] | RawJSON | Awaitable[RawJSON]:
        return self._handlers.routes()

    async def flush(self) -> dict[str, Any]:
        async with self._lock:
            return await self._handlers.flush()

    async def reload(self) -> dict[str, Any]:
        async with self._lock:
            return await self._handlers.reload()

    async def policy_update(self) -> dict[str, Any]:
        async with self._lock:
            return await self._handlers.policy_update()


class ControlServer:
    """Serves `handlers` on the Unix socket `path`; `group` may run flush/reload/policy_update.

    `start()` raises OSError when the socket cannot be set up (the message names the path) and
    ValueError for an unknown group.
    """

    def __init__(
        self,
        path: str,
        handlers: ControlHandlers,
        group: str | None,
        *,
        idle_timeout: float = 30.0,
        max_connections: int = 32,
        stop_grace: float = 5.0,
        peer_groups: PeerGroups | None = None,
        stream_drain: Drain | None = None,
    ) -> None:
        self.path = os.path.abspath(path)
        self._peer_groups = peer_groups  # None: SO_PEERGROUPS (tests take /proc's way)
        # How a monitor stream waits for its socket (StreamWriter.drain; a test holds it).
        self._stream_drain: Drain = stream_drain or asyncio.StreamWriter.drain
        self.handlers = handlers
        self.group = group
        self.idle_timeout = idle_timeout
        self.shares = UidShares(
            max_connections, os.geteuid(), "control connection", "control max_connections"
        )
        self.refused = 0  # connections answered Busy for want of a share
        self._warned: set[int] = set()
        self._refusing = 0  # refusals waiting for the request
        self.stop_grace = stop_grace
        self.gid = -1
        self._dispatcher: Dispatcher | None = None
        self._server: asyncio.Server | None = None
        self._identity: tuple[int, int] | None = None  # st_dev, st_ino of our socket file
        self._conns: dict[asyncio.Task[Any], _Connection] = {}
        self.monitor = Watchers(daemon_uid=os.geteuid())

    async def start(self) -> None:
        gid, group_name = resolve_group(self.group)
        self.gid = gid
        handlers = _Serialized(self.handlers)
        self._dispatcher = Dispatcher(handlers, gid, os.geteuid(), group_name, self.monitor)
        sock = self._bind(gid)
        try:
            self._server = await asyncio.start_unix_server(
                self._client, sock=sock, limit=MAX_REQUEST_BYTES
            )
        except BaseException:
            sock.close()
            self._remove_file()
            raise
        log.info("control: listening on %s (group %s)", self.path, group_name)

    def _bind(self, gid: int) -> socket.socket:
        path = self.path
        if len(os.fsencode(path)) > _MAX_PATH:
            raise OSError(errno.ENAMETOOLONG, f"control socket path longer than {_MAX_PATH}", path)
        parent = os.path.dirname(path)
        self._make_parent(parent, gid)
        self._check_existing(path)
        tmp = os.path.join(parent, f".control.{os.getpid()}.tmp")
        if len(os.fsencode(tmp)) > _MAX_PATH:
            tmp = path + "~"  # a shorter temporary name; the final path fitted
        if os.path.lexists(tmp):
            os.unlink(tmp)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(tmp)
            if gid != os.getegid():
                os.chown(tmp, -1, gid)
            os.chmod(tmp, 0o660)
            sock.listen(64)
            os.rename(tmp, path)
            st = os.stat(path)
            self._identity = (st.st_dev, st.st_ino)
        except OSError as exc:
            sock.close()
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise OSError(exc.errno, f"control socket {path}: {exc.strerror}") from exc
        sock.setblocking(False)
        return sock

    def _make_parent(self, parent: str, gid: int) -> None:
        """Create the socket's directory if missing: 0750 and the group if one is set, else 0755."""
        if os.path.isdir(parent):
            return
        os.makedirs(os.path.dirname(parent), exist_ok=True)
        if self.group is None:
            os.mkdir(parent, 0o755)
            os.chmod(parent, 0o755)  # whatever the umask
        else:
            os.mkdir(parent, 0o750)
            os.chown(parent, -1, gid)
            os.chmod(parent, 0o750)
        log.info("control: created %s", parent)

    @staticmethod
    def _check_existing(path: str) -> None:
        """Refuse a live socket or a non-socket at `path`; a stale socket will be replaced."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("control: replacing stale socket %s", path)
            return
        except OSError as exc:
            log.warning("control: cannot probe existing socket %s (%s); replacing it", path, exc)
            return
        finally:
            probe.close()
        raise OSError(errno.EADDRINUSE, f"{path}: another process is listening on it")

    async def stop(self) -> None:
        """Stop accepting, let running commands finish (up to `stop_grace`), remove the file."""
        if self._server is not None:
            self._server.close()
        idle = [task for task, conn in self._conns.items() if not conn.busy]
        busy = [task for task, conn in self._conns.items() if conn.busy]
        for task in idle:
            task.cancel()
        if busy:
            _, late = await asyncio.wait(busy, timeout=self.stop_grace)
            for task in late:
                log.warning("control: cancelling a command still running at stop")
                task.cancel()
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=self.stop_grace)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._remove_file()

    def _remove_file(self) -> None:
        if self._identity is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._identity:
                os.unlink(self.path)
        except FileNotFoundError:
            log.debug("control: %s already gone", self.path)
        except OSError as exc:
            log.warning("control: cannot remove %s: %s", self.path, exc)
        self._identity = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and self._dispatcher is not None
        conn = _Connection()
        counted: int | None = None  # the uid charged for it
        try:
            peer = peer_credentials(writer.get_extra_info("socket"), self._peer_groups)
            refusal = self.shares.take(peer.uid)
            if refusal is not None:
                await self._refuse(reader, writer, peer, refusal)
                return
            counted = peer.uid
            self._conns[task] = conn
            await self._serve(reader, writer, conn, peer)
        except (ConnectionError, TimeoutError) as exc:
            log.debug("control: connection ended: %s", exc)
        except OSError as exc:
            log.warning("control: connection failed: %s", exc)
        finally:
            self._conns.pop(task, None)
            if counted is not None:
                self.shares.give_back(counted)
            writer.close()
            try:
                await writer.wait_closed()
            except OSError as exc:
                log.debug("control: close: %s", exc)

    async def _refuse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer, reason: str
    ) -> None:
        """Answer `Busy` with `reason` after the request (closing first hands the client EPIPE):
        a second at most, `max_connections` refusals at once at most."""
        self.refused += 1
        level = logging.DEBUG if peer.uid in self._warned else logging.WARNING  # once per uid
        self._warned.add(peer.uid)  # the host's accounts: bounded
        log.log(level, "control: refused uid %d pid %d: %s", peer.uid, peer.pid, reason)
        if self._refusing >= self.shares.total:
            return
        self._refusing += 1
        try:
            with contextlib.suppress(TimeoutError, ValueError):
                await asyncio.wait_for(reader.readline(), 1.0)
            writer.write(encode(error_response(BUSY, f"too many control connections: {reason}")))
            await _drained(writer, 1.0)
        finally:
            self._refusing -= 1

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: _Connection,
        peer: Peer,
    ) -> None:
        assert self._dispatcher is not None
        while True:
            last = False
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), self.idle_timeout)
            except asyncio.IncompleteReadError as exc:  # EOF: a last line without a newline
                line, last = exc.partial, True
            except asyncio.LimitOverrunError:
                too_long = BadRequest(f"request longer than {MAX_REQUEST_BYTES} bytes")
                writer.write(encode(error_response(too_long.name, too_long.message)))
                await _drained(writer, self.idle_timeout)
                return
            except TimeoutError:
                log.debug("control: closing a connection idle for %.0fs", self.idle_timeout)
                return
            if line.strip():
                conn.busy = True
                try:
                    answer = await self._dispatcher.handle(line, peer)
                finally:
                    conn.busy = False
                if answer.watcher is not None:
                    await self._stream(reader, writer, answer.data, answer.watcher)
                    return
                writer.write(answer.data)
                if not await _drained(writer, self.idle_timeout):
                    return
            if last:
                return

    async def _stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first: bytes,
        watcher: Watcher,
    ) -> None:
        """``monitor``: `first` (the ok response), then the watcher's events until the client
        closes. A client that does not read stalls only this task: its watcher's queue fills and
        the events beyond it are dropped and counted; the DNS path never waits for a socket."""
        wake = asyncio.Event()
        watcher.wake = wake.set
        closed = asyncio.create_task(_until_eof(reader))
        closed.add_done_callback(lambda _task: wake.set())
        try:
            writer.write(first)
            await writer.drain()
            while not closed.done():
                events, dropped = watcher.take()
                if not events and not dropped:
                    wake.clear()
                    await wake.wait()
                    continue
                writer.write(_event_lines(events, dropped))
                await self._stream_drain(writer)
        finally:
            closed.cancel()
            self.monitor.close(watcher)


async def _drained(writer: asyncio.StreamWriter, timeout: float) -> bool:
    """Wait up to `timeout` for the client to take what was written; False when it did not:
    the connection is then aborted (closing would keep the unread answer until read)."""
    try:
        async with asyncio.timeout(timeout):
            await writer.drain()
    except TimeoutError:
        log.debug("control: aborting a connection that took no answer for %.1fs", timeout)
        writer.transport.abort()
        return False
    return True


async def _until_eof(reader: asyncio.StreamReader) -> None:
    """Read and discard whatever a monitoring client sends, until it closes."""
    try:
        while await reader.read(4096):
            pass
    except ConnectionError as exc:
        log.debug("control: monitor connection ended: %s", exc)


def _event_lines(events: list[Event], dropped: int) -> bytes:
    """JSON lines for `events`, then ``{"dropped": N}`` for the events lost after them."""
    lines = [encode(event) for event in events]
    if dropped:
        lines.append(encode({"dropped": dropped}))
    return b"".join(lines)
