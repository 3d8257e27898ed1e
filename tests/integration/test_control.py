"""The control socket end to end: ControlServer on a Unix socket in a temporary directory, driven
by raw JSON lines, by resolverctl in-process, and by resolverctl in a subprocess (imports and
start-up time). As root, also by child processes that drop to nobody (SO_PEERCRED paths)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from resolver.control.protocol import MAX_REQUEST_BYTES, ReloadFailed, UpdateFailed
from resolver.control.server import ControlServer
from resolver.ctl.client import Defaults
from resolver.ctl.main import main

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STATUS: dict[str, Any] = {
    "uptime_s": 3661,
    "listen": ["127.0.0.1:53"],
    "upstreams": [{"address": "192.0.2.53:53", "healthy": True, "rtt_ms": 3.5}],
    "cache": {"entries": 1, "hits": 3, "misses": 1},
    "queries": {"total": 4, "tagged": 1, "refused": 0, "servfail": 0},
    "policy": {"source": "builtin:microsoft365", "version": "v1", "rules": 16},
    "breakout": {
        "interface": "wan0",
        "link_up": True,
        "table": 365,
        "routes_v4": 1,
        "routes_v6": 0,
        "cidr_routes": 0,
        "ipset_v4": 1,
        "ipset_v6": 0,
        "errors": 0,
    },
}
ROUTES = [
    {"address": "52.96.1.2", "family": 4, "names": ["outlook.office365.com"], "row": 2, "hold_s": 7}
]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to setuid() a child")


class FakeDaemon:
    """ControlHandlers with knobs: delays, failures, and a record of what ran concurrently."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.delay = 0.0
        self.status_delay = 0.0
        self.reload_error: Exception | None = None
        self.update_error: Exception | None = None
        self.running = 0
        self.most_running = 0

    def status(self) -> dict[str, Any]:
        self.calls.append("status")
        if self.status_delay:
            time.sleep(self.status_delay)  # blocks the server's loop: the client must time out
        return STATUS

    def routes(self) -> list[dict[str, Any]]:
        self.calls.append("routes")
        return ROUTES

    async def _admin(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(name)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.running -= 1
        return result

    async def flush(self) -> dict[str, Any]:
        return await self._admin("flush", {"routes_removed": 1, "set_entries_removed": 1})

    async def reload(self) -> dict[str, Any]:
        if self.reload_error is not None:
            raise self.reload_error
        return await self._admin("reload", {"config": "/etc/resolverd/resolverd.yaml"})

    async def policy_update(self) -> dict[str, Any]:
        if self.update_error is not None:
            raise self.update_error
        return await self._admin("policy_update", {"version": "2024060100", "changed": True})


class ServerThread:
    """A ControlServer on its own event loop in a thread, so blocking clients can use it."""

    def __init__(self, path: str, daemon: FakeDaemon, group: str | None, **options: Any) -> None:
        self.path = path
        self.daemon = daemon
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = ControlServer(path, daemon, group, **options)

    def run(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        try:
            self.run(self.server.start())
        except BaseException:
            self._end()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.run(self.server.stop())
        finally:
            self._end()

    def _end(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def daemon() -> FakeDaemon:
    return FakeDaemon()


@pytest.fixture
def served(tmp: Path, daemon: FakeDaemon) -> Iterator[ServerThread]:
    with ServerThread(str(tmp / "control.sock"), daemon, None) as thread:
        yield thread


def request_line(command: str) -> bytes:
    return json.dumps({"version": 1, "command": command, "args": {}}).encode() + b"\n"


def talk(path: str, data: bytes, answers: int = 1, half_close: bool = False) -> list[Any]:
    """Send raw bytes, read `answers` response lines."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        reader = sock.makefile("rb")
        return [json.loads(reader.readline()) for _ in range(answers)]


# --- the socket file --------------------------------------------------------------------------


def test_socket_file_mode_group_and_removal(tmp: Path, daemon: FakeDaemon) -> None:
    path = tmp / "run" / "resolverd" / "control.sock"
    with ServerThread(str(path), daemon, None):
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == os.getegid()
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755  # created: no group given
        assert [p.name for p in path.parent.iterdir()] == ["control.sock"]  # no temporary left
    assert not path.exists()


@needs_root
def test_group_owns_the_socket_and_a_created_directory(tmp: Path, daemon: FakeDaemon) -> None:
    path = tmp / "resolverd" / "control.sock"
    with ServerThread(str(path), daemon, "4242") as thread:
        assert path.stat().st_gid == 4242
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        assert path.parent.stat().st_gid == 4242
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
        assert thread.server.gid == 4242


def test_unknown_group_is_an_error(tmp: Path, daemon: FakeDaemon) -> None:
    with pytest.raises(ValueError, match="no such group 'no-such-group-x'"):  # noqa: SIM117
        with ServerThread(str(tmp / "c.sock"), daemon, "no-such-group-x"):
            pass


def test_stale_socket_is_replaced(tmp: Path, daemon: FakeDaemon) -> None:
    path = tmp / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a crashed daemon's leftover
    with ServerThread(str(path), daemon, None):
        assert talk(str(path), request_line("ping")) == [
            {"version": 1, "ok": True, "result": {"pong": True}}
        ]


def test_live_socket_is_not_taken_over(served: ServerThread, daemon: FakeDaemon) -> None:
    with pytest.raises(OSError) as info:  # noqa: SIM117
        with ServerThread(served.path, daemon, None):
            pass
    assert info.value.errno == errno.EADDRINUSE
    assert talk(served.path, request_line("ping"))[0]["ok"] is True  # the first one still serves


def test_a_file_that_is_not_a_socket_is_left_alone(tmp: Path, daemon: FakeDaemon) -> None:
    path = tmp / "control.sock"
    path.write_text("precious")
    with pytest.raises(OSError, match="not a socket"):  # noqa: SIM117
        with ServerThread(str(path), daemon, None):
            pass
    assert path.read_text() == "precious"


def test_stop_removes_only_its_own_socket(tmp: Path, daemon: FakeDaemon) -> None:
    path = tmp / "control.sock"
    with ServerThread(str(path), daemon, None):
        path.unlink()
        path.write_text("someone else's")
    assert path.read_text() == "someone else's"


def test_path_too_long(daemon: FakeDaemon) -> None:
    with pytest.raises(OSError) as info:  # noqa: SIM117
        with ServerThread("/tmp/" + "x" * 120, daemon, None):
            pass
    assert info.value.errno == errno.ENAMETOOLONG


# --- the protocol on the socket ---------------------------------------------------------------


def test_several_requests_per_connection(served: ServerThread, daemon: FakeDaemon) -> None:
    answers = talk(
        served.path,
        request_line("status") + b"\n" + request_line("routes") + request_line("ping"),
        answers=3,
    )
    assert [a["result"] for a in answers] == [STATUS, ROUTES, {"pong": True}]
    assert daemon.calls == ["status", "routes"]


def test_last_line_without_newline_is_answered(served: ServerThread) -> None:
    answers = talk(served.path, request_line("ping").rstrip(b"\n"), half_close=True)
    assert answers[0]["result"] == {"pong": True}


def test_errors_keep_the_connection(served: ServerThread) -> None:
    answers = talk(served.path, b"nonsense\n" + request_line("reboot") + request_line("ping"), 3)
    assert [a.get("error", {}).get("name") for a in answers] == [
        "BadRequest",
        "UnknownCommand",
        None,
    ]


def test_over_long_request_is_refused_and_closed(served: ServerThread) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(served.path)
        with contextlib.suppress(ConnectionResetError):  # the server may close before taking all
            sock.sendall(b"x" * (MAX_REQUEST_BYTES + 10))
        reader = sock.makefile("rb")
        try:
            answer = json.loads(reader.readline())
        except ConnectionResetError:
            # The server closed with our excess bytes unread, so the kernel reset the connection
            # before its answer could be read: refused and closed all the same.
            answer = None
        if answer is not None:
            assert answer["error"]["name"] == "BadRequest"
            assert "longer than" in answer["error"]["message"]
            assert reader.read() == b""  # closed
    assert talk(served.path, request_line("ping"))[0]["ok"] is True  # and the server lives on
    assert talk(served.path, request_line("ping"))[0]["ok"] is True


def test_idle_connection_is_closed(tmp: Path, daemon: FakeDaemon) -> None:
    with ServerThread(str(tmp / "c.sock"), daemon, None, idle_timeout=0.2) as thread:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(thread.path)
            started = time.monotonic()
            assert sock.recv(100) == b""
            assert 0.1 < time.monotonic() - started < 4
        assert talk(thread.path, request_line("ping"))[0]["ok"] is True


def test_a_client_that_takes_no_answers_is_aborted_not_held(tmp: Path, daemon: FakeDaemon) -> None:
    """Requests sent, answers never read: the server stops reading at its buffer's mark; the
    connection is aborted once an answer waited idle_timeout, and its slot is free again."""
    with (
        ServerThread(
            str(tmp / "c.sock"), daemon, None, idle_timeout=0.3, max_connections=1
        ) as thread,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock,
    ):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(thread.path)
        sock.setblocking(False)
        requests = request_line("status") * 20_000
        sent = 0
        deadline = time.monotonic() + 10
        while sent < len(requests) and time.monotonic() < deadline:
            try:
                sent += sock.send(requests[sent : sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)  # the server stopped reading us
            except OSError:
                break  # ... and aborted the connection
        while time.monotonic() < deadline:  # the slot comes back
            if talk(thread.path, request_line("ping"))[0]["ok"]:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the connection that reads nothing kept its slot")
        assert sent < len(requests)  # it was stopped, not served to the end


def test_connection_limit(tmp: Path, daemon: FakeDaemon) -> None:
    with ServerThread(str(tmp / "c.sock"), daemon, None, max_connections=1) as thread:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as first:
            first.connect(thread.path)
            first.sendall(request_line("ping"))
            first.settimeout(5)
            assert json.loads(first.makefile("rb").readline())["ok"] is True  # is counted now
            answer = talk(thread.path, request_line("ping"))[0]
            assert answer["error"]["name"] == "Busy"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the first connection's end is noticed
            if talk(thread.path, request_line("ping"))[0]["ok"]:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the connection slot was never released")


def test_handler_bug_is_internal_and_the_server_survives(
    served: ServerThread, daemon: FakeDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    daemon.reload_error = ZeroDivisionError("division by zero")
    answer = talk(served.path, request_line("reload"))[0]
    assert answer["error"]["name"] == "Internal"
    assert "ZeroDivisionError" in answer["error"]["message"]
    assert any(r.exc_info for r in caplog.records if "internal error" in r.getMessage())
    assert talk(served.path, request_line("status"))[0]["result"] == STATUS


def test_admin_commands_run_one_at_a_time(served: ServerThread, daemon: FakeDaemon) -> None:
    daemon.delay = 0.1
    results: list[Any] = []
    clients = [
        threading.Thread(target=lambda c=c: results.extend(talk(served.path, request_line(c))))
        for c in ("reload", "flush", "reload", "policy_update")
    ]
    for t in clients:
        t.start()
    for t in clients:
        t.join(10)
    assert [r["ok"] for r in results] == [True] * 4
    assert daemon.most_running == 1


def test_stop_lets_a_running_command_finish(tmp: Path, daemon: FakeDaemon) -> None:
    daemon.delay = 0.3
    path = str(tmp / "c.sock")
    thread = ServerThread(path, daemon, None).__enter__()
    answers: list[Any] = []
    client = threading.Thread(target=lambda: answers.extend(talk(path, request_line("flush"))))
    client.start()
    while "flush" not in daemon.calls:
        time.sleep(0.01)
    thread.__exit__(None, None, None)  # stop() while flush runs
    client.join(5)
    assert answers and answers[0]["result"]["routes_removed"] == 1
    assert not os.path.exists(path)


# --- resolverctl against the server -----------------------------------------------------------


def ctl(
    capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str, str]:  # exit code, stdout, stderr
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ctl_status_text_and_json(served: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = ctl(capsys, "--socket", served.path, "status")
    assert (code, err) == (0, "")
    assert out.startswith("Global\n   Uptime: 1h 1min 1s\n")
    assert "  192.0.2.53:53: healthy, rtt 3.5 ms\n" in out
    code, out, _ = ctl(capsys, "--socket", served.path, "status", "--json")
    assert code == 0 and json.loads(out) == STATUS


def test_ctl_routes(served: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = ctl(capsys, "--socket", served.path, "routes", "--json")
    assert code == 0 and json.loads(out) == ROUTES
    code, out, _ = ctl(capsys, "--socket", served.path, "routes")
    assert code == 0 and "52.96.1.2  ipv4    2    7s    outlook.office365.com\n" in out


def test_ctl_flush_reload_policy_update(
    served: ServerThread, daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = ctl(capsys, "--socket", served.path, "flush")
    assert code == 0 and "Routes removed: 1" in out
    code, out, _ = ctl(capsys, "--socket", served.path, "reload", "--json")
    assert code == 0 and json.loads(out) == {"config": "/etc/resolverd/resolverd.yaml"}
    code, out, _ = ctl(capsys, "--socket", served.path, "policy", "update")
    assert code == 0 and "Version: 2024060100" in out and "Changed: yes" in out
    assert daemon.calls == ["flush", "reload", "policy_update"]


def test_ctl_reload_failure_exits_1_with_the_daemons_message(
    served: ServerThread, daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.reload_error = ReloadFailed("/etc/r.yaml: /upstreams: at least one upstream is required")
    code, out, err = ctl(capsys, "--socket", served.path, "reload")
    assert (code, out) == (1, "")
    assert err == (
        "resolverctl: reload failed: /etc/r.yaml: /upstreams: at least one upstream is required\n"
    )
    daemon.reload_error = ReloadFailed("/etc/r.yaml: /upstreams: bad\n/etc/r.yaml: /tcp: bad\n")
    code, _, err = ctl(capsys, "--socket", served.path, "reload")
    assert code == 1
    assert err == (
        "resolverctl: reload failed:\n  /etc/r.yaml: /upstreams: bad\n  /etc/r.yaml: /tcp: bad\n"
    )


def test_ctl_policy_update_failure(
    served: ServerThread, daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.update_error = UpdateFailed("endpoints.office.com: timed out")
    code, _, err = ctl(capsys, "--socket", served.path, "policy", "update")
    assert err == "resolverctl: policy update failed: endpoints.office.com: timed out\n"
    assert code == 1
    daemon.update_error = RuntimeError("feed is None")
    code, _, err = ctl(capsys, "--socket", served.path, "policy", "update")
    assert code == 1
    assert err == (
        "resolverctl: policy update failed (Internal): policy_update: RuntimeError: feed is None\n"
    )


def test_ctl_timeout(
    served: ServerThread, daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.status_delay = 0.5
    code, _, err = ctl(capsys, "--socket", served.path, "--timeout", "0.1", "status")
    assert code == 1 and f"no answer from resolverd at {served.path} within 0.1s" in err


def test_ctl_socket_from_config(
    tmp: Path, daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp / "c.sock")
    config = tmp / "resolverd.yaml"
    config.write_text(f"upstreams: ['192.0.2.53']\ncontrol: {{socket: {path}}}\n")
    with ServerThread(path, daemon, None):
        code, out, _ = ctl(capsys, "--config", str(config), "status", "--json")
        assert code == 0 and json.loads(out) == STATUS
    code, _, err = ctl(capsys, "status", "--config", str(config))
    assert code == 3
    assert err == (
        f"resolverctl: resolverd is not running (no socket at {path}, from config {config})\n"
    )


def test_ctl_not_running(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp / "none.sock"
    for command in (["status"], ["routes", "--json"], ["flush"], ["reload"], ["policy", "update"]):
        code, out, err = ctl(capsys, "--socket", str(missing), *command)
        assert (code, out) == (3, "")
        assert err == (
            f"resolverctl: resolverd is not running (no socket at {missing}, from --socket)\n"
        )
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(missing))
    stale.close()
    code, _, err = ctl(capsys, "--socket", str(missing), "status")
    assert code == 3 and "resolverd is not running (nothing listens on" in err


def test_ctl_not_running_default_socket(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    defaults = Defaults(str(tmp / "absent.yaml"), str(tmp / "default.sock"))
    code = main(["routes"], defaults=defaults)
    err = capsys.readouterr().err
    assert code == 3
    assert err == (
        "resolverctl: resolverd is not running "
        f"(no socket at {tmp / 'default.sock'}, from default)\n"
    )


def fake_raw_daemon(path: str, reply: bytes) -> threading.Thread:
    """A daemon that answers one connection with `reply`, whatever was asked."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.recv(1000)
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "garbled answer from resolverd"),
        (b'{"ok": "maybe"}\n', "garbled answer from resolverd"),
        (b"", "the daemon closed the connection"),
    ],
)
def test_ctl_bad_answers_exit_1(
    tmp: Path, capsys: pytest.CaptureFixture[str], reply: bytes, message: str
) -> None:
    path = str(tmp / "odd.sock")
    thread = fake_raw_daemon(path, reply)
    code, _, err = ctl(capsys, "--socket", path, "status")
    thread.join(5)
    assert code == 1 and message in err and path in err


# --- resolverctl in a subprocess: what it imports, how fast it starts ------------------------

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from resolver.ctl.main import main
try:
    code = main(json.loads(sys.argv[2]))
except SystemExit as exc:
    code = exc.code
seconds = time.perf_counter() - t0
banned = ("asyncio", "dnslib", "pyroute2", "uvloop")
bad = sorted(m for m in sys.modules if m.split(".")[0] in banned)
sys.stderr.write("\n@@" + json.dumps({"code": code, "seconds": seconds, "forbidden": bad}))
"""


def probe(*argv: str) -> dict[str, Any]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-I", "-c", PROBE, str(REPO), json.dumps(list(argv))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report: dict[str, Any] = json.loads(result.stderr.rpartition("@@")[2])
    report["wall"] = time.perf_counter() - started
    report["stdout"] = result.stdout
    return report


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["status"],
        ["status", "--json"],
        ["routes"],
        ["flush"],
        ["reload"],
        ["policy", "update"],
        ["policy", "export", "--format", "pac", "--proxy", "p:1"],
        ["explain", "outlook.office365.com"],
    ],
)
def test_ctl_imports_no_asyncio_dnslib_or_pyroute2(served: ServerThread, argv: list[str]) -> None:
    report = probe("--socket", served.path, *argv)
    assert report["code"] == 0, report
    assert report["forbidden"] == []


def test_ctl_starts_fast(served: ServerThread) -> None:
    probe("--socket", served.path, "status")  # warm-up: bytecode caches, page cache
    runs = [probe("--socket", served.path, "status") for _ in range(5)]
    assert all(r["code"] == 0 and r["stdout"].startswith("Global\n") for r in runs)
    inside = statistics.median(r["seconds"] for r in runs)
    wall = statistics.median(r["wall"] for r in runs)
    print(f"resolverctl status: import+main {inside * 1000:.1f} ms, process {wall * 1000:.1f} ms")
    assert inside < 0.100, f"import + main took {inside * 1000:.1f} ms (median of 5)"


# --- SO_PEERCRED with real non-root peers (root only: children setuid() to nobody) ------------

CHILD = r"""
import json, os, socket, sys
uid, gid, groups, path, commands = json.loads(sys.argv[1])
os.setgroups(groups)
os.setgid(gid)
os.setuid(uid)
out = {}
for command in commands:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(json.dumps({"version": 1, "command": command}).encode() + b"\n")
            out[command] = json.loads(s.makefile("rb").readline())
    except OSError as exc:
        out[command] = {"oserror": exc.errno}
print(json.dumps(out))
"""

NOBODY = 65534
ADMIN = 4242


def as_user(path: str, uid: int, gid: int, groups: list[int], *commands: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-I", "-c", CHILD, json.dumps([uid, gid, groups, path, commands])],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answers: dict[str, Any] = json.loads(result.stdout)
    return answers


def outcome(answer: dict[str, Any]) -> str:
    if "oserror" in answer:
        return errno.errorcode[answer["oserror"]]
    return "ok" if answer["ok"] else answer["error"]["name"]


@pytest.fixture
def admin_served(tmp: Path, daemon: FakeDaemon) -> Iterator[ServerThread]:
    tmp.chmod(0o755)  # nobody must reach the socket
    with ServerThread(str(tmp / "control.sock"), daemon, str(ADMIN)) as thread:
        yield thread


@needs_root
def test_nobody_reads_but_may_not_flush(admin_served: ServerThread, daemon: FakeDaemon) -> None:
    os.chmod(admin_served.path, 0o666)  # looser than the server makes it, to reach the check
    answers = as_user(admin_served.path, NOBODY, NOBODY, [], "status", "routes", "flush", "reload")
    assert {c: outcome(a) for c, a in answers.items()} == {
        "status": "ok",
        "routes": "ok",
        "flush": "PermissionDenied",
        "reload": "PermissionDenied",
    }
    assert daemon.calls == ["status", "routes"]


@needs_root
def test_socket_mode_keeps_others_out(admin_served: ServerThread) -> None:
    answers = as_user(admin_served.path, NOBODY, NOBODY, [], "status")
    assert outcome(answers["status"]) == "EACCES"


@needs_root
def test_group_member_by_primary_gid_may_flush(admin_served: ServerThread) -> None:
    answers = as_user(admin_served.path, NOBODY, ADMIN, [], "flush", "status")
    assert outcome(answers["flush"]) == "ok" and outcome(answers["status"]) == "ok"


@needs_root
def test_group_member_by_supplementary_gid_may_reload(admin_served: ServerThread) -> None:
    answers = as_user(admin_served.path, NOBODY, NOBODY, [27, ADMIN], "reload")
    assert outcome(answers["reload"]) == "ok"


@needs_root
def test_supplementary_groups_from_proc_when_so_peergroups_is_missing(
    tmp: Path, daemon: FakeDaemon
) -> None:
    tmp.chmod(0o755)  # nobody must reach the socket
    path = str(tmp / "control.sock")
    with ServerThread(path, daemon, str(ADMIN), peer_groups=lambda sock: None):
        answers = as_user(path, NOBODY, NOBODY, [ADMIN], "flush")
        assert outcome(answers["flush"]) == "ok"
        answers = as_user(path, NOBODY, NOBODY, [27], "status")
        assert outcome(answers["status"]) == "EACCES"  # the mode, before any credential check


CTL_CHILD = r"""
import json, locale, os, shutil, sys  # argparse needs these; nobody cannot read the stdlib
sys.path.insert(0, sys.argv[1])
from resolver.ctl.main import main
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
sys.exit(main(json.loads(sys.argv[2])))
"""


@needs_root
def test_ctl_as_nobody_permission_errors(admin_served: ServerThread) -> None:
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-I", "-c", CTL_CHILD, str(REPO), json.dumps(list(argv))],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    denied = run("--socket", admin_served.path, "status")
    assert denied.returncode == 1
    assert denied.stderr == (
        f"resolverctl: cannot connect to {admin_served.path}: permission denied; "
        f"run as root or as a member of group {ADMIN}\n"
    )
    os.chmod(admin_served.path, 0o666)
    assert run("--socket", admin_served.path, "status").returncode == 0
    flush = run("--socket", admin_served.path, "flush")
    assert flush.returncode == 1
    assert flush.stderr == (
        f"resolverctl: flush failed (PermissionDenied): flush needs root or membership of group "
        f"{ADMIN}; run as root or as a member of group {ADMIN}\n"
    )


# --- the connection limit against a user who holds connections (root only: setuid children) ---

HOLDER = r"""
import json, os, socket, sys
uid, path, count = json.loads(sys.argv[1])
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
held, answers = [], []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
        s.sendall(b'{"version": 1, "command": "ping"}\n')
        answer = json.loads(s.makefile("rb").readline())
    except OSError as exc:
        answer = {"oserror": exc.errno}
    answers.append(answer)
    if answer.get("ok"):
        held.append(s)
    else:
        s.close()
print(json.dumps(answers), flush=True)
sys.stdin.read()  # hold every connection that was let in until the test closes our stdin
"""


class Holder:
    """A child process as `uid` that opens `count` connections, one ping each, and keeps open
    those that were answered, until `release()`."""

    def __init__(self, path: str, uid: int, count: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", HOLDER, json.dumps([uid, path, count])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.answers: list[dict[str, Any]] = json.loads(self.proc.stdout.readline())
        self.outcomes = [outcome(a) for a in self.answers]

    def busy_messages(self) -> set[str]:
        return {a["error"]["message"] for a in self.answers if outcome(a) == "Busy"}

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def holding(path: str, *uids: int, count: int = 40) -> Iterator[list[Holder]]:
    holders: list[Holder] = []
    try:
        for uid in uids:
            holders.append(Holder(path, uid, count))
        yield holders
    finally:
        for holder in holders:
            holder.release()


@needs_root
def test_one_user_holding_connections_cannot_keep_reload_out(
    admin_served: ServerThread,
    daemon: FakeDaemon,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A member of the socket's group (here: anyone, mode 0666) opens all it can and holds them.
    caplog.set_level(logging.DEBUG, logger="resolver.control.server")
    os.chmod(admin_served.path, 0o666)
    with holding(admin_served.path, NOBODY) as [attacker]:
        share = 32 // 4
        assert attacker.outcomes == ["ok"] * share + ["Busy"] * (40 - share)
        assert attacker.busy_messages() == {
            f"too many control connections: uid {NOBODY} holds {share} control connections, "
            "the most one user may"
        }
        # What ExecReload runs, and root's status, still get through.
        code, out, err = ctl(capsys, "--socket", admin_served.path, "reload")
        assert (code, err) == (0, "") and "Reloaded" in out
        code, out, _ = ctl(capsys, "--socket", admin_served.path, "status", "--json")
        assert code == 0 and json.loads(out) == STATUS
        assert daemon.calls == ["reload", "status"]
        # What the daemon's status shows as `control` (test_status_fields.py: the real daemon).
        assert admin_served.server.refused == 40 - share
    # One warning for the uid, whatever the number of refusals.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [m for m in warnings if f"uid {NOBODY}" in m] == [
        f"control: refused uid {NOBODY} pid {attacker.proc.pid}: uid {NOBODY} holds {share} "
        "control connections, the most one user may"
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@needs_root
def test_many_users_cannot_take_the_slots_kept_for_root(
    admin_served: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    os.chmod(admin_served.path, 0o666)
    uids = (NOBODY, NOBODY - 1, NOBODY - 2, NOBODY - 3, NOBODY - 4)
    with holding(admin_served.path, *uids, count=9) as holders:
        let_in = [h.outcomes.count("ok") for h in holders]
        assert let_in == [8, 8, 8, 4, 0]  # 28: all but the 4 of 32 kept for root
        assert holders[-1].busy_messages() == {
            "too many control connections: the 28 control connections open to any user are "
            "in use; the other 4 are kept for root and the daemon's user"
        }
        for command in ("reload", "status", "routes"):
            code, _, err = ctl(capsys, "--socket", admin_served.path, command)
            assert (code, err) == (0, ""), command
        # Root may take the reserved slots, and then the connections are all in use.
        with contextlib.ExitStack() as stack:
            for _ in range(4):
                sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
                sock.settimeout(5)
                sock.connect(admin_served.path)
                sock.sendall(request_line("ping"))
                assert json.loads(sock.makefile("rb").readline())["ok"] is True
            answer = talk(admin_served.path, request_line("reload"))[0]
            assert answer["error"] == {
                "name": "Busy",
                "message": "too many control connections: all 32 control connections are in use",
            }
    # The holders are gone: their slots come back.
    deadline = time.monotonic() + 5
    while as_user(admin_served.path, NOBODY, NOBODY, [], "status")["status"].get("ok") is not True:
        assert time.monotonic() < deadline, "the holders' connections were never given back"
        time.sleep(0.05)


def test_a_5000_digit_number_is_a_bad_request(
    served: ServerThread, daemon: FakeDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    huge = b'{"version": ' + b"7" * 5000 + b', "command": "status"}\n'
    answers = talk(served.path, huge + request_line("status"), answers=2)
    assert answers[0]["error"]["name"] == "BadRequest"
    assert answers[0]["error"]["message"] == (
        "not a JSON line: Exceeds the limit (4300 digits) for integer string conversion: "
        "value has 5000 digits"
    )
    assert answers[1]["result"] == STATUS  # the connection goes on
    assert daemon.calls == ["status"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_refusals_waiting_for_their_request_are_bounded(tmp: Path, daemon: FakeDaemon) -> None:
    # Each refusal waits (a second at most) for the request so that it can answer Busy; a flood
    # of connections that send nothing must not hold a file descriptor each for that second.
    path = str(tmp / "c.sock")
    with (
        ServerThread(path, daemon, None, max_connections=1) as thread,
        contextlib.ExitStack() as stack,
    ):
        socks = []
        for _ in range(3):
            sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            sock.settimeout(5)
            sock.connect(path)
            socks.append(sock)
            if len(socks) == 1:  # the first takes the one connection
                sock.sendall(request_line("ping"))
                assert json.loads(sock.makefile("rb").readline())["ok"] is True
            deadline = time.monotonic() + 5
            while thread.server.refused < len(socks) - 1:  # the server has seen this one
                assert time.monotonic() < deadline
                time.sleep(0.01)
        _, waiting, flooding = socks
        started = time.monotonic()
        assert flooding.recv(100) == b""  # closed at once: one refusal already waits
        assert time.monotonic() - started < 0.5
        waiting.sendall(request_line("ping"))
        assert json.loads(waiting.makefile("rb").readline())["error"]["name"] == "Busy"
