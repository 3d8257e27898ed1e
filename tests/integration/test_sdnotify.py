"""sd_notify against a fake NOTIFY_SOCKET: a SOCK_DGRAM socket bound in a temporary directory."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator

import pytest

from resolver import sdnotify

pytestmark = pytest.mark.integration


class FakeSystemd:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def receive(self) -> list[str]:
        data = self.sock.recv(4096)
        return data.decode().split("\n")

    def nothing_sent(self) -> bool:
        self.sock.settimeout(0)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(5)
        return False


@pytest.fixture
def systemd(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    with tempfile.TemporaryDirectory(prefix="sdn") as tmp:  # short: sun_path is 108 bytes
        path = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        try:
            yield FakeSystemd(sock)
        finally:
            sock.close()


def test_ready_with_status(systemd: FakeSystemd) -> None:
    assert sdnotify.ready("serving on 127.0.0.1:53,\n2 upstreams") is True
    assert systemd.receive() == ["READY=1", "STATUS=serving on 127.0.0.1:53, 2 upstreams"]


def test_ready_without_status(systemd: FakeSystemd) -> None:
    assert sdnotify.ready()
    assert systemd.receive() == ["READY=1"]


def test_reloading_carries_the_monotonic_time(systemd: FakeSystemd) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = systemd.receive()
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_stopping_status_watchdog(systemd: FakeSystemd) -> None:
    assert sdnotify.stopping()
    assert systemd.receive() == ["STOPPING=1"]
    assert sdnotify.status("reloading policy")
    assert systemd.receive() == ["STATUS=reloading policy"]
    assert sdnotify.watchdog()
    assert systemd.receive() == ["WATCHDOG=1"]
    assert sdnotify.notify("EXTEND_TIMEOUT_USEC=5000000", "STATUS=slow")
    assert systemd.receive() == ["EXTEND_TIMEOUT_USEC=5000000", "STATUS=slow"]


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"resolverd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.watchdog()
        assert sock.recv(100) == b"WATCHDOG=1"


def test_no_notify_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready("x") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sdnotify.watchdog() is False


def test_unsupported_address_is_not_sent(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.ready() is False
    assert "unsupported NOTIFY_SOCKET" in caplog.text


def test_send_failure_is_logged_not_raised(
    systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    caplog.set_level(logging.WARNING)
    assert sdnotify.ready() is False
    assert "sd_notify: cannot send READY=1" in caplog.text
    assert systemd.nothing_sent()


def test_lines_are_checked(systemd: FakeSystemd) -> None:
    with pytest.raises(ValueError):
        sdnotify.notify("READY=1\nSTOPPING=1")
    with pytest.raises(ValueError):
        sdnotify.notify("READY")
    assert systemd.nothing_sent()


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [
        ("30000000", None, 30.0),
        ("30000000", "self", 30.0),
        ("500000", "self", 0.5),
        ("30000000", "other", None),
        ("30000000", "garbage", None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, interval: float | None
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        value = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(pid, pid)
        monkeypatch.setenv("WATCHDOG_PID", value)
    assert sdnotify.watchdog_interval() == interval
