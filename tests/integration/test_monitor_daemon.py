"""`resolverctl monitor` against resolverd as a process (test_daemon.py's harness: the fake
upstream in a thread, a fake systemd), breakout in dry-run on `lo` so that tagged answers report
what they installed without root.

What an operator relies on: the JSON lines (upstream, cache and `local` sources, a tagged
answer's row, via and pattern through a CNAME, the installed addresses), the filters, the text
form, Ctrl-C and a closed pipe ending it quietly, exit 3 when the daemon stops; a client that
never reads loses events, counted in the stream and in status, and the DNS answers do not wait
for it; nothing is published while nobody watches; monitor is admin-only.
"""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dnslib import DNSRecord

from tests.integration.test_control import CTL_CHILD, NOBODY, as_user, needs_root, outcome
from tests.integration.test_daemon import (
    REPO,
    CountingUpstream,
    Resolverd,
    UpstreamThread,
    addresses,
)

pytestmark = pytest.mark.integration

ZONE: dict[str, list[dict[str, Any]]] = {
    "www.example.test": [{"type": "A", "value": "192.0.2.10", "ttl": 300}],
    "teams.microsoft.com": [{"type": "CNAME", "value": "teams-edge.example.net", "ttl": 300}],
    "teams-edge.example.net": [
        {"type": "A", "value": "52.112.0.10", "ttl": 60},
        {"type": "A", "value": "52.112.0.11", "ttl": 60},
    ],
    "outlook.office365.com": [{"type": "A", "value": "52.96.1.2", "ttl": 60}],
    "mail.corp.test": [{"type": "CNAME", "value": "outlook.office365.com", "ttl": 300}],
}
# The optional rows too: the tests watch teams.microsoft.com, row 10's *.microsoft.com.
DRY_RUN = "breakout: {mode: dry-run, interface: lo}\npolicy: {include_optional: true}\n"
FIELDS = {"time", "client", "name", "type", "rcode", "source", "row", "via", "addresses"}
FIELDS |= {"installed", "waited_ms"}  # DESIGN.md's contract; `pattern` is an extra
ADMIN = 4242


class Upstream(UpstreamThread):
    def __init__(self) -> None:
        super().__init__()
        self.fake = CountingUpstream(ZONE)


@pytest.fixture
def rd(tmp: Path) -> Iterator[Resolverd]:
    with Upstream() as upstream:
        daemon = Resolverd(tmp, upstream.fake)
        try:
            yield daemon
        finally:
            daemon.close()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Monitor:
    """`resolverctl monitor ARGS` as a process; its stdout lines through a thread."""

    def __init__(
        self, rd: Resolverd, *args: str, stdout: Any = subprocess.PIPE, thread: bool = True
    ) -> None:
        argv = [sys.executable, "-m", "resolver.ctl.main", "--socket", str(rd.socket), "monitor"]
        self.proc = subprocess.Popen(
            [*argv, *args],
            cwd=REPO,
            env=rd.env(),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            # Ctrl-C as at a terminal, even when this test runs in a background job (whose
            # children inherit SIGINT ignored, and Python then installs no handler for it).
            preexec_fn=_default_sigint,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        if stdout is subprocess.PIPE and thread:  # else: read_one() in this thread
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def line(self, timeout: float = 5.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout}s; rc {self.proc.poll()}") from None

    def read_one(self, timeout: float = 5.0) -> str:
        """A line read here, not by a thread (so that stdout can be closed afterwards: closing
        a file another thread is reading would wait for that read)."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"no line within {timeout}s"
        return self.proc.stdout.readline()

    def event(self) -> dict[str, Any]:
        item: dict[str, Any] = json.loads(self.line())
        return item

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: the exit code and stderr."""
        self.proc.send_signal(signal.SIGINT)
        return self.finish()

    def finish(self, timeout: float = 10) -> tuple[int, str]:
        assert self.proc.stderr is not None
        code = self.proc.wait(timeout)
        return code, self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def monitor_status(rd: Resolverd) -> dict[str, int]:
    result: dict[str, int] = rd.status()["monitor"]
    return result


def wait_watchers(rd: Resolverd, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while monitor_status(rd)["watchers"] != count:
        assert time.monotonic() < deadline, f"never {count} watchers\n{rd.log()}"
        time.sleep(0.05)


def test_json_lines_say_where_each_answer_came_from(rd: Resolverd) -> None:
    rd.write_config(DRY_RUN)
    rd.start()
    mon = Monitor(rd, "--json")
    try:
        wait_watchers(rd, 1)
        assert addresses(rd.ask("www.example.test")) == ["192.0.2.10"]
        miss = mon.event()
        assert set(miss) >= FIELDS
        assert (miss["client"], miss["name"], miss["type"]) == (
            "127.0.0.1",
            "www.example.test",
            "A",
        )
        assert (miss["rcode"], miss["source"], miss["row"], miss["via"]) == (
            "NOERROR",
            rd.upstream.text,
            None,
            None,
        )
        rd.ask("www.example.test")
        assert mon.event()["source"] == "cache"

        # A corporate name that CNAMEs into Microsoft 365: tagged through the chain link.
        reply = rd.ask("mail.corp.test")
        assert addresses(reply) == ["52.96.1.2"]
        tagged = mon.event()
        assert (tagged["name"], tagged["row"], tagged["via"]) == (
            "mail.corp.test",
            3,
            "outlook.office365.com",
        )
        assert tagged["pattern"] == "outlook.office365.com"
        assert tagged["addresses"] == ["52.96.1.2"] and tagged["installed"] == ["52.96.1.2"]
        assert isinstance(tagged["waited_ms"], float) and tagged["waited_ms"] >= 0
        rd.ask("outlook.office365.com")  # the same address: held already, nothing installed
        again = mon.event()
        assert (again["row"], again["installed"], again["source"]) == (3, [], rd.upstream.text)

        teams = rd.ask("teams.microsoft.com")
        assert addresses(teams) == ["52.112.0.10", "52.112.0.11"]
        wild = mon.event()
        assert (wild["row"], wild["via"], wild["pattern"]) == (
            10,
            "teams.microsoft.com",
            "*.microsoft.com",
        )
        assert wild["installed"] == ["52.112.0.10", "52.112.0.11"]

        canary = rd.ask("use-application-dns.net")
        assert canary.header.rcode == 3
        local = mon.event()
        assert (local["rcode"], local["source"], local["row"]) == ("NXDOMAIN", "local", None)
        code, err = mon.interrupt()
        assert (code, err) == (0, "")
        wait_watchers(rd, 0)
    finally:
        mon.kill()


def test_filters_and_the_text_form(rd: Resolverd) -> None:
    rd.write_config(DRY_RUN)
    rd.start()
    teams = Monitor(rd, "--json", "--tagged", "--name", "teams.microsoft.com")
    mine = Monitor(rd, "--json", "--client", "127.0.0.1", "--name", "example.test")
    elsewhere = Monitor(rd, "--json", "--client", "10.1.0.0/24")
    text = Monitor(rd, "--tagged")
    monitors = [teams, mine, elsewhere, text]
    try:
        wait_watchers(rd, 4)
        for name in ("www.example.test", "teams.microsoft.com", "outlook.office365.com"):
            rd.ask(name)
        rd.ask("teams.microsoft.com", "AAAA")
        assert [(e["name"], e["type"]) for e in (teams.event(), teams.event())] == [
            ("teams.microsoft.com", "A"),
            ("teams.microsoft.com", "AAAA"),
        ]
        assert mine.event()["name"] == "www.example.test"
        header = text.line()
        assert header.split() == ["TIME", "CLIENT", "NAME", "TYPE", "RCODE", "SOURCE"]
        first = text.line()
        expected = ["127.0.0.1", "teams.microsoft.com", "A", "NOERROR", rd.upstream.text]
        assert first.split()[1:6] == expected
        assert "row=10 via=teams.microsoft.com pattern=*.microsoft.com" in first
        assert "installed=52.112.0.10,52.112.0.11 waited=" in first
        assert header.index("SOURCE") == first.index(rd.upstream.text)
        assert "row=3 via=outlook.office365.com" in text.line()
        for mon in monitors:
            assert mon.interrupt() == (0, "")
        assert elsewhere.lines.empty() and mine.lines.empty()
    finally:
        for mon in monitors:
            mon.kill()


def test_bad_filters_are_refused_before_connecting(rd: Resolverd) -> None:
    res = rd.ctl("monitor", "--client", "10.1.0.0/33")
    assert res.returncode == 1
    assert (
        res.stderr == "resolverctl: monitor: client '10.1.0.0/33' is not an address or a prefix\n"
    )


def query_times(port: int, name: str, count: int) -> list[float]:
    """Seconds per query, one at a time over UDP, every query answered."""
    times = []
    data = DNSRecord.question(name).pack()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.connect(("127.0.0.1", port))
        for i in range(count):
            query = bytes([i >> 8 & 0xFF, i & 0xFF]) + data[2:]
            started = time.perf_counter()
            sock.send(query)
            reply = sock.recv(4096)
            times.append(time.perf_counter() - started)
            assert reply[:2] == query[:2]
    return times


def summary(times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    return f"p50 {statistics.median(ms):.3f} ms, p99 {ms[int(len(ms) * 0.99)]:.3f} ms"


def test_a_monitor_that_never_reads_drops_counted_and_never_slows_answers(
    rd: Resolverd,
) -> None:
    rd.start()
    rd.ask("www.example.test")
    none = query_times(rd.port, "www.example.test", 2000)
    assert monitor_status(rd) == {"watchers": 0, "events": 0, "dropped": 0}  # nobody: nothing

    reading = Monitor(rd, "--json", stdout=subprocess.DEVNULL)
    try:
        wait_watchers(rd, 1)
        watched = query_times(rd.port, "www.example.test", 2000)
        assert reading.interrupt() == (0, "")
    finally:
        reading.kill()
    wait_watchers(rd, 0)
    published = monitor_status(rd)["events"]
    assert published == 2000

    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(str(rd.socket))
        stalled.sendall(b'{"version": 1, "command": "monitor", "args": {}}\n')
        wait_watchers(rd, 1)
        count = 6000
        stuck = query_times(rd.port, "www.example.test", count)
        status = monitor_status(rd)
        assert status["watchers"] == 1 and status["dropped"] > 0
        assert status["events"] == published + count
        print(
            f"\nanswer latency, {len(none)} cached queries one at a time: "
            f"nobody watching {summary(none)}; a monitor reading {summary(watched)}; "
            f"a monitor never reading ({status['dropped']} of {count} events dropped) "
            f"{summary(stuck)}"
        )
        # The stalled watcher costs what watching costs, never a wait for its socket.
        assert statistics.median(stuck) < max(3 * statistics.median(watched), 0.002)
        assert sorted(stuck)[int(count * 0.99)] < 0.050

        # Reading now: the events that fitted, then {"dropped": N}: every event is accounted for.
        stalled.settimeout(10)
        with stalled.makefile("rb") as lines:  # the socket closes once this file is closed too
            assert json.loads(lines.readline())["result"] == {"streaming": True}
            seen = dropped = 0
            while seen + dropped < count:
                item = json.loads(lines.readline())
                if "dropped" in item:
                    dropped += item["dropped"]
                else:
                    seen += 1
        assert dropped == status["dropped"] and seen + dropped == count
    finally:
        stalled.close()
    wait_watchers(rd, 0)
    rd.ask("www.example.test")
    assert monitor_status(rd)["events"] == published + count  # nobody watches: none published


def test_a_closed_pipe_ends_it_quietly_and_a_stopped_daemon_exits_3(rd: Resolverd) -> None:
    proc = rd.start()
    piped = Monitor(rd, "--json", thread=False)
    second = Monitor(rd)
    try:
        wait_watchers(rd, 2)
        rd.ask("www.example.test")
        assert json.loads(piped.read_one())["name"] == "www.example.test"
        assert piped.proc.stdout is not None
        piped.proc.stdout.close()  # as `| head -1` does
        time.sleep(0.2)
        rd.ask("www.example.test")  # the next write finds the pipe closed
        assert piped.finish() == (0, "")

        proc.send_signal(signal.SIGTERM)
        code, err = second.finish()
        assert code == 3
        assert err == (
            f"resolverctl: resolverd closed the connection at {rd.socket} "
            "(it stopped or restarted)\n"
        )
        assert rd.wait(5) == 0
    finally:
        piped.kill()
        second.kill()


@needs_root
def test_monitor_is_for_root_and_the_control_group_only(rd: Resolverd, tmp: Path) -> None:
    tmp.chmod(0o755)  # nobody must reach the socket
    plain = f"control: {{socket: {rd.socket}}}"
    rd.write_config(text=rd.config_text().replace(plain, plain[:-1] + f', group: "{ADMIN}"}}'))
    rd.start()
    assert os.stat(rd.socket).st_gid == ADMIN
    member = as_user(str(rd.socket), NOBODY, NOBODY, [ADMIN], "monitor")
    assert member["monitor"] == {"version": 1, "ok": True, "result": {"streaming": True}}
    os.chmod(rd.socket, 0o666)  # looser than the daemon makes it, to reach the check
    answers = as_user(str(rd.socket), NOBODY, NOBODY, [], "monitor", "status")
    assert {c: outcome(a) for c, a in answers.items()} == {
        "monitor": "PermissionDenied",
        "status": "ok",
    }
    res = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            CTL_CHILD,
            str(REPO),
            json.dumps(["--socket", str(rd.socket), "monitor"]),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 1
    assert res.stderr == (
        f"resolverctl: monitor failed (PermissionDenied): monitor needs root or membership of "
        f"group {ADMIN}; run as root or as a member of group {ADMIN}\n"
    )
    assert "monitor denied to uid 65534" in rd.log()
