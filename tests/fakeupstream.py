"""An in-process fake upstream name server for tests and the demo (dnslib + asyncio).

It answers like a recursive resolver from a small zone: CNAMEs inside the zone are chased and
the whole chain is returned with the final records; an unknown name gets NXDOMAIN with an SOA
(negative TTL 30); a known name without the asked type gets NODATA with that SOA. Over UDP an
answer bigger than 512 bytes (no EDNS) or than the client's EDNS size comes back with TC set and
only the question; over TCP it comes back whole.

Zone YAML (fixed format, other test tiers rely on it):

    records:
      www.example.test:
        - {type: A, value: 192.0.2.10, ttl: 60}
      alias.example.test:
        - {type: CNAME, value: www.example.test, ttl: 300}

Types: A, AAAA, CNAME, TXT, MX ("10 mail.example.test"), NS, PTR, SOA ("mname rname serial
refresh retry expire minimum").

In process (integration tests):

    fake = FakeUpstream(records)          # {name: [{type, value, ttl}]} as in the YAML
    await fake.start()                    # 127.0.0.1, port 0 -> fake.port
    fake.mode = "timeout"                 # see MODES; fake.delay = 0.2; fake.spoof_first = True
    fake.received                         # every query: id, source port, transport, DO, CD...
    await fake.stop()

As a process (namespace tests, the demo):

    python -m tests.fakeupstream --listen 127.0.0.1:5300 [--listen [::1]:5300] --zone zone.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import struct
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dnslib import (
    AAAA,
    CNAME,
    EDNS0,
    MX,
    NS,
    PTR,
    QTYPE,
    RCODE,
    RD,
    RR,
    SOA,
    TXT,
    A,
    DNSRecord,
)

# What the fake does with a query (over UDP; over TCP the same except for "tc").
MODES = (
    "normal",  # answer from the zone
    "timeout",  # never answer
    "refused",  # REFUSED
    "servfail",  # SERVFAIL
    "tc",  # TC over UDP always (the full answer over TCP)
    "wrong_id",  # the answer with another id
    "wrong_source",  # the answer, sent from another socket (another port)
    "garbage",  # random bytes (starting with the query's id)
    "loop",  # a reply whose answer's owner name is a compression pointer to itself
    "mismatch",  # the answer to another question (other name)
    "no_qr",  # the answer with QR cleared
)
BAD_MODES = ("wrong_id", "wrong_source", "garbage", "loop", "mismatch", "no_qr")
NEGATIVE_TTL = 30
TYPES = ("A", "AAAA", "CNAME", "TXT", "MX", "NS", "PTR", "SOA")


@dataclass(frozen=True)
class Received:
    """One query as the fake saw it."""

    qid: int
    source: tuple[str, int]
    transport: str  # "udp" or "tcp"
    qname: str  # as sent (letter case kept), without the trailing dot
    qtype: str
    rd: bool
    cd: bool
    edns: bool
    do: bool
    udp_size: int  # the EDNS payload size, or 0
    at: float  # time.monotonic()


class ZoneError(ValueError):
    pass


def load_zone(data: Any) -> dict[str, list[RR]]:
    """The YAML structure ``{records: {name: [{type, value, ttl}]}}`` (or just the mapping
    of names) -> resource records by lower-case name without the trailing dot."""
    if isinstance(data, Mapping) and "records" in data:
        data = data["records"]
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ZoneError("records: expected a mapping of names")
    zone: dict[str, list[RR]] = {}
    for name, items in data.items():
        key = str(name).rstrip(".").lower()
        if not isinstance(items, list):
            raise ZoneError(f"records/{name}: expected a list")
        for i, item in enumerate(items):
            where = f"records/{name}/{i}"
            if not isinstance(item, Mapping):
                raise ZoneError(f"{where}: expected a mapping")
            rtype = str(item.get("type", "")).upper()
            if rtype not in TYPES:
                raise ZoneError(f"{where}/type: one of {', '.join(TYPES)}")
            try:
                rr = _record(key, rtype, str(item.get("value", "")), int(item.get("ttl", 60)))
            except (ValueError, TypeError, IndexError, OSError) as err:
                raise ZoneError(f"{where}/value: {err}") from None
            zone.setdefault(key, []).append(rr)
    return zone


def _record(name: str, rtype: str, value: str, ttl: int) -> RR:
    owner = name + "."
    if rtype == "A":
        socket.inet_pton(socket.AF_INET, value)
        return RR(owner, QTYPE.A, rdata=A(value), ttl=ttl)
    if rtype == "AAAA":
        socket.inet_pton(socket.AF_INET6, value)
        return RR(owner, QTYPE.AAAA, rdata=AAAA(value), ttl=ttl)
    if rtype == "CNAME":
        return RR(owner, QTYPE.CNAME, rdata=CNAME(value), ttl=ttl)
    if rtype == "TXT":
        return RR(owner, QTYPE.TXT, rdata=TXT(value), ttl=ttl)
    if rtype == "MX":
        pref, exchange = value.split()
        return RR(owner, QTYPE.MX, rdata=MX(exchange, int(pref)), ttl=ttl)
    if rtype == "NS":
        return RR(owner, QTYPE.NS, rdata=NS(value), ttl=ttl)
    if rtype == "PTR":
        return RR(owner, QTYPE.PTR, rdata=PTR(value), ttl=ttl)
    mname, rname, *times = value.split()
    return RR(owner, QTYPE.SOA, rdata=SOA(mname, rname, tuple(int(t) for t in times)), ttl=ttl)


def _below_ephemeral() -> int:
    """A random port under the kernel's ephemeral range, which no client socket is given: a
    stopped server can start again on its port (test_upstreams_die_and_come_back...) without
    a resolver's source port having taken it meanwhile."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return random.randrange(max(1024, low - 12288), low)


def bind_pair(host: str, port: int = 0) -> tuple[socket.socket, socket.socket, int]:
    """A UDP and a listening TCP socket on the same port of `host` (a free one below the
    ephemeral range for port 0), both non-blocking: what a name server serves on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _attempt in range(50):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            udp.bind((host, port or _below_ephemeral()))
        except OSError:
            udp.close()
            if port:
                raise
            continue
        chosen = udp.getsockname()[1]
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((host, chosen))
        except OSError:
            udp.close()
            tcp.close()
            if port:
                raise
            continue
        tcp.listen(64)
        tcp.setblocking(False)
        udp.setblocking(False)
        return udp, tcp, chosen
    raise OSError(f"no port free for both UDP and TCP on {host}")


class FakeUpstream:
    """A fake recursive resolver on UDP and TCP (same port) at `host`."""

    def __init__(
        self,
        records: Mapping[str, Any] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.zone = load_zone(records or {})
        self.host = host
        self.port = port
        self.mode = "normal"
        self.delay = 0.0  # seconds before each answer
        self.spoof_first = False  # in a BAD_MODES mode: send the bad reply, then the good one
        self.dnssec = False  # with DO: add an RRSIG after each answer record and set AD
        self.extra_answer: list[RR] = []  # appended to every positive answer (unrelated data)
        self.extra_additional: list[RR] = []  # appended to the additional section
        self.received: list[Received] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._other: socket.socket | None = None  # "wrong_source" replies come from here
        self._tcp: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def text(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def set_records(self, records: Mapping[str, Any]) -> None:
        self.zone.update(load_zone(records))

    def set_extra(
        self, answer: Mapping[str, Any] | None = None, additional: Mapping[str, Any] | None = None
    ) -> None:
        """Unrelated records ({name: [{type, value, ttl}]}) added to every positive answer."""
        self.extra_answer = [rr for rrs in load_zone(answer or {}).values() for rr in rrs]
        self.extra_additional = [rr for rrs in load_zone(additional or {}).values() for rr in rrs]

    def reset(self) -> None:
        self.mode, self.delay, self.spoof_first, self.dnssec = "normal", 0.0, False, False
        self.extra_answer, self.extra_additional = [], []
        self.received.clear()

    # -- sockets ---------------------------------------------------------------------------
    async def start(self) -> FakeUpstream:
        loop = asyncio.get_running_loop()
        udp, tcp, port = bind_pair(self.host, self.port)
        self.port = port
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _UdpSide(self), sock=udp)
        self._tcp = await loop.create_server(lambda: _TcpSide(self), sock=tcp)
        other = socket.socket(udp.family, socket.SOCK_DGRAM)
        other.bind((self.host, 0))
        other.setblocking(False)
        self._other = other
        return self

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        if self._other is not None:
            self._other.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _udp_reply(self, data: bytes, addr: Any) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        for reply, other in self.replies(data, addr, "udp"):
            if other:
                assert self._other is not None
                self._other.sendto(reply, addr)
            elif self._udp is not None and not self._udp.is_closing():
                self._udp.sendto(reply, addr)

    # -- answers ---------------------------------------------------------------------------
    def replies(self, data: bytes, addr: Any, transport: str) -> list[tuple[bytes, bool]]:
        """What to send back for `data`: (bytes, from the other socket) in order."""
        try:
            query = DNSRecord.parse(data)
        except Exception:  # noqa: BLE001 - a fake server ignores what it cannot parse
            return []
        self._record_query(query, addr, transport)
        mode = self.mode
        if mode == "timeout":
            return []
        if mode in ("refused", "servfail"):
            reply = query.reply()
            reply.header.rcode = RCODE.REFUSED if mode == "refused" else RCODE.SERVFAIL
            return [(reply.pack(), False)]
        good = self.answer(query, transport, force_tc=(mode == "tc" and transport == "udp"))
        if mode in BAD_MODES:
            bad = self._bad(mode, query, good)
            return [bad, (good, False)] if self.spoof_first else [bad]
        return [(good, False)]

    def _record_query(self, query: DNSRecord, addr: Any, transport: str) -> None:
        opt = next((r for r in query.ar if r.rtype == QTYPE.OPT), None)
        self.received.append(
            Received(
                qid=query.header.id,
                source=(addr[0], addr[1]),
                transport=transport,
                qname=str(query.q.qname).rstrip("."),
                qtype=QTYPE.get(query.q.qtype),
                rd=bool(query.header.rd),
                cd=bool(query.header.cd),
                edns=opt is not None,
                do=bool(opt is not None and opt.ttl & 0x8000),
                udp_size=opt.rclass if opt is not None else 0,
                at=time.monotonic(),
            )
        )

    def answer(self, query: DNSRecord, transport: str, force_tc: bool = False) -> bytes:
        """The zone's answer to `query` as bytes, truncated (TC) when it does not fit."""
        opt = next((r for r in query.ar if r.rtype == QTYPE.OPT), None)
        do = bool(opt is not None and opt.ttl & 0x8000)
        reply = query.reply()
        reply.header.ra = 1
        reply.header.cd = query.header.cd
        name = str(query.q.qname).rstrip(".").lower()
        qtype = query.q.qtype
        seen: set[str] = set()
        for _ in range(16):
            records = self.zone.get(name)
            if records is None:
                reply.header.rcode = RCODE.NXDOMAIN
                reply.add_auth(_soa(name))
                break
            wanted = [r for r in records if r.rtype == qtype or qtype == QTYPE.ANY]
            cnames = [r for r in records if r.rtype == QTYPE.CNAME]
            if wanted:
                for rr in wanted:
                    self._add(reply, rr, do)
                for rr in self.extra_answer:
                    reply.add_answer(rr)
                for rr in self.extra_additional:
                    reply.add_ar(rr)
                break
            if cnames and qtype != QTYPE.CNAME and name not in seen:
                seen.add(name)
                self._add(reply, cnames[0], do)
                name = str(cnames[0].rdata.label).rstrip(".").lower()
                continue
            reply.add_auth(_soa(name))  # NODATA
            break
        if self.dnssec and do:
            reply.header.ad = 1
        if opt is not None:
            reply.add_ar(EDNS0(udp_len=1232, flags="do" if do else ""))
        packed = reply.pack()
        limit = 65535 if transport == "tcp" else max(512, opt.rclass) if opt is not None else 512
        if force_tc or len(packed) > limit:
            short = query.reply()
            short.header.ra = 1
            short.header.tc = 1
            if opt is not None:
                short.add_ar(EDNS0(udp_len=1232, flags="do" if do else ""))
            return bytes(short.pack())
        return bytes(packed)

    def _add(self, reply: DNSRecord, rr: RR, do: bool) -> None:
        reply.add_answer(rr)
        if self.dnssec and do:
            sig = struct.pack("!HBBIIIH", rr.rtype, 13, 2, rr.ttl, 2**31, 0, 12345)
            sig += b"\x07example\x04test\x00" + os.urandom(64)
            reply.add_answer(RR(rr.rname, 46, rdata=RD(sig), ttl=rr.ttl))

    def _bad(self, mode: str, query: DNSRecord, good: bytes) -> tuple[bytes, bool]:
        qid = query.header.id
        if mode == "wrong_id":
            return struct.pack("!H", (qid + 1) & 0xFFFF) + good[2:], False
        if mode == "wrong_source":
            return good, True
        if mode == "garbage":
            return good[:2] + os.urandom(40), False
        if mode == "no_qr":
            return good[:2] + bytes((good[2] & 0x7F,)) + good[3:], False
        if mode == "mismatch":
            other = DNSRecord.question("other.invalid", QTYPE.get(query.q.qtype))
            other.header.id = qid
            reply = other.reply()
            reply.add_answer(RR("other.invalid.", QTYPE.A, rdata=A("203.0.113.66"), ttl=60))
            return bytes(reply.pack()), False
        # loop: header + the question + one answer whose owner is a pointer to itself
        header = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0)
        qbytes = _question_bytes(query)
        at = 12 + len(qbytes)
        owner = struct.pack("!H", 0xC000 | at)
        rr = owner + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton("192.0.2.99")
        return header + qbytes + rr, False


def _question_bytes(query: DNSRecord) -> bytes:
    name = b"".join(bytes((len(label),)) + label for label in query.q.qname.label if label) + b"\0"
    return name + struct.pack("!HH", query.q.qtype, query.q.qclass)


def _soa(name: str) -> RR:
    apex = name.rsplit(".", 1)[-1] + "." if name else "."
    times = (1, 3600, 600, 86400, NEGATIVE_TTL)
    soa = SOA("ns.fake.test.", "hostmaster.fake.test.", times)
    return RR(apex, QTYPE.SOA, rdata=soa, ttl=NEGATIVE_TTL)


class _UdpSide(asyncio.DatagramProtocol):
    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.fake._spawn(self.fake._udp_reply(data, addr))


class _TcpSide(asyncio.Protocol):
    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 2:
            size = struct.unpack_from("!H", self.buffer)[0]
            if len(self.buffer) < size + 2:
                return
            message = bytes(self.buffer[2 : size + 2])
            del self.buffer[: size + 2]
            self.fake._spawn(self._reply(message))

    async def _reply(self, message: bytes) -> None:
        if self.fake.delay:
            await asyncio.sleep(self.fake.delay)
        assert self.transport is not None
        peer = self.transport.get_extra_info("peername")
        for reply, _other in self.fake.replies(message, peer, "tcp"):
            if not self.transport.is_closing():
                self.transport.write(struct.pack("!H", len(reply)) + reply)


def _parse_listen(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    return host, int(port)


async def _serve(listen: list[tuple[str, int]], records: Any) -> None:
    fakes = [await FakeUpstream(records, host, port).start() for host, port in listen]
    for fake in fakes:
        print(f"fake upstream listening on {fake.text}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for fake in fakes:
        await fake.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakeupstream", description=__doc__)
    parser.add_argument("--listen", action="append", required=True, help="HOST:PORT, [V6]:PORT")
    parser.add_argument("--zone", help="zone YAML: {records: {name: [{type, value, ttl}]}}")
    args = parser.parse_args(argv)
    records: Any = {}
    if args.zone:
        with open(args.zone, encoding="utf-8") as fh:
            records = yaml.safe_load(fh)
    try:
        load_zone(records)
        listen = [_parse_listen(t) for t in args.listen]
    except (ZoneError, ValueError) as err:
        print(f"fakeupstream: {err}", file=sys.stderr)
        return 1
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(listen, records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
