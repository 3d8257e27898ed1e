"""The attacker's programs for tests/netns/test_hostile.py, run inside the lab's namespaces.

python -m tests.netns.hostile serve ADDRESS SCRIPT
    An authoritative name server on ADDRESS port 53 (UDP and TCP) that answers from SCRIPT, a
    JSON file: {"zone": APEX, "filter": BOOL, "rules": {NAME: {"answer": [...], "authority":
    [...], "additional": [...]}}}. NAME is a name or a wildcard "*.SUFFIX" (one or more labels,
    the longest suffix wins); each record is [OWNER, TYPE, VALUE, TTL], OWNER "{q}" for the
    question's name as its bytes came (how a wildcard answers). The records go out in the order
    given, section by section: a hostile server says what it likes. With "filter" (a benign
    server) an answer keeps only its CNAMEs and the records of the asked type, and a name left
    with none gets NODATA. A name no rule covers gets NXDOMAIN. AA is set; an OPT record is sent
    back when the query had one; an answer bigger than the query's UDP size comes with TC and
    whole over TCP. Prints "ready" once both sockets listen.
python -m tests.netns.hostile ask
    Queries from stdin (a JSON list of {server, name, qtype, do, port?}), asked one after the
    other over UDP with EDNS (and the DO bit when "do"), again over TCP when truncated; prints
    a JSON list of {rcode, answer, authority, additional, tc}, each section a list of
    [owner, type, value, ttl].

Names are written as resolverd keeps them (wire.read_name's form): lower case, RFC 1035 \\DDD for
every byte that is not a letter, digit, hyphen or underscore. `to_wire` reads that form, and
plain \\X escapes, back into wire bytes, so a test can ask for a name with a newline or an
escape sequence in a label.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import sys
import threading
from collections.abc import Sequence
from typing import Any

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "TXT": 16, "AAAA": 28, "OPT": 41}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_")
_RR = struct.Struct("!HHIH")
EDNS_SIZE = 1232

# -- names ---------------------------------------------------------------------------------------


def to_wire(name: str) -> bytes:
    """A name in presentation form (\\DDD and \\X escapes) as wire bytes, uncompressed."""
    labels: list[bytes] = []
    label = bytearray()
    i = 0
    while i < len(name):
        c = name[i]
        if c == "\\":
            digits = name[i + 1 : i + 4]
            if len(digits) == 3 and digits.isdigit():
                label.append(int(digits))
                i += 4
            else:
                label.append(ord(name[i + 1]))
                i += 2
        elif c == ".":
            labels.append(bytes(label))
            label = bytearray()
            i += 1
        else:
            label.append(ord(c))
            i += 1
    if label:
        labels.append(bytes(label))
    if any(not part or len(part) > 63 for part in labels):
        raise ValueError(f"not a name: {name!r}")
    return b"".join(bytes([len(part)]) + part for part in labels) + b"\0"


def to_text(labels: Sequence[bytes]) -> str:
    """Labels in resolverd's one presentation form (lower case, \\DDD for the rest)."""
    out = []
    for label in labels:
        lower = label.lower()  # ASCII letters only
        out.append("".join(chr(b) if b in _PLAIN else f"\\{b:03d}" for b in lower))
    return ".".join(out)


def read_name(data: bytes, pos: int) -> tuple[list[bytes], int]:
    """The labels of the name at `pos` (compression followed) and the offset past it."""
    labels: list[bytes] = []
    end = -1
    for _ in range(128):
        length = data[pos]
        if length & 0xC0 == 0xC0:
            if end < 0:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | data[pos + 1]
            continue
        if length == 0:
            return labels, (end if end >= 0 else pos + 1)
        labels.append(data[pos + 1 : pos + 1 + length])
        pos += 1 + length
    raise ValueError("compression loop")


# -- the server ----------------------------------------------------------------------------------


class Script:
    """What the server answers (see the module doc)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.zone = to_wire(doc["zone"])
        self.filter = bool(doc.get("filter", False))
        self.exact: dict[bytes, dict[str, Any]] = {}
        self.wild: list[tuple[bytes, dict[str, Any]]] = []
        for name, rule in doc["rules"].items():
            if name.startswith("*."):
                self.wild.append((to_wire(name[2:]).lower(), rule))
            else:
                self.exact[to_wire(name).lower()] = rule
        self.wild.sort(key=lambda item: -len(item[0]))

    def rule(self, qname: bytes) -> dict[str, Any] | None:
        key = qname.lower()
        found = self.exact.get(key)
        if found is not None:
            return found
        for suffix, rule in self.wild:
            if _below(key, suffix):
                return rule
        return None

    def reply(self, query: bytes, tcp: bool) -> bytes | None:
        if len(query) < 12 or query[2] & 0x80:
            return None
        qid, flags, qdcount, _an, _ns, arcount = struct.unpack("!HHHHHH", query[:12])
        if qdcount != 1:
            return None
        pos = read_name(query, 12)[1]
        qname = query[12:pos]
        qtype = struct.unpack("!H", query[pos : pos + 2])[0]
        qend = pos + 4
        size, opt = _opt(query, qend, arcount)
        rule = self.rule(qname)
        rcode = 0
        sections: list[list[bytes]] = [[], [], []]
        if rule is None:
            rcode, sections[1] = 3, [self._soa()]
        else:
            sections = [
                [self._record(r) for r in rule.get(part, []) if self._keep(r, qtype, part)]
                for part in ("answer", "authority", "additional")
            ]
            if self.filter and not sections[0]:
                sections[1] = [self._soa()]
        if opt:
            sections[2].append(b"\0" + _RR.pack(TYPES["OPT"], EDNS_SIZE, 0, 0))
        head = struct.pack(
            "!HHHHHH", qid, 0x8000 | 0x0400 | (flags & 0x0100) | rcode, 1, *map(len, sections)
        )
        data = head + query[12:qend] + b"".join(b"".join(s) for s in sections)
        if not tcp and len(data) > size:
            return struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | 0x0200 | (flags & 0x0100),
                               1, 0, 0, 0) + query[12:qend]  # fmt: skip
        return data

    def _keep(self, record: list[Any], qtype: int, part: str) -> bool:
        if not self.filter or part != "answer":
            return True
        return record[1] == "CNAME" or TYPES.get(record[1]) == qtype

    def _soa(self) -> bytes:
        rdata = b"\2ns" + self.zone + b"\4host" + self.zone + struct.pack("!IIIII", 1, 60, 60,
                                                                          600, 30)  # fmt: skip
        return self.zone + _RR.pack(TYPES["SOA"], 1, 30, len(rdata)) + rdata

    def _record(self, record: list[Any]) -> bytes:
        owner, rtype, value, ttl = record
        wire_owner = b"\xc0\x0c" if owner == "{q}" else to_wire(owner)
        if rtype == "A":
            rdata = socket.inet_pton(socket.AF_INET, value)
        elif rtype == "AAAA":
            rdata = socket.inet_pton(socket.AF_INET6, value)
        elif rtype in ("CNAME", "NS"):
            rdata = to_wire(value)
        elif rtype == "TXT":
            raw = value.encode()
            rdata = bytes([len(raw)]) + raw
        else:
            raise ValueError(f"type {rtype} is not scripted")
        return wire_owner + _RR.pack(TYPES[rtype], 1, int(ttl), len(rdata)) + rdata


def _below(name: bytes, suffix: bytes) -> bool:
    """Whether wire name `name` is strictly below `suffix` (whole labels)."""
    pos = 0
    while name[pos] != 0:
        pos += 1 + name[pos]
        if name[pos:] == suffix:
            return True
    return False


def _opt(query: bytes, qend: int, arcount: int) -> tuple[int, bool]:
    """The query's UDP payload size and whether it had an OPT record."""
    if arcount and query[qend : qend + 3] == b"\0\0\x29":
        return max(512, struct.unpack("!H", query[qend + 3 : qend + 5])[0]), True
    return 512, False


def serve(address: str, script_path: str) -> int:
    with open(script_path) as fh:
        script = Script(json.load(fh))
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    udp = socket.socket(family, socket.SOCK_DGRAM)
    udp.bind((address, 53))
    tcp = socket.socket(family, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((address, 53))
    tcp.listen(64)

    def over_tcp() -> None:
        while True:
            conn, _ = tcp.accept()
            threading.Thread(target=_tcp_client, args=(conn, script), daemon=True).start()

    threading.Thread(target=over_tcp, daemon=True).start()
    print("ready", flush=True)
    while True:
        data, peer = udp.recvfrom(65535)
        try:
            out = script.reply(data, tcp=False)
        except (ValueError, IndexError, struct.error) as err:
            print(f"bad query from {peer}: {err}", file=sys.stderr, flush=True)
            continue
        if out is not None:
            udp.sendto(out, peer)


def _tcp_client(conn: socket.socket, script: Script) -> None:
    with conn:
        conn.settimeout(10)
        try:
            while True:
                size = struct.unpack("!H", _recv_exact(conn, 2))[0]
                out = script.reply(_recv_exact(conn, size), tcp=True)
                if out is None:
                    return
                conn.sendall(struct.pack("!H", len(out)) + out)
        except (OSError, ConnectionError, ValueError, IndexError, struct.error):
            return


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("short read")
        data += chunk
    return data


# -- the client ----------------------------------------------------------------------------------


def query_bytes(name: str, qtype: str, do: bool) -> bytes:
    qid = random.randrange(1 << 16)
    head = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1)
    opt = b"\0" + _RR.pack(TYPES["OPT"], EDNS_SIZE, 0x8000 if do else 0, 0)
    return head + to_wire(name) + struct.pack("!HH", TYPES[qtype], 1) + opt


def ask_one(server: str, name: str, qtype: str, do: bool = False, port: int = 53) -> Any:
    query = query_bytes(name, qtype, do)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as u:
        u.settimeout(4)
        u.sendto(query, (server, port))
        while True:
            data = u.recv(65535)
            if data[:2] == query[:2]:
                break
    tc = bool(data[2] & 0x02)
    if tc:
        with socket.create_connection((server, port), timeout=4) as t:
            t.sendall(struct.pack("!H", len(query)) + query)
            data = _recv_exact(t, struct.unpack("!H", _recv_exact(t, 2))[0])
    return parse_reply(data) | {"tc": tc}


def parse_reply(data: bytes) -> dict[str, Any]:
    _qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", data[:12])
    pos = 12
    for _ in range(qd):
        pos = read_name(data, pos)[1] + 4
    out: dict[str, Any] = {"rcode": RCODES.get(flags & 0xF, str(flags & 0xF))}
    for part, count in (("answer", an), ("authority", ns), ("additional", ar)):
        records = []
        for _ in range(count):
            owner, pos = read_name(data, pos)
            rtype, _cls, ttl, rdlen = _RR.unpack(data[pos : pos + 10])
            pos += 10
            rdata = data[pos : pos + rdlen]
            if rtype == TYPES["A"]:
                value = socket.inet_ntop(socket.AF_INET, rdata)
            elif rtype == TYPES["AAAA"]:
                value = socket.inet_ntop(socket.AF_INET6, rdata)
            elif rtype in (TYPES["CNAME"], TYPES["NS"]):
                value = to_text(read_name(data, pos)[0])
            else:
                value = rdata.hex()
            pos += rdlen
            if rtype != TYPES["OPT"]:
                records.append([to_text(owner), TYPE_NAMES.get(rtype, str(rtype)), value, ttl])
        out[part] = records
    return out


def ask(queries: Sequence[dict[str, Any]]) -> list[Any]:
    out = []
    for q in queries:
        try:
            out.append(ask_one(q["server"], q["name"], q["qtype"], bool(q.get("do")),
                               int(q.get("port", 53))))  # fmt: skip
        except (OSError, ValueError) as err:
            out.append({"error": f"{type(err).__name__}: {err}"})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["serve"] and len(args) == 3:
        return serve(args[1], args[2])
    if args == ["ask"]:
        print(json.dumps(ask(json.load(sys.stdin))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
