"""Agents for the crash and fault tests, run inside the lab's namespaces (crashkit.agent).

python -m tests.netns.crashagents load SERVER PORT LABEL HOLD N4 N6
    The client's load: resolves fresh names of LABEL (A and AAAA in turn) and connects at
    once to each answer; a second thread keeps connecting to the addresses whose hold is
    still live (the three latest answers and two others), and reports every connection to
    a live one that did not reach the breakout server. One JSON line per answer
    {"k": "ans", addr, sent, got, id}, per bad probe {"k": "bad", ...}, and
    {"k": "summary", probes, answers} when stdin closes.
python -m tests.netns.crashagents watch TABLE...
    Every route added to or deleted from the tables, as it happens (netlink multicast):
    {"t", "op": "add"|"del", "table", "dst", "len", "proto"}; {"op": "overrun"} if the
    kernel dropped events (then nothing can be proved). "ready" first; stops when stdin
    closes.
python -m tests.netns.crashagents ask SERVER PORT A|AAAA NAME...
    One query per name: prints {name: [addresses]} (an empty list for a truncated one).
python -m tests.netns.crashagents latency SERVER PORT SECONDS HIT MISS_LABEL N
    Cached-answer latency (HIT every 5 ms) and tagged-miss latency (a fresh v4 name of
    MISS_LABEL every 100 ms) for SECONDS: {"k": "hit"|"miss", "t", "ms", "addr"}.
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from tests.netns.agents import connect
from tests.netns.crashkit import HOLD_MARGIN, v4_name, v6_name
from tests.netns.lab import PORT


def _emit(item: dict[str, Any], lock: threading.Lock = threading.Lock()) -> None:  # noqa: B008
    with lock:
        sys.stdout.write(json.dumps(item) + "\n")
        sys.stdout.flush()


def _ask(server: str, port: int, name: str, qtype: str, timeout: float) -> list[str]:
    """One UDP query; the addresses of the answer (A or AAAA)."""
    from dnslib import QTYPE, DNSRecord

    q = DNSRecord.question(name, qtype)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(timeout)
        u.sendto(q.pack(), (server, port))
        while True:
            reply = DNSRecord.parse(u.recv(65535))
            if reply.header.id == q.header.id:
                break
    want = getattr(QTYPE, qtype)
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == want]


def _identity(address: str, timeout: float = 1.0) -> str:
    try:
        return connect(address, PORT, timeout)
    except OSError as err:
        return f"error: {err}"


def _until_stdin_closes() -> threading.Event:
    stop = threading.Event()

    def wait() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait, daemon=True).start()
    return stop


def load(server: str, port: int, label: str, hold: float, n4: int, n6: int) -> int:
    stop = _until_stdin_closes()
    lock = threading.Lock()
    latest: dict[str, float] = {}  # address -> when the query of its latest answer was sent
    recent: deque[str] = deque(maxlen=3)
    answers = 0

    def resolver() -> None:
        nonlocal answers
        i = 0
        while not stop.is_set():
            if i % 2 == 0:
                name, qtype = v4_name(label, (i // 2) % n4), "A"
            else:
                name, qtype = v6_name(label, (i // 2) % n6), "AAAA"
            i += 1
            sent = time.monotonic()
            try:
                addresses = _ask(server, port, name, qtype, 0.5)
            except OSError:  # the daemon is down (killed): try the next name
                time.sleep(0.05)
                continue
            got = time.monotonic()
            if not addresses:
                _emit({"k": "empty", "name": name, "t": got})
                continue
            address = addresses[0]
            with lock:
                latest[address] = sent
                recent.append(address)
            answers += 1
            ident = _identity(address)
            _emit({"k": "ans", "addr": address, "sent": sent, "got": got, "id": ident})
            time.sleep(0.04)

    thread = threading.Thread(target=resolver, daemon=True)
    thread.start()
    probes = 0
    while not stop.is_set():
        now = time.monotonic()
        with lock:
            live = [a for a, s in latest.items() if s + hold - HOLD_MARGIN > now]
            picks = [a for a in recent if a in live]
        others = [a for a in live if a not in picks]
        picks += random.sample(others, min(2, len(others)))
        for address in picks:
            t0 = time.monotonic()
            ident = _identity(address, 0.5)
            probes += 1
            with lock:
                was_live = latest[address] + hold - HOLD_MARGIN > t0
            if ident != "breakout" and was_live:
                _emit({"k": "bad", "addr": address, "t": t0, "id": ident,
                       "sent": latest[address]})  # fmt: skip
        time.sleep(0.02)
    thread.join(2)
    _emit({"k": "summary", "probes": probes, "answers": answers})
    return 0


def watch(tables: Sequence[int]) -> int:
    from resolver.net import netlink, routes
    from resolver.net.links import RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE

    sock = netlink.open_socket(netlink.NETLINK_ROUTE, groups=RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
    buf = bytearray(1 << 20)
    wanted = set(tables)
    _emit({"op": "ready"})
    stdin = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([sock, stdin], [], [], 1.0)
        if stdin in ready and not os.read(stdin, 4096):
            return 0
        if sock not in ready:
            continue
        try:
            size = sock.recv_into(buf)
        except BlockingIOError:
            continue
        except OSError:  # ENOBUFS: events were lost
            _emit({"op": "overrun", "t": time.monotonic()})
            continue
        now = time.monotonic()
        for kind, _flags, _seq, start, end in netlink.iter_messages(buf, size):
            if kind not in (routes.RTM_NEWROUTE, routes.RTM_DELROUTE):
                continue
            r = routes.parse_route(buf, start, end)
            if r is not None and r.table in wanted:
                _emit({"t": now, "op": "add" if kind == routes.RTM_NEWROUTE else "del",
                       "table": r.table, "dst": r.dst, "len": r.dst_len,
                       "proto": r.protocol})  # fmt: skip


def latency(server: str, port: int, seconds: float, hit: str, label: str, n: int) -> int:
    deadline = time.monotonic() + seconds

    def measure(kind: str, name: Callable[[int], str], qtype: str, every: float) -> None:
        i = 0
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                addresses = _ask(server, port, name(i), qtype, 3.0)
                ms: float | None = (time.monotonic() - t0) * 1000
            except OSError:
                addresses, ms = [], None
            _emit({"k": kind, "t": t0, "ms": ms, "addr": addresses[0] if addresses else None})
            i += 1
            time.sleep(max(0.0, every - (time.monotonic() - t0)))

    misses = threading.Thread(
        target=measure, args=("miss", lambda i: v4_name(label, i % n), "A", 0.1), daemon=True
    )
    misses.start()
    measure("hit", lambda _i: hit, "A", 0.005)
    misses.join(5)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["load"]:
        return load(args[1], int(args[2]), args[3], float(args[4]), int(args[5]), int(args[6]))
    if args[:1] == ["watch"]:
        return watch([int(t) for t in args[1:]])
    if args[:1] == ["ask"]:
        server, port, qtype = args[1], int(args[2]), args[3]
        print(json.dumps({name: _ask(server, port, name, qtype, 3.0) for name in args[4:]}))
        return 0
    if args[:1] == ["latency"]:
        return latency(args[1], int(args[2]), float(args[3]), args[4], args[5], int(args[6]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
