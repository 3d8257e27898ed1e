"""``resolverctl routes [--json]``: the host routes resolverd learnt from DNS answers.

The table has one line per address: address, family, seed row, hold left and the names the
address was handed out for. ``--json`` prints the daemon's list of
``{address, family, names, row, hold_s, installed}`` objects as it sent them: compact, on one
line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from resolver.ctl import client
from resolver.ctl.blocks import format_bytes, format_duration, text

HEADER = ("ADDRESS", "FAMILY", "ROW", "HOLD", "NAMES")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("routes", help="list the routes learnt from DNS", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the list as JSON")
    parser.add_argument("--config", metavar="FILE", help="find the socket from this config")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.json:
        # As the daemon sent it (compact, one line): parsing and re-indenting 30,000 routes
        # would take longer than everything else together.
        raw = client.request_raw(args, "routes")
        sys.stdout.buffer.write(raw if isinstance(raw, bytes) else json.dumps(raw).encode())
        sys.stdout.buffer.write(b"\n")
        return client.EXIT_OK
    print(render_routes(client.request(args, "routes")), end="")
    return client.EXIT_OK


def _family(value: Any) -> str:
    return {4: "ipv4", 6: "ipv6", "inet": "ipv4", "inet6": "ipv6"}.get(value, text(value))


def _row(route: Mapping[str, Any], counted: bool) -> tuple[str, ...]:
    names = route.get("names")
    return (
        text(route.get("address")),
        _family(route.get("family")),
        text(route.get("row")),
        format_duration(route.get("hold_s")),
        *((format_bytes(route.get("bytes")),) if counted else ()),
        ",".join(text(n) for n in names) if isinstance(names, list) and names else text(names),
    )


def render_routes(routes: Any) -> str:
    """An aligned table and a count line; the last column (names) is not padded. BYTES (sent
    to the address through a breakout link) when the daemon counts them."""
    found = [r for r in routes if isinstance(r, Mapping)] if isinstance(routes, list) else []
    counted = any("bytes" in r for r in found)
    header = (*HEADER[:4], "BYTES", HEADER[4]) if counted else HEADER
    rows = [_row(r, counted) for r in found]
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header) - 1)]
    lines = [
        "  ".join([cell.ljust(widths[i]) for i, cell in enumerate(cells[:-1])] + [cells[-1]])
        for cells in [header, *rows]
    ]
    v4 = sum(1 for cells in rows if cells[1] == "ipv4")
    v6 = sum(1 for cells in rows if cells[1] == "ipv6")
    noun = "route" if len(rows) == 1 else "routes"
    lines.append(f"\n{len(rows)} {noun} ({v4} IPv4, {v6} IPv6)")
    return "\n".join(lines) + "\n"
