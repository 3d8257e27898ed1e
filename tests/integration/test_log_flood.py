"""The daemon under a flood that fails every query the same way logs a few lines, not one per
query (resolver/logsetup.py). The real daemon as a process, and the server in process (where
the compiled build's modules log without source lines), on loopback; no root.

Here the failure is the one a flood itself can cause: the daemon's open-file limit is too low
to raise (a hard limit of 40) and its upstream never answers, so the upstream sockets pile up
until every new query fails with EMFILE. Before the cap, 3,000 queries gave about 2,600
warnings.
"""

from __future__ import annotations

import errno
import io
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import DNSRecord

from resolver import logsetup
from tests.integration.conftest import DnsEnv, RecordingHook, StubMatcher, query_bytes

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
OPEN_FILES = 40  # the daemon's hard limit: enough to start, too few for the flood's sockets
QUERIES = 3000


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _limit_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


@pytest.fixture
def silent() -> Iterator[socket.socket]:
    """An upstream that takes every query and answers none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


def test_a_flood_that_fails_every_query_logs_a_few_lines(
    tmp_path: Path, silent: socket.socket
) -> None:
    port = _free_port()
    config = tmp_path / "resolverd.yaml"
    config.write_text(
        f'listen: ["127.0.0.1:{port}"]\n'
        f'upstreams: ["127.0.0.1:{silent.getsockname()[1]}"]\n'
        f"state_dir: {tmp_path}/state\n"
        f"control: {{socket: {tmp_path}/control.sock}}\n"
        "ratelimit: {qps: 0}\n"
    )
    logfile = tmp_path / "resolverd.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(logfile, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "resolver.daemon", "--config", str(config)],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            preexec_fn=_limit_open_files,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while " ready on " not in logfile.read_text(errors="replace"):
            assert proc.poll() is None, logfile.read_text(errors="replace")
            assert time.monotonic() < deadline, logfile.read_text(errors="replace")
            time.sleep(0.05)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for i in range(QUERIES):
                client.sendto(DNSRecord.question(f"n{i}.example.test").pack(), ("127.0.0.1", port))
        time.sleep(1)
    finally:
        proc.terminate()
        proc.wait(15)
    text = logfile.read_text(errors="replace")
    failed = [line for line in text.splitlines() if "cannot query upstream" in line]
    assert "Too many open files" in failed[0], text  # the flood did fail the queries
    assert 1 <= len(failed) <= logsetup.BURST, text
    assert failed[-1].endswith("are left out and counted)"), text
    assert len(text.splitlines()) < 30, text


class FailingHook(RecordingHook):
    def on_answer(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the hook")


class Refusing:
    """An upstream transport whose socket cannot be made: every query fails with EMFILE."""

    def udp(self, *args: object) -> Refusing:
        raise OSError(errno.EMFILE, "Too many open files")

    async def tcp(self, *args: object) -> None:
        raise AssertionError("no TCP here")

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


async def test_a_flood_of_one_failure_leaves_room_for_another(daemon_log: io.StringIO) -> None:
    """Each call site has its own cap, on both builds: 20 queries failing with EMFILE give
    BURST lines, and a hook failure after them is still logged."""
    matcher = StubMatcher({"www.example.test": 1})
    async with DnsEnv(hook=FailingHook(), matcher=matcher) as env:
        forwarder = env.srv.handler.misses.forwarder
        working, forwarder.default.transport = forwarder.default.transport, Refusing()
        for i in range(20):
            await env.udp(query_bytes(f"n{i}.example.test"), timeout=0.5)
        forwarder.default.transport = working
        await env.ask("www.example.test")  # tagged: the hook fails, a line of its own
    text = daemon_log.getvalue()
    failed = [line for line in text.splitlines() if "cannot query upstream" in line]
    assert len(failed) == logsetup.BURST, text
    assert "ERROR resolver.dns.handler: breakout hook failed for www.example.test" in text, text
