"""Small programs the namespace lab runs inside its namespaces.

python -m tests.netns.agents serve IDENTITY PORT      identity server (v4 and v6), prints "ready"
python -m tests.netns.agents connect HOST PORT [TIMEOUT]            prints the identity
python -m tests.netns.agents reach HOST...    a TCP round trip to each (refused counts),
    retried for up to 5 s: warms the neighbour caches both ways (there is no ping here)
python -m tests.netns.agents loop HOST PORT SECONDS
    connects again and again for SECONDS, a new connection each time, and prints one line
    per connection: the identity, or "error: ..."
python -m tests.netns.agents resolve-connect SERVER NAME A|AAAA PORT
    asks SERVER (port 53; TCP when the UDP answer is truncated), connects at once to the
    first address of the answer and prints JSON {name, address, identity, truncated,
    resolve_ms, connect_ms}
python -m tests.netns.agents query SERVER NAME TYPE [do]
    asks SERVER (port 53; TCP when the UDP answer is truncated), with EDNS and the DO bit
    when "do" is given, and prints JSON {rcode, answer: [[owner, type, value, ttl], ...],
    edns, do, ad, truncated}: the whole answer section, CNAMEs included, in order
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any


def serve(identity: str, port: int) -> int:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.listen(128)
    print("ready", flush=True)

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.sendall(identity.encode() + b"\n")

    while True:
        conn, _ = sock.accept()
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


def connect(host: str, port: int, timeout: float = 2.0) -> str:
    with socket.create_connection((host, port), timeout=timeout) as conn:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(64)
            if not chunk:
                break
            data += chunk
    return data.decode().strip()


def loop(host: str, port: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            print(connect(host, port, 0.5), flush=True)
        except OSError as err:
            print(f"error: {err}", flush=True)
        time.sleep(0.01)
    return 0


def reach(hosts: Sequence[str]) -> int:
    bad = 0
    for host in hosts:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection((host, 9), timeout=0.5).close()
                break
            except ConnectionRefusedError:
                break  # the RST came back: the path works both ways
            except OSError:
                if time.monotonic() > deadline:
                    print(f"cannot reach {host}", file=sys.stderr)
                    bad += 1
                    break
                time.sleep(0.05)
    return 1 if bad else 0


def _query(server: str, name: str, qtype: str) -> tuple[list[str], bool]:
    from dnslib import QTYPE, DNSRecord

    q = DNSRecord.question(name, qtype)
    reply, truncated = _exchange(server, q)
    want = getattr(QTYPE, qtype)
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == want], truncated


def _exchange(server: str, q: Any) -> tuple[Any, bool]:
    """`q` (a dnslib DNSRecord) to SERVER port 53 over UDP, again over TCP when truncated:
    the reply, and whether the UDP one was truncated."""
    from dnslib import DNSRecord

    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as u:
        u.settimeout(3)
        u.sendto(q.pack(), (server, 53))
        reply = DNSRecord.parse(u.recv(65535))
    truncated = bool(reply.header.tc)
    if truncated:
        with socket.create_connection((server, 53), timeout=3) as t:
            wire = q.pack()
            t.sendall(struct.pack("!H", len(wire)) + wire)
            size = struct.unpack("!H", _recv_exact(t, 2))[0]
            reply = DNSRecord.parse(_recv_exact(t, size))
    return reply, truncated


def query(server: str, name: str, qtype: str, do: bool = False) -> dict[str, object]:
    from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

    q = DNSRecord.question(name, qtype)
    if do:
        q.add_ar(EDNS0(flags="do", udp_len=1232))
    reply, truncated = _exchange(server, q)
    opt = next((rr for rr in reply.ar if rr.rtype == QTYPE.OPT), None)
    answer = [
        [str(rr.rname).rstrip("."), QTYPE.get(rr.rtype), str(rr.rdata).rstrip("."), rr.ttl]
        for rr in reply.rr
    ]
    return {
        "rcode": RCODE.get(reply.header.rcode),
        "answer": answer,
        "edns": opt is not None,
        "do": bool(opt is not None and opt.ttl & 0x8000),
        "ad": bool(reply.header.ad),
        "truncated": truncated,
    }


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("short read")
        data += chunk
    return data


def resolve_connect(server: str, name: str, qtype: str, port: int) -> dict[str, object]:
    t0 = time.perf_counter()
    addresses, truncated = _query(server, name, qtype)
    t1 = time.perf_counter()
    out: dict[str, object] = {"name": name, "addresses": addresses, "truncated": truncated}
    out["resolve_ms"] = round((t1 - t0) * 1000, 3)
    if not addresses:
        out["identity"] = None
        return out
    out["address"] = addresses[0]
    try:
        out["identity"] = connect(addresses[0], port)
    except OSError as err:
        out["identity"] = f"error: {err}"
    out["connect_ms"] = round((time.perf_counter() - t1) * 1000, 3)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["serve"]:
        return serve(args[1], int(args[2]))
    if args[:1] == ["connect"]:
        try:
            print(connect(args[1], int(args[2]), float(args[3]) if len(args) > 3 else 2.0))
        except OSError as err:
            print(f"error: {err}")
            return 1
        return 0
    if args[:1] == ["loop"]:
        return loop(args[1], int(args[2]), float(args[3]))
    if args[:1] == ["reach"]:
        return reach(args[1:])
    if args[:1] == ["resolve-connect"]:
        print(json.dumps(resolve_connect(args[1], args[2], args[3], int(args[4]))))
        return 0
    if args[:1] == ["query"]:
        print(json.dumps(query(args[1], args[2], args[3], args[4:5] == ["do"])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
