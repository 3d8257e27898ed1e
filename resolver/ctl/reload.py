"""``resolverctl reload [--json]``: make the daemon re-read its config and policy.

Returns once the reload has finished (the daemon answers when it is done), so it can serve as
systemd's ExecReload. A config that fails validation changes nothing: the daemon keeps running
with the old one, and this command prints why and exits 1.
"""

from __future__ import annotations

import argparse

from resolver.ctl import client
from resolver.ctl.blocks import mapping_pairs, render_blocks


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("reload", help="re-read the config and policy", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    parser.add_argument("--config", metavar="FILE", help="find the socket from this config")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # A ReloadFailed answer raises client.RemoteError: main prints "reload failed: ..." and
    # exits 1.
    result = client.request(args, "reload", client.ADMIN_TIMEOUT)
    if args.json:
        client.print_json(result)
    else:
        pairs = mapping_pairs(result) if isinstance(result, dict) else []
        print(render_blocks([("Reloaded", pairs)]), end="")
    return client.EXIT_OK
