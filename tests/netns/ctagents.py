"""Programs the NAT lab (tests/netns/natlab.py) runs in its namespaces.

python -m tests.netns.ctagents echo PORT
    a TCP echo server (v4 and v6) that echoes each line back; prints "ready"
python -m tests.netns.ctagents hold COUNT HOST:PORT...
    opens COUNT connections to each target, one echo round trip on each, prints "ready",
    and keeps them open until its standard input closes
python -m tests.netns.ctagents udp COUNT BASEPORT HOST...
    one datagram from one socket to each of COUNT ports from BASEPORT on each host: COUNT
    conntrack entries per host in the router; prints "sent N"
python -m tests.netns.ctagents burst HOST PORT COUNT SIZE
    COUNT datagrams of SIZE bytes to HOST:PORT from one socket; prints "sent N"
python -m tests.netns.ctagents stream HOST PORT WAIT
    connects, one round trip, prints "up"; on a line "go" on its standard input, sends a line
    and waits up to WAIT seconds for the echo; prints JSON {outcome, seconds}: outcome is
    "echo", "reset" or "timeout"
python -m tests.netns.ctagents flush SECONDS ADDRESS...
    (in the router) resolver.net.conntrack.flush of ADDRESS... with a deadline SECONDS away,
    on a channel of its own; prints JSON {deleted, failed, complete, ms}
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Sequence


def echo(port: int) -> int:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.listen(1024)
    print("ready", flush=True)

    def serve(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def _target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _round_trip(conn: socket.socket) -> None:
    conn.sendall(b"hello\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(64)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk


def hold(count: int, targets: Sequence[str]) -> int:
    conns = []
    for target in targets:
        for _ in range(count):
            conn = socket.create_connection(_target(target), timeout=5)
            _round_trip(conn)
            conns.append(conn)
    print("ready", flush=True)
    sys.stdin.read()
    for conn in conns:
        conn.close()
    return 0


def udp(count: int, base: int, hosts: Sequence[str]) -> int:
    sent = 0
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            for port in range(base, base + count):
                sock.sendto(b"x", (host, port))
                sent += 1
    print(f"sent {sent}", flush=True)
    return 0


def burst(host: str, port: int, count: int, size: int) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    payload = b"x" * size
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        for _ in range(count):
            sock.sendto(payload, (host, port))
    print(f"sent {count}", flush=True)
    return 0


def stream(host: str, port: int, wait: float) -> int:
    conn = socket.create_connection((host, port), timeout=5)
    _round_trip(conn)
    print("up", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    start = time.monotonic()
    conn.settimeout(wait)
    try:
        conn.sendall(b"again\n")
        data = conn.recv(64)
        outcome = "echo" if data else "closed"
    except ConnectionResetError:
        outcome = "reset"
    except TimeoutError:
        outcome = "timeout"
    except OSError as err:
        outcome = f"error: {err}"
    print(json.dumps({"outcome": outcome, "seconds": round(time.monotonic() - start, 3)}))
    return 0


def flush(seconds: float, addresses: Sequence[str]) -> int:
    import asyncio

    from resolver.net import conntrack, netlink

    packed = [
        socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a) for a in addresses
    ]

    async def run() -> dict[str, object]:
        channel = netlink.Channel(netlink.NETLINK_NETFILTER)
        channel.attach(asyncio.get_running_loop())
        try:
            start = time.monotonic()
            done = await conntrack.flush(channel, packed, start + seconds)
            ms = (time.monotonic() - start) * 1000
        finally:
            channel.close()
        return {"deleted": done.deleted, "failed": done.failed, "complete": done.complete,
                "ms": round(ms, 2)}  # fmt: skip

    print(json.dumps(asyncio.run(run())))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["echo"]:
        return echo(int(args[1]))
    if args[:1] == ["hold"]:
        return hold(int(args[1]), args[2:])
    if args[:1] == ["udp"]:
        return udp(int(args[1]), int(args[2]), args[3:])
    if args[:1] == ["burst"]:
        return burst(args[1], int(args[2]), int(args[3]), int(args[4]))
    if args[:1] == ["stream"]:
        return stream(args[1], int(args[2]), float(args[3]))
    if args[:1] == ["flush"]:
        return flush(float(args[1]), args[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
