"""Drives resolver.net.traffic inside a namespace, one JSON line per request and reply.

    python -m tests.netns.trafficdriver        (inside the router namespace, stdin/stdout pipes)

Requests ("op" and its arguments; addresses as text, classes as [row, category|null]):

    {"op": "setup", "links": ["wan0"], "classes": [[5, null]], "since": 1700000000}
    {"op": "since"}                           -> epoch or null (no table)
    {"op": "hold", "family": 4, "items": [["203.0.113.10", [5, null], 300], ...]}
    {"op": "hold_many", "family": 6, "prefix": "2001:db8:ff::", "count": 10000, "class": [5, null]}
    {"op": "release", "family": 4, "addresses": [...]}
    {"op": "reclassify", "family": 4, "address": "...", "class": [7, null], "timeout": 300}
    {"op": "counters"}                        -> [{row, category, link, bytes, packets}, ...]
    {"op": "held", "family": 4}               -> [{address, chain, bytes, packets, expires_ms}]
    {"op": "remove"}

Each reply is {"result": ...} or {"error": "..."}; a change's result is the errno that sank its
transaction (0: applied). The layout is the last `setup`'s.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from resolver.net import netlink, nftables, traffic
from resolver.net.netlink import Message
from resolver.net.traffic import Layout, TrafficClass

AF = {4: socket.AF_INET, 6: socket.AF_INET6}


def _cls(value: Sequence[Any]) -> TrafficClass:
    return TrafficClass(value[0], value[1])


class Driver:
    def __init__(self, channel: netlink.Channel) -> None:
        self.channel = channel
        self.layout = Layout((), ())

    async def apply(self, transactions: list[list[Message]]) -> int:
        for messages in transactions:
            fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
            self.channel.submit(messages, fut.set_result, atomic=True)
            code = nftables.failed(await fut)
            if code:
                return code
        return 0

    async def handle(self, req: dict[str, Any]) -> Any:
        op = req["op"]
        lay = self.layout
        if op == "setup":
            classes = tuple(_cls(c) for c in req["classes"])
            self.layout = Layout(tuple(req["links"]), classes)
            return await self.apply([traffic.setup(self.layout, req["since"])])
        if op == "since":
            return await traffic.read_since(self.channel, lay)
        if op == "hold":
            fam = req["family"]
            items = [(socket.inet_pton(AF[fam], a), _cls(c), t) for a, c, t in req["items"]]
            return await self.apply(traffic.hold(lay, fam, items))
        if op == "hold_many":
            fam, base = req["family"], int(ipaddress.ip_address(req["prefix"]))
            size = 4 if fam == 4 else 16
            cls = _cls(req["class"])
            items = [((base + i).to_bytes(size, "big"), cls, 3600) for i in range(req["count"])]
            return await self.apply(traffic.hold(lay, fam, items))
        if op == "release":
            fam = req["family"]
            packed = [socket.inet_pton(AF[fam], a) for a in req["addresses"]]
            return await self.apply(traffic.release(lay, fam, packed))
        if op == "reclassify":
            fam = req["family"]
            one = socket.inet_pton(AF[fam], req["address"])
            msgs = traffic.reclassify(lay, fam, one, _cls(req["class"]), req["timeout"])
            return await self.apply([msgs])
        if op == "counters":
            return [asdict(t) for t in await traffic.read_counters(self.channel, lay)]
        if op == "held":
            fam = req["family"]
            held = await traffic.read_held(self.channel, lay, fam)
            return [{**asdict(h), "address": socket.inet_ntop(AF[fam], h.address)} for h in held]
        if op == "remove":
            return await self.apply([traffic.remove(lay)])
        raise ValueError(f"unknown op {op!r}")


async def serve() -> None:
    loop = asyncio.get_running_loop()
    channel = netlink.Channel(netlink.NETLINK_NETFILTER)
    channel.attach(loop)
    driver = Driver(channel)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        try:
            reply = {"result": await driver.handle(json.loads(line))}
        except Exception as err:  # noqa: BLE001 - reported to the test, which fails on it
            reply = {"error": f"{type(err).__name__}: {err}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    channel.close()


class TrafficDriver:
    """The test side: `call("counters")` returns the result, or raises on an error reply."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def call(self, op: str, **kw: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"traffic driver exited ({self.proc.poll()}) during {op}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["result"]

    def apply(self, op: str, **kw: Any) -> None:
        """A change that must succeed."""
        code = self.call(op, **kw)
        if code:
            raise RuntimeError(f"{op}: errno {code}")


def now() -> int:
    return int(time.time())


if __name__ == "__main__":
    asyncio.run(serve())
