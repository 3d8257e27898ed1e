"""resolverctl: inspect and drive resolverd. One module per command; stdlib only.

Exit codes: 0 ok, 1 error, 3 daemon not running. JSON goes to stdout, warnings to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys

from resolver.ctl import client, explain, flush, monitor, policy, reload, routes, status
from resolver.ctl.printable import printable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resolverctl", description=__doc__)
    parser.add_argument("--socket", help="control socket (default: from the config, then built-in)")
    # dest differs from the commands' own --config, whose default would overwrite this one.
    parser.add_argument(
        "--config",
        dest="global_config",
        metavar="FILE",
        help="config file, for the socket and the policy (default: /etc/resolverd/resolverd.yaml "
        "if it exists)",
    )
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="how long to wait for the daemon"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (status, routes, flush, reload, monitor, policy, explain):
        module.register(sub)
    return parser


def main(
    argv: list[str] | None = None,
    *,
    defaults: client.Defaults | None = None,
    call_line: client.CallLine | None = None,
) -> int:
    """resolverctl; `defaults` (the default config and socket) and `call_line` (how a request
    reaches the daemon) are the installed ones unless a test hands in its own."""
    args = build_parser().parse_args(argv)
    args.defaults, args.call_line = defaults, call_line
    if getattr(args, "config", None) is None:
        args.config = args.global_config
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except client.CtlError as exc:
        print("\n".join(printable(line) for line in f"resolverctl: {exc}".split("\n")),
              file=sys.stderr)  # fmt: skip
        return exc.code
    except BrokenPipeError:
        # The reader went away (resolverctl routes | head): stop quietly, as cat would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return client.EXIT_ERROR
    return code


if __name__ == "__main__":
    sys.exit(main())
