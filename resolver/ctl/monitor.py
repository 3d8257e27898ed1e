"""``resolverctl monitor [--json] [--client PREFIX] [--name SUFFIX] [--tagged]``: every query
resolverd answers, as it answers it, until interrupted (resolvectl monitor, for resolverd).

One line per answered query: time, client, name, type, result (rcode) and where the answer came
from: an upstream's host:port, ``cache``, or ``local`` (canaries, refusals and the errors
resolverd gives itself). A Microsoft 365 answer adds the policy row, the name on its CNAME chain
that matched (via) and the rule's pattern, its addresses, those whose route or set entry was
programmed for this answer (installed), and how long the reply waited for the kernel.

``--json`` prints the daemon's events as they come, one JSON object per line:
``{time, client, name, type, rcode, source, row, via, pattern, addresses, installed,
waited_ms}``; a line ``{"dropped": N}`` says that N events were lost because this monitor read
too slowly (the text form says so on stderr).

Filters: ``--client`` an address or a prefix; ``--name`` a name and every name below it (the
query name, or the name on the chain that matched); ``--tagged`` Microsoft 365 answers only.
Needs root or membership of the control socket's group: it shows who asked for what. Ctrl-C
ends it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from resolver.control.monitor import Filter
from resolver.ctl import client
from resolver.ctl.blocks import text

# Columns: title, starting width, widest a column grows to fit its values (beyond: that line only).
COLUMNS = (
    ("TIME", 12, 12),
    ("CLIENT", 15, 39),
    ("NAME", 32, 60),
    ("TYPE", 5, 6),
    ("RCODE", 8, 8),
    ("SOURCE", 15, 47),
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "monitor",
        help="show the queries as they are answered",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--client", metavar="PREFIX", help="only this address or prefix")
    parser.add_argument("--name", metavar="SUFFIX", help="only this name and names below it")
    parser.add_argument("--tagged", action="store_true", help="only Microsoft 365 answers")
    parser.add_argument("--config", metavar="FILE", help="find the socket from this config")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        spec = Filter.from_args({"client": args.client, "name": args.name, "tagged": args.tagged})
    except ValueError as exc:
        raise client.CtlError(f"monitor: {exc}") from None
    view = None if args.json else Table()
    try:
        for item in client.stream(args, "monitor", spec.to_args()):
            if view is None:
                sys.stdout.write(json.dumps(item, separators=(",", ":")) + "\n")
                sys.stdout.flush()
            else:
                _show(view, item)
    except KeyboardInterrupt:
        return client.EXIT_OK
    except BrokenPipeError:
        # The reader went away (resolverctl monitor | head): that ends the monitor, quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return client.EXIT_OK
    return client.EXIT_OK


def _show(view: Table, item: Any) -> None:
    if not isinstance(item, Mapping):
        return
    dropped = item.get("dropped")
    if "name" not in item and isinstance(dropped, int):
        client.warn(f"{dropped} events dropped: this monitor read too slowly")
        return
    out = view.render(item)
    sys.stdout.write(out)
    sys.stdout.flush()


def clock(value: Any) -> str:
    """A Unix time as local ``HH:MM:SS.mmm``; ``-`` for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(value)) + f".{int(value * 1000) % 1000:03d}"


def details(event: Mapping[str, Any]) -> str:
    """The tail of a tagged answer's line: ``row=2 via=... pattern=... addresses=...
    installed=... waited=1.25ms``, and ``scope=out`` when the client is outside the breakout's
    scope; empty for an untagged one."""
    if event.get("row") is None:
        return ""
    waited = event.get("waited_ms")
    ms = f"{waited:.2f}ms" if isinstance(waited, int | float) else "-"
    pairs = [
        ("row", text(event.get("row"))),
        ("via", text(event.get("via"))),
        ("pattern", text(event.get("pattern"))),
        ("addresses", _addresses(event.get("addresses"))),
        ("installed", _addresses(event.get("installed"))),
        ("waited", ms),
    ]
    if event.get("in_scope") is False:
        pairs.append(("scope", "out"))  # the client's traffic stays in the tunnel
    return " ".join(f"{key}={value}" for key, value in pairs)


def _addresses(value: Any) -> str:
    if not isinstance(value, list):
        return text(value)
    return ",".join(text(a) for a in value) or "-"


class Table:
    """Aligned lines under a header; a column widens (up to its limit) when a value needs it,
    and the header is printed again then."""

    def __init__(self) -> None:
        self.widths = [width for _, width, _ in COLUMNS]
        self.headed = False

    def header(self) -> str:
        return "  ".join(t.ljust(w) for (t, _, _), w in zip(COLUMNS, self.widths, strict=True))

    def render(self, event: Mapping[str, Any]) -> str:
        """The line for one event, after the header when it is new or the widths changed."""
        cells = [
            clock(event.get("time")),
            text(event.get("client")),
            text(event.get("name")) or ".",
            text(event.get("type")),
            text(event.get("rcode")),
            text(event.get("source")),
        ]
        grown = False
        for i, cell in enumerate(cells):
            want = min(len(cell), COLUMNS[i][2])
            if want > self.widths[i]:
                self.widths[i] = want
                grown = True
        tail = details(event)
        padded = [cell.ljust(w) for cell, w in zip(cells, self.widths, strict=True)]
        line = "  ".join([*padded, tail] if tail else padded).rstrip() + "\n"
        if grown or not self.headed:
            self.headed = True
            return self.header().rstrip() + "\n" + line
        return line
