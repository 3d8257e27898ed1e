"""tests.fakeupstream as the other tiers use it: a process with a zone file, and its answers."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dnslib import QTYPE, DNSRecord

from tests.fakeupstream import FakeUpstream, ZoneError, load_zone

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ZONE = {
    "records": {
        "www.example.test": [{"type": "A", "value": "192.0.2.10", "ttl": 60}],
        "alias.example.test": [{"type": "CNAME", "value": "www.example.test", "ttl": 300}],
        "mail.example.test": [{"type": "MX", "value": "10 www.example.test", "ttl": 60}],
        "v6.example.test": [{"type": "AAAA", "value": "2001:db8::1", "ttl": 60}],
        "example.test": [
            {"type": "SOA", "value": "ns.example.test. h.example.test. 1 2 3 4 5", "ttl": 60},
            {"type": "NS", "value": "ns.example.test", "ttl": 60},
            {"type": "TXT", "value": "hello", "ttl": 60},
        ],
    }
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ask(port: int, name: str, qtype: str = "A", host: str = "127.0.0.1") -> DNSRecord | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        sock.sendto(DNSRecord.question(name, qtype).pack(), (host, port))
        try:
            return DNSRecord.parse(sock.recv(4096))
        except (TimeoutError, ConnectionRefusedError):
            return None


def test_runs_as_a_process_with_a_zone_file(tmp_path: Path) -> None:
    zone = tmp_path / "zone.yaml"
    zone.write_text(yaml.safe_dump(ZONE))
    port = _free_port()
    listen = ["--listen", f"127.0.0.1:{port}", "--listen", f"[::1]:{port}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakeupstream", *listen, "--zone", str(zone)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "listening on 127.0.0.1:" in proc.stdout.readline()
        reply = None
        for _ in range(50):
            reply = _ask(port, "alias.example.test")
            if reply is not None:
                break
            time.sleep(0.05)
        assert reply is not None
        assert [QTYPE.get(r.rtype) for r in reply.rr] == ["CNAME", "A"]
        v6 = _ask(port, "v6.example.test", "AAAA", host="::1")
        assert v6 is not None and str(v6.rr[0].rdata) == "2001:db8::1"
        nx = _ask(port, "nope.example.test")
        assert nx is not None and nx.header.rcode == 3 and nx.auth[0].ttl == 30
        nodata = _ask(port, "www.example.test", "TXT")
        assert nodata is not None and nodata.header.rcode == 0 and not nodata.rr
        assert QTYPE.get(nodata.auth[0].rtype) == "SOA"
        for name, qtype in (("mail.example.test", "MX"), ("example.test", "NS")):
            got = _ask(port, name, qtype)
            assert got is not None and got.rr
    finally:
        proc.terminate()
        proc.wait(5)


def test_bad_zone_is_reported() -> None:
    with pytest.raises(ZoneError, match="type"):
        load_zone({"records": {"x.test": [{"type": "BOGUS", "value": "1"}]}})
    with pytest.raises(ZoneError, match="value"):
        load_zone({"records": {"x.test": [{"type": "A", "value": "not-an-ip"}]}})


async def test_records_queries_and_answers_in_process() -> None:
    fake = await FakeUpstream(ZONE["records"], host="::1").start()
    try:
        assert fake.port and fake.text.startswith("[::1]:")
        query = DNSRecord.question("WWW.example.test")
        reply = DNSRecord.parse(fake.answer(query, "udp"))
        assert str(reply.rr[0].rdata) == "192.0.2.10"
        fake.replies(bytes(query.pack()), ("::1", 5353, 0, 0), "udp")
        [seen] = fake.received
        assert seen.qname == "WWW.example.test" and seen.transport == "udp" and not seen.edns
    finally:
        await fake.stop()
