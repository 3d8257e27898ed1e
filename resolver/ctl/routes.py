"""``resolverctl routes [--json]``: the host routes resolverd learnt from DNS answers.

The table has one line per address: address, family, seed row, hold left and the names the
address was handed out for. ``--json`` prints the daemon's list of
``{address, family, names, row, hold_s}`` objects as is.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from resolver.ctl import client
from resolver.ctl.status import format_duration, text

HEADER = ("ADDRESS", "FAMILY", "ROW", "HOLD", "NAMES")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("routes", help="list the routes learnt from DNS", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the list as JSON")
    parser.add_argument("--config", metavar="FILE", help="find the socket from this config")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    routes = client.request(args, "routes")
    if args.json:
        client.print_json(routes)
    else:
        print(render_routes(routes), end="")
    return client.EXIT_OK


def _family(value: Any) -> str:
    return {4: "ipv4", 6: "ipv6", "inet": "ipv4", "inet6": "ipv6"}.get(value, text(value))


def _row(route: Mapping[str, Any]) -> tuple[str, ...]:
    names = route.get("names")
    return (
        text(route.get("address")),
        _family(route.get("family")),
        text(route.get("row")),
        format_duration(route.get("hold_s")),
        ",".join(str(n) for n in names) if isinstance(names, list) and names else text(names),
    )


def render_routes(routes: Any) -> str:
    """An aligned table and a count line; the last column (names) is not padded."""
    rows = [_row(r) for r in routes if isinstance(r, Mapping)] if isinstance(routes, list) else []
    widths = [max(len(cells[i]) for cells in [HEADER, *rows]) for i in range(len(HEADER) - 1)]
    lines = [
        "  ".join([cell.ljust(widths[i]) for i, cell in enumerate(cells[:-1])] + [cells[-1]])
        for cells in [HEADER, *rows]
    ]
    v4 = sum(1 for cells in rows if cells[1] == "ipv4")
    v6 = sum(1 for cells in rows if cells[1] == "ipv6")
    noun = "route" if len(rows) == 1 else "routes"
    lines.append(f"\n{len(rows)} {noun} ({v4} IPv4, {v6} IPv6)")
    return "\n".join(lines) + "\n"
