"""``resolverctl flush [--json]``: remove every route, rule and set entry resolverd owns.

The policy's prefixes go too; the next reload or restart puts them back. Needs root or
membership of the control socket's group.
"""

from __future__ import annotations

import argparse

from resolver.ctl import client
from resolver.ctl.blocks import mapping_pairs, render_blocks


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "flush", help="remove every route and set entry resolverd owns", description=__doc__
    )
    parser.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    parser.add_argument("--config", metavar="FILE", help="find the socket from this config")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = client.request(args, "flush", client.ADMIN_TIMEOUT)
    if args.json:
        client.print_json(result)
    else:
        pairs = mapping_pairs(result) if isinstance(result, dict) else []
        print(render_blocks([("Flushed", pairs)]), end="")
    return client.EXIT_OK
