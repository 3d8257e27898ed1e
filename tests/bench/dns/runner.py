"""A stand-alone resolverd DNS core for the benchmark: DnsServer + NullHook + no policy.

    python -m tests.bench.dns.runner --config bench.yaml

Runs under uvloop when it is installed (as resolverd does), prints "ready" once it listens,
stops on SIGTERM/SIGINT. The benchmark prefers `python -m resolver.daemon`; this runner is
its fallback when the daemon cannot start here (and a way to profile the DNS core alone).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Iterable

from policy.model import Match
from resolver.config import load_config
from resolver.dns.hook import NullHook
from resolver.dns.server import DnsServer


class NoPolicy:
    def match_any(self, names: Iterable[str]) -> tuple[str, Match] | None:
        return None


async def serve(path: str) -> None:
    config = load_config(path)
    server = DnsServer(config, NoPolicy(), NullHook())
    await server.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print(server.status(), file=sys.stderr, flush=True)
    await server.stop(1.0)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.install()
    asyncio.run(serve(args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
