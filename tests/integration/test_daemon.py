"""resolverd's lifecycle as an operator sees it: the daemon as a process, a fake systemd on
$NOTIFY_SOCKET, the fake upstream in a thread of the test process, resolverctl as a process.

Start (READY=1 only once DNS answers, watchdog pings), reload by SIGHUP and by resolverctl (good
and bad files: RELOADING=1 + MONOTONIC_USEC then READY=1, the old config kept on failure), stop
by SIGTERM with queries in flight (STOPPING=1, every query answered, exit 0, socket removed),
signals during start-up, and start failures (exit 1, one line per error, no traceback).
Breakout is off, so no root is needed. `resolverctl` exiting 3 without a daemon is covered by
test_control.py.
"""

from __future__ import annotations

import asyncio
import http.server
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from tests.fakeendpoints import FakeService
from tests.fakeupstream import FakeUpstream

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ZONE: dict[str, list[dict[str, Any]]] = {
    "www.example.test": [{"type": "A", "value": "192.0.2.10", "ttl": 300}],
    **{
        f"n{i}.example.test": [{"type": "A", "value": f"203.0.113.{i + 1}", "ttl": 60}]
        for i in range(8)
    },
}
EXTRA_POLICY = """\
version: "t1"
rules:
  - {row: 100, purpose: lifecycle test, required: true, domains: [www.example.test]}
"""
BUILTIN_RULES = 7  # the required rows: policy.include_optional is false by default
START_TIMEOUT = 15.0  # generous: a loaded CI machine; a healthy start takes about 0.3 s
STOP_BOUND = 5.0  # SIGTERM to exit, with queries in flight (the drain is bounded at 3 s)
_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "RESOLVERD_LOOP")


# --- helpers ---------------------------------------------------------------------------------


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (the config needs a number, not 0)."""
    for _ in range(50):
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        ):
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("no free port")


def signals_of(pid: int, field: str) -> int:
    """A signal mask from /proc/PID/status (SigBlk, ShdPnd, ...), as an integer."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1], 16)
    raise LookupError(field)


def has(mask: int, sig: signal.Signals) -> bool:
    return bool(mask >> (sig - 1) & 1)


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("State:"):
                return line.split()[1]
    raise LookupError("State")


class CountingUpstream(FakeUpstream):
    """The fake upstream, counting UDP queries as they arrive (its `received` list is filled
    only after `delay`), so a test knows when queries are in flight in the daemon."""

    def __init__(self, records: Any) -> None:
        super().__init__(records)
        self.arrived = 0

    async def _udp_reply(self, data: bytes, addr: Any) -> None:
        self.arrived += 1
        await super()._udp_reply(data, addr)


class UpstreamThread:
    """The fake upstream on its own event loop in a thread; `fake.delay` may be set at will."""

    def __init__(self) -> None:
        self.fake = CountingUpstream(ZONE)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> UpstreamThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


class FakeSystemd:
    """$NOTIFY_SOCKET: a bound AF_UNIX datagram socket, read by a thread (a full queue would
    block the daemon's sendto). Each message is kept as its list of lines."""

    MARK = "X_TEST_MARK="

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.05)
        self.messages: list[list[str]] = []
        self.cursor = 0  # expect() looks at messages from here on
        self.marks = 0
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            text = data.decode("utf-8", "replace")
            with self.cond:
                if text.startswith(self.MARK):
                    self.marks = int(text[len(self.MARK) :])
                else:
                    self.messages.append(text.split("\n"))
                self.cond.notify_all()

    def sync(self) -> None:
        """Return once every datagram queued so far has been read (a marker of our own, sent
        after them, has come through: datagrams on one socket stay in order)."""
        with self.cond:
            want = self.marks + 1
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(f"{self.MARK}{want}".encode(), self.path)
        with self.cond:
            if not self.cond.wait_for(lambda: self.marks >= want, 5):
                raise AssertionError("the fake NOTIFY_SOCKET reader is stuck")

    def firsts(self) -> list[str]:
        """The first line of every message so far."""
        with self.cond:
            return [m[0] for m in self.messages]

    def pending(self) -> list[str]:
        """The first line of every message not looked at by expect() yet."""
        with self.cond:
            return [m[0] for m in self.messages[self.cursor :]]

    def skip(self) -> None:
        """Let expect() look only at messages from now on."""
        self.sync()
        with self.cond:
            self.cursor = len(self.messages)

    def expect(
        self,
        first: str,
        timeout: float = START_TIMEOUT,
        proc: subprocess.Popen[bytes] | None = None,
    ) -> list[str]:
        """The next message (after the last one expected) whose first line is `first`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(self.cursor, len(self.messages)):
                    if self.messages[i][0] == first:
                        self.cursor = i + 1
                        return self.messages[i]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {first} within {timeout}s; got {self.messages}")
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"exited {proc.returncode} before {first}")
                self.cond.wait(min(remaining, 0.05))

    def close(self) -> None:
        self.closed = True
        self.thread.join(2)
        self.sock.close()


def ask(port: int, name: str, qtype: str = "A", timeout: float = 3.0) -> DNSRecord:
    """One UDP query to resolverd; the parsed reply (AssertionError when none comes)."""
    query = DNSRecord.question(name, qtype)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query.pack(), ("127.0.0.1", port))
        try:
            data = sock.recv(65535)
        except TimeoutError:
            raise AssertionError(f"no answer for {name} {qtype} within {timeout}s") from None
    reply = DNSRecord.parse(data)
    assert reply.header.id == query.header.id
    return reply


def addresses(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]


class Resolverd:
    """resolverd as a process: its config, control socket, log file and fake systemd."""

    def __init__(self, tmp: Path, upstream: FakeUpstream) -> None:
        self.tmp = tmp
        self.upstream = upstream
        self.port = free_port()
        self.config = tmp / "resolverd.yaml"
        self.socket = tmp / "control.sock"
        self.logfile = tmp / "resolverd.log"
        self.systemd = FakeSystemd(str(tmp / "notify"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config()

    def config_text(self, extra: str = "") -> str:
        return (
            f'listen: ["127.0.0.1:{self.port}"]\n'
            f'upstreams: ["{self.upstream.text}"]\n'
            f"state_dir: {self.tmp}/state\n"
            f"control: {{socket: {self.socket}}}\n"
            f"ratelimit: {{qps: 0}}\n"
            f"{extra}"
        )

    def write_config(self, extra: str = "", text: str | None = None) -> None:
        self.config.write_text(self.config_text(extra) if text is None else text)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _INHERITED}
        env["NOTIFY_SOCKET"] = self.systemd.path
        env["PYTHONPATH"] = str(REPO)
        env.update(extra)
        return env

    def spawn(self, *, own_watchdog_pid: bool = False, **env: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "resolver.daemon", "--config", str(self.config)]
        if own_watchdog_pid:  # WATCHDOG_PID=$$, then exec: the daemon's own pid, as systemd sets
            argv = ["/bin/sh", "-c", 'WATCHDOG_PID=$$ exec "$0" "$@"', *argv]
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=self.env(**env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        return self.proc

    def start(self) -> subprocess.Popen[bytes]:
        """Spawn and wait for READY=1."""
        proc = self.spawn()
        self.expect("READY=1")
        return proc

    def expect(self, first: str, timeout: float = START_TIMEOUT) -> list[str]:
        try:
            return self.systemd.expect(first, timeout, self.proc)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{self.log()}") from None

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s\n{self.log()}") from None

    def ask(self, name: str, qtype: str = "A") -> DNSRecord:
        return ask(self.port, name, qtype)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "resolver.ctl.main", "--socket", str(self.socket), *args],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def status(self) -> dict[str, Any]:
        res = self.ctl("status", "--json")
        assert res.returncode == 0, res.stderr
        result: dict[str, Any] = json.loads(res.stdout)
        return result

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        finally:
            self.systemd.close()


@pytest.fixture
def upstream() -> Iterator[UpstreamThread]:
    with UpstreamThread() as thread:
        yield thread


@pytest.fixture
def rd(tmp: Path, upstream: UpstreamThread) -> Iterator[Resolverd]:
    daemon = Resolverd(tmp, upstream.fake)
    try:
        yield daemon
    finally:
        daemon.close()


# --- start: READY=1, watchdog ----------------------------------------------------------------


@pytest.mark.parametrize("watchdog_pid", ["unset", "own"])
def test_ready_once_it_answers_then_watchdog_pings(rd: Resolverd, watchdog_pid: str) -> None:
    proc = rd.spawn(own_watchdog_pid=watchdog_pid == "own", WATCHDOG_USEC="200000")
    ready = rd.expect("READY=1")
    # READY=1 means DNS works now: the very next query is answered from the upstream.
    reply = rd.ask("www.example.test")
    assert reply.header.rcode == RCODE.NOERROR
    assert addresses(reply) == ["192.0.2.10"]
    assert len(ready) == 2 and ready[1].startswith("STATUS=")
    assert "queries" in ready[1]
    assert rd.socket.exists()  # the control socket too
    # WatchdogSec=0.2 s: a ping every 0.1 s, so four come well within 3 s.
    first = time.monotonic()
    for _ in range(4):
        assert rd.expect("WATCHDOG=1", timeout=5) == ["WATCHDOG=1"]
    assert time.monotonic() - first < 3
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert rd.wait(STOP_BOUND) == 0


def test_no_watchdog_pings_for_another_process(rd: Resolverd) -> None:
    """WATCHDOG_PID inherited from a parent: the watchdog is not ours, so no WATCHDOG=1."""
    proc = rd.spawn(WATCHDOG_USEC="200000", WATCHDOG_PID=str(os.getpid()))
    rd.expect("READY=1")
    assert rd.ask("www.example.test").header.rcode == RCODE.NOERROR
    time.sleep(0.4)  # two watchdog periods: any ping would have come by now
    rd.systemd.sync()
    assert "WATCHDOG=1" not in rd.systemd.firsts()
    proc.send_signal(signal.SIGTERM)
    assert rd.wait(STOP_BOUND) == 0


# --- reload ----------------------------------------------------------------------------------


def test_sighup_reload_applies_a_new_policy(rd: Resolverd, tmp: Path) -> None:
    proc = rd.start()
    before = rd.status()
    assert before["policy"]["rules"] == BUILTIN_RULES
    assert before["policy"]["source"] == "builtin:microsoft365"
    assert addresses(rd.ask("www.example.test")) == ["192.0.2.10"]
    assert rd.status()["queries"]["tagged"] == 0  # not a Microsoft 365 name yet

    (tmp / "extra.yaml").write_text(EXTRA_POLICY)
    rd.write_config("policy: {files: [extra.yaml]}\n")
    sent = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    proc.send_signal(signal.SIGHUP)
    reloading = rd.expect("RELOADING=1", timeout=10)
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert len(reloading) == 2
    key, _, usec = reloading[1].partition("=")
    assert key == "MONOTONIC_USEC" and usec.isdigit()
    assert sent <= int(usec) <= now  # CLOCK_MONOTONIC in microseconds, taken at the reload
    ready = rd.expect("READY=1", timeout=10)
    assert ready[1].startswith("STATUS=")

    after = rd.status()
    assert after["policy"]["rules"] == BUILTIN_RULES + 1
    assert after["policy"]["source"] == f"builtin:microsoft365+{tmp / 'extra.yaml'}"
    assert after["policy"]["version"].endswith("+t1")
    assert after["config"] == str(rd.config)
    reply = rd.ask("www.example.test")  # a cache hit, re-tagged by the new policy
    assert reply.header.rcode == RCODE.NOERROR and addresses(reply) == ["192.0.2.10"]
    assert rd.status()["queries"]["tagged"] == 1
    assert "reloaded " + str(rd.config) in rd.log()

    # resolverctl reload: the same, and it returns once the reload is done.
    res = rd.ctl("reload", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["policy"]["rules"] == BUILTIN_RULES + 1
    rd.expect("RELOADING=1", timeout=5)
    rd.expect("READY=1", timeout=5)
    proc.send_signal(signal.SIGTERM)
    assert rd.wait(STOP_BOUND) == 0


BROKEN = {
    # an unclosed flow mapping: a YAML syntax error, reported with its line
    "yaml": ("cache: {max_entries: 10\n", ["resolverd.yaml:", "invalid YAML"]),
    # valid YAML, invalid values: every error with its path
    "values": (
        "cache: {max_entries: 0}\nforward: {timeout: 99}\n",
        [
            "/cache/max_entries: 0 is out of range 1-10000000",
            "/forward/timeout: 99 is out of range 0.05-30",
        ],
    ),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_bad_reload_keeps_the_running_config(rd: Resolverd, kind: str) -> None:
    proc = rd.start()
    assert rd.ask("www.example.test").header.rcode == RCODE.NOERROR
    before = rd.status()["policy"]
    extra, messages = BROKEN[kind]
    # A broken file that would also change the policy: none of it may take effect.
    rd.write_config("policy: {builtin: none}\n" + extra)

    res = rd.ctl("reload")
    assert res.returncode == 1
    assert res.stdout == ""
    assert res.stderr.startswith("resolverctl: reload failed:")
    for message in messages:
        assert message in res.stderr
    assert str(rd.config) in res.stderr
    assert "Traceback" not in res.stderr
    rd.expect("RELOADING=1", timeout=5)
    rd.expect("READY=1", timeout=5)  # READY=1 follows RELOADING=1 even when the reload fails
    assert proc.poll() is None
    assert rd.status()["policy"] == before  # the old policy still runs
    assert rd.ask("n1.example.test").header.rcode == RCODE.NOERROR
    assert "reload failed, keeping the running config" in rd.log()

    # The same file by SIGHUP: still running, the reason logged again, READY=1 after all.
    logged = rd.log().count(messages[-1])
    proc.send_signal(signal.SIGHUP)
    rd.expect("RELOADING=1", timeout=5)
    rd.expect("READY=1", timeout=5)
    assert proc.poll() is None
    assert rd.log().count(messages[-1]) > logged
    assert rd.log().count("reload failed, keeping the running config") >= 2
    assert rd.status()["policy"] == before
    assert addresses(rd.ask("n2.example.test")) == ["203.0.113.3"]

    # Fixed: a reload works again (a failure leaves nothing stuck).
    rd.write_config("policy: {builtin: none}\n")
    res = rd.ctl("reload", "--json")
    assert res.returncode == 0, res.stderr
    assert rd.status()["policy"]["rules"] == 0
    assert "Traceback" not in rd.log()
    proc.send_signal(signal.SIGTERM)
    assert rd.wait(STOP_BOUND) == 0


# --- stop ------------------------------------------------------------------------------------


def test_sigterm_answers_the_queries_in_flight(rd: Resolverd, upstream: UpstreamThread) -> None:
    proc = rd.start()
    upstream.fake.delay = 0.5
    names = [f"n{i}.example.test" for i in range(8)]
    clients = []
    try:
        for name in names:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            clients.append(sock)
            query = DNSRecord.question(name, "A")
            sock.sendto(query.pack(), ("127.0.0.1", rd.port))
        deadline = time.monotonic() + 5
        while upstream.fake.arrived < len(names):  # all forwarded: in flight in the daemon
            assert time.monotonic() < deadline, f"only {upstream.fake.arrived} forwarded"
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        rd.expect("STOPPING=1", timeout=5)

        for i, (name, sock) in enumerate(zip(names, clients, strict=True)):
            sock.settimeout(max(0.1, stopped_at + STOP_BOUND - time.monotonic()))
            try:
                reply = DNSRecord.parse(sock.recv(65535))
            except TimeoutError:
                raise AssertionError(f"{name}: no answer after SIGTERM\n{rd.log()}") from None
            assert str(reply.q.qname) == name + "."
            assert reply.header.rcode == RCODE.NOERROR, f"{name}: {RCODE.get(reply.header.rcode)}"
            assert addresses(reply) == [f"203.0.113.{i + 1}"]
    finally:
        for sock in clients:
            sock.close()
    assert rd.wait(max(0.1, stopped_at + STOP_BOUND - time.monotonic())) == 0
    assert time.monotonic() - stopped_at < STOP_BOUND
    assert not rd.socket.exists()  # the control socket file is removed
    log = rd.log()
    assert "stopped" in log and "unanswered" not in log and "Traceback" not in log


# --- signals during start-up -----------------------------------------------------------------


def _catch_before_ready(rd: Resolverd, sig: signal.Signals, loop: str) -> subprocess.Popen[bytes]:
    """Spawn resolverd and send `sig` after it blocked its signals but before READY=1.

    Deterministic: once /proc shows `sig` blocked (SigBlk), the process is stopped (SIGSTOP),
    the fake systemd is checked for READY=1, and only then is the signal sent; it must stay
    pending (ShdPnd), not delivered, until the handlers are in place. If start-up outran the
    test (READY=1 already sent) the attempt is repeated with a new process. (A signal sent
    before main() has run, while the interpreter imports, still has its default action.)
    """
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop is not installed")
    missed = []
    for _attempt in range(5):
        proc = rd.spawn(RESOLVERD_LOOP=loop)
        deadline = time.monotonic() + START_TIMEOUT
        blocked = False
        while not blocked and proc.poll() is None and "READY=1" not in rd.systemd.pending():
            assert time.monotonic() < deadline, f"never saw {sig.name} blocked\n{rd.log()}"
            try:
                blocked = has(signals_of(proc.pid, "SigBlk"), sig)
            except (OSError, LookupError):  # exited meanwhile: poll() says so next
                blocked = False
        assert proc.poll() is None, f"exited {proc.returncode} during start-up\n{rd.log()}"
        if blocked:
            os.kill(proc.pid, signal.SIGSTOP)
            while process_state(proc.pid) != "T":
                assert time.monotonic() < deadline, "SIGSTOP did not stop it"
                time.sleep(0.001)
            rd.systemd.sync()  # whatever it sent before it stopped has been read now
        if blocked and "READY=1" not in rd.systemd.pending():
            os.kill(proc.pid, sig)
            assert has(signals_of(proc.pid, "ShdPnd"), sig)  # pending: blocked, not delivered
            os.kill(proc.pid, signal.SIGCONT)
            return proc
        missed.append("READY=1 already sent" if blocked else f"READY=1 but {sig.name} not blocked")
        proc.kill()  # too late for this test: try again with a new process
        proc.wait(5)
        rd.systemd.skip()
    pytest.fail(f"could not signal it between blocking and READY=1: {missed}\n{rd.log()}")


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_sighup_during_startup_is_a_reload_after_ready(rd: Resolverd, loop: str) -> None:
    proc = _catch_before_ready(rd, signal.SIGHUP, loop)
    rd.expect("READY=1")
    rd.expect("RELOADING=1", timeout=5)  # the pending SIGHUP, handled once the handlers are in
    rd.expect("READY=1", timeout=5)
    assert proc.poll() is None
    assert addresses(rd.ask("www.example.test")) == ["192.0.2.10"]
    assert rd.status()["policy"]["rules"] == BUILTIN_RULES
    assert f"({loop} loop)" in rd.log()
    proc.send_signal(signal.SIGTERM)
    rd.expect("STOPPING=1", timeout=5)
    assert rd.wait(STOP_BOUND) == 0


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_sigterm_during_startup_is_a_clean_stop(rd: Resolverd, loop: str) -> None:
    proc = _catch_before_ready(rd, signal.SIGTERM, loop)
    rd.expect("READY=1")
    rd.expect("STOPPING=1", timeout=5)
    assert rd.wait(STOP_BOUND) == 0
    assert proc.returncode == 0
    assert not rd.socket.exists()
    assert "Traceback" not in rd.log()


# --- start failures --------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_start_fails_cleanly_when_the_port_is_taken(rd: Resolverd, transport: str) -> None:
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", rd.port))
        if transport == "tcp":
            taken.listen(1)
        rd.spawn()
        code = rd.wait(START_TIMEOUT)
    log = rd.log()
    assert code == 1, log
    named = [line for line in log.splitlines() if f"cannot listen on 127.0.0.1:{rd.port}" in line]
    assert len(named) == 1, log
    assert "Address already in use" in named[0]
    assert "Traceback" not in log
    assert not rd.socket.exists()
    rd.systemd.sync()
    assert "READY=1" not in rd.systemd.firsts()


def test_start_fails_cleanly_with_every_config_error(rd: Resolverd) -> None:
    rd.write_config(
        text=(
            f'listen: ["127.0.0.1:{rd.port}", "127.0.0.1:99999"]\n'
            "upstreams: []\n"
            "cache: {max_entries: 0}\n"
            "breakout: {mode: kernel}\n"
            "colour: blue\n"
        )
    )
    rd.spawn()
    code = rd.wait(START_TIMEOUT)
    log = rd.log()
    assert code == 1, log
    # Every error at once, each with the file, the line and the path of the bad key.
    prefix = f"resolverd: {rd.config}:"
    lines = log.splitlines()
    assert all(line.startswith(prefix) for line in lines), log
    assert sorted(line[len(prefix) :] for line in lines if "/colour" not in line) == [
        "1: /listen/1: '127.0.0.1:99999': port must be 1-65535",
        "2: /upstreams: at least one upstream is required",
        "3: /cache/max_entries: 0 is out of range 1-10000000",
        "4: /breakout/interface: required when mode is kernel",
    ]
    assert sum(line.startswith(prefix + "5: /colour: unknown key") for line in lines) == 1
    assert "Traceback" not in log
    rd.systemd.sync()
    assert rd.systemd.firsts() == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen: [127.0.0.1:53\n", "invalid YAML"),
        (None, "cannot read: No such file or directory"),
    ],
    ids=["yaml", "missing"],
)
def test_start_fails_cleanly_with_an_unreadable_config(
    rd: Resolverd, text: str | None, message: str
) -> None:
    if text is None:
        rd.config.unlink()
    else:
        rd.write_config(text=text)
    rd.spawn()
    code = rd.wait(START_TIMEOUT)
    log = rd.log()
    assert code == 1, log
    assert len(log.splitlines()) == 1, log
    assert log.startswith(f"resolverd: {rd.config}:") and message in log
    assert "Traceback" not in log


def test_policy_update_fetches_only_when_the_version_changed(rd: Resolverd) -> None:
    """resolverctl policy update: the service's version is checked; the endpoint sets are
    downloaded and put in force only when it changed, without re-reading the config file."""
    FakeService.requests = []
    FakeService.version = "2024103100"
    FakeService.status = 200
    FakeService.body_override = None
    FakeService.delay = 0.0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeService)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        rd.write_config(  # the fake service is plain http: allowed
            f"policy: {{endpoints: {{url: '{url}', allow_http: true, poll_interval: 3600}}}}\n"
        )
        proc = rd.start()
        deadline = time.monotonic() + 10  # the check at start
        while rd.status()["policy"]["rules"] == BUILTIN_RULES and time.monotonic() < deadline:
            time.sleep(0.1)
        status = rd.status()["policy"]
        assert status["rules"] == BUILTIN_RULES + 3  # the sample's required sets: 1, 11, 31
        assert status["source"] == "builtin:microsoft365+endpoints:Worldwide"
        rd.write_config("cache: {max_entries: 0}\n")  # a bad file on disk is not re-read

        res = rd.ctl("policy", "update", "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == {"changed": False, "version": "2024103100"}
        FakeService.version = "2024110100"
        res = rd.ctl("policy", "update", "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == {"changed": True, "version": "2024110100"}
        assert rd.status()["policy"]["version"].endswith("+2024110100")
        paths = [p.split("?")[0] for p in FakeService.requests]
        assert paths.count("/endpoints/Worldwide") == 2  # at start, then for the new version
        assert paths.count("/version/Worldwide") == 3
        proc.send_signal(signal.SIGTERM)
        assert rd.wait(STOP_BOUND) == 0
    finally:
        server.shutdown()
        server.server_close()
