"""Runs a `Breakout` inside a namespace and takes commands as JSON lines (library-level tests).

    python -m tests.netns.driver        (inside the router namespace, stdin/stdout pipes)

Each request is one JSON object with "op"; each reply one JSON object ("error" on failure):

    {"op": "start", "breakout": {...config keys...}, "state_dir": "...", "policy": YAML|null,
     "sweep_interval": 1.0}
    {"op": "answer", "name": "x.office.com", "qname": null, "addresses": [...], "ttl": 60}
        -> {"waited": bool, "ms": float, "matched": bool}
    {"op": "status"} {"op": "routes"} {"op": "flush"} {"op": "sweep"} {"op": "stop"}
    {"op": "reconfigure", "breakout": {...}, "policy": YAML|null}
    {"op": "cleanup", "breakout": {...}, "state_dir": "..."}

`DriverProcess` is the test side.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from typing import Any

from policy.loader import builtin_policy, load_policy_text
from policy.matcher import Matcher
from policy.model import Policy
from resolver.config import BreakoutConfig, parse_config
from resolver.hooks import Tagged, pack_addresses
from resolver.hooks import wait as settled
from resolver.net.breakout import Breakout
from resolver.net.cleanup import cleanup


def breakout_config(data: dict[str, Any]) -> BreakoutConfig:
    return parse_config({"upstreams": ["192.0.2.53"], "breakout": data}).breakout


def load(policy_yaml: str | None) -> tuple[Policy, Matcher]:
    policy = builtin_policy() if policy_yaml is None else load_policy_text(policy_yaml, "test")
    return policy, Matcher(policy.rules)


log = logging.getLogger("driver")


class Driver:
    def __init__(self) -> None:
        self.breakout: Breakout | None = None
        self.matcher: Matcher | None = None

    async def handle(self, req: dict[str, Any]) -> Any:
        op = req["op"]
        if op == "start":
            policy, self.matcher = load(req.get("policy"))
            self.breakout = Breakout(
                breakout_config(req["breakout"]), req["state_dir"], self.matcher, policy,
                sweep_interval=req.get("sweep_interval", 1.0),
            )  # fmt: skip
            await self.breakout.start()
            return self.breakout.status()
        if op == "cleanup":
            return await cleanup(breakout_config(req["breakout"]), req["state_dir"])
        b = self.breakout
        assert b is not None and self.matcher is not None, "start first"
        if op == "answer":
            match = self.matcher.match(req["name"])
            if match is None:
                return {"matched": False, "waited": False, "ms": 0.0}
            addresses = pack_addresses(req["addresses"])
            t = Tagged(req.get("qname") or req["name"], req["name"], match, addresses)
            t0 = time.perf_counter()
            wait = b.on_answer(t, req.get("ttl", 60))
            if wait is not None:
                await settled(wait)
            return {
                "matched": True,
                "waited": wait is not None,
                "ms": (time.perf_counter() - t0) * 1e3,
            }
        if op == "status":
            return b.status()
        if op == "routes":
            return b.routes()
        if op == "flush":
            return await b.flush()
        if op == "sweep":
            return b.sweep()
        if op == "stop":
            await b.stop()
            return True
        if op == "reconfigure":
            policy, self.matcher = load(req.get("policy"))
            await b.reconfigure(breakout_config(req["breakout"]), self.matcher, policy)
            return b.status()
        raise ValueError(f"unknown op {op!r}")


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    driver = Driver()
    while line := await reader.readline():
        try:
            reply = {"result": await driver.handle(json.loads(line))}
        except Exception as err:  # reported to the test, which fails on it
            log.exception("driver request failed")
            reply = {"error": f"{type(err).__name__}: {err}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


class DriverError(RuntimeError):
    pass


class DriverProcess:
    """The test side: `call("answer", name=..., addresses=[...])` returns the result."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def call(self, op: str, **kw: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise DriverError(f"driver exited ({self.proc.poll()}) during {op}")
        reply = json.loads(line)
        if "error" in reply:
            raise DriverError(reply["error"])
        return reply["result"]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=5)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="driver %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(serve())
