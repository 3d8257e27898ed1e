"""SIGHUP under load: the real daemon (`resolverd --config`) reloads again and again while a
client sends 2,000 queries at a steady rate; every query is answered, none with SERVFAIL.

The reloads alternate between two configs that differ in policy (the cache is re-tagged) and
in cache size, so each one really swaps something. A quarter of the queries are cache hits,
the rest new names that go to the (slightly slow) fake upstream, so misses are in flight
across every swap.
"""

from __future__ import annotations

import signal
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from dnslib import DNSRecord

from tests.integration.test_daemon import EXTRA_POLICY, Resolverd, UpstreamThread

pytestmark = pytest.mark.integration

QUERIES = 2_000
RATE = 800.0  # queries a second
SETTLE = 5.0  # seconds allowed for the last replies after the last query went out


class Client:
    """Sends QUERIES queries at RATE from one UDP socket (ids 0..QUERIES-1); a thread reads
    the replies."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.rcodes: dict[int, int] = {}
        self.sent_all = threading.Event()
        self.done = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.writer = threading.Thread(target=self._write, daemon=True)

    def start(self) -> Client:
        self.reader.start()
        self.writer.start()
        return self

    def _write(self) -> None:
        started = time.monotonic()
        for i in range(QUERIES):
            name = "www.example.test" if i % 4 == 0 else f"h{i}.example.test"
            query = DNSRecord.question(name)
            query.header.id = i
            self.sock.send(query.pack())
            pause = started + (i + 1) / RATE - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        self.sent_all.set()

    def _read(self) -> None:
        deadline = None
        while len(self.rcodes) < QUERIES:
            if self.sent_all.is_set() and deadline is None:
                deadline = time.monotonic() + SETTLE
            if deadline is not None and time.monotonic() > deadline:
                break
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            ident = struct.unpack_from("!H", data)[0]
            self.rcodes[ident] = data[3] & 0xF
        self.done.set()

    def close(self) -> None:
        self.sock.close()


def test_sighup_again_and_again_under_load_loses_no_query(tmp: Path) -> None:
    (tmp / "extra.yaml").write_text(EXTRA_POLICY)
    with UpstreamThread() as upstream:
        upstream.fake.delay = 0.02  # misses stay in flight for a while
        rd = Resolverd(tmp, upstream.fake)
        try:
            proc = rd.start()
            client = Client(rd.port).start()
            reloads = 0
            while not client.sent_all.is_set():
                extra = "policy: {files: [extra.yaml]}\ncache: {max_entries: 500}\n"
                rd.write_config(extra if reloads % 2 == 0 else "")
                proc.send_signal(signal.SIGHUP)
                rd.expect("RELOADING=1", timeout=10)
                rd.expect("READY=1", timeout=10)
                reloads += 1
                time.sleep(0.05)
            assert client.done.wait(SETTLE + 2.0)
            client.close()
            log = rd.log()
            status = rd.status()
            proc.send_signal(signal.SIGTERM)
            assert rd.wait(10.0) == 0
        finally:
            rd.close()
    missing = sorted(set(range(QUERIES)) - set(client.rcodes))
    by_rcode: dict[int, int] = {}
    for rcode in client.rcodes.values():
        by_rcode[rcode] = by_rcode.get(rcode, 0) + 1
    print(f"\n{reloads} reloads during {QUERIES} queries at {RATE:.0f}/s; rcodes {by_rcode}")
    assert reloads >= 10
    assert not missing, f"{len(missing)} queries unanswered, first ids {missing[:10]}"
    assert set(by_rcode) <= {0, 3}  # NOERROR (the cached name), NXDOMAIN (the new names)
    assert by_rcode.get(0, 0) >= QUERIES // 4
    assert "Traceback" not in log and "reload failed" not in log
    assert log.count("reloaded ") == reloads
    assert status["queries"]["total"] >= QUERIES
