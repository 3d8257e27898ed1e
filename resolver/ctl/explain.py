"""``resolverctl explain [--config FILE] [--client ADDRESS [--iif NAME]] NAME... [--json]``: which
policy rule covers each name.

Works without the daemon: it loads the policy itself, as resolverd would (see policysource):
from ``--config``, else the default config file if there is one, else the built-in table.
The pattern shown is the one the policy holds: ``<tenant>.onmicrosoft.com`` (exactly one label)
without ``policy.tenant``, the tenant's exact name (``contoso.onmicrosoft.com``) with it.
The policy code is imported when the command runs, so other commands do not pay for it.
With ``--client`` it also says whether that client is in the breakout's scope
(``breakout.clients``, ``client_interfaces``: resolver/scope.py), as ``in_scope`` in JSON; the
interface a client comes in on is known only from ``--iif``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from resolver.ctl.printable import printable

if TYPE_CHECKING:
    from policy.model import Match
    from resolver.config import Config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``explain`` subcommand to ``sub``."""
    parser = sub.add_parser(
        "explain",
        help="show which policy rule covers each name (no daemon needed)",
        description=__doc__,
    )
    parser.add_argument("--config", metavar="FILE", help="take the policy from this config file")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.add_argument(
        "--client", metavar="ADDRESS", help="also say whether this client is in the breakout scope"
    )
    parser.add_argument(
        "--iif", metavar="NAME", help="the interface the client's packets come in on"
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help="DNS name to look up")
    parser.set_defaults(func=run)


def upstream_set(name: str, match: Match | None, config: Config | None) -> str:
    """Where the daemon sends a query for `name`: ``zone:NAME`` (the longest forward zone
    holding it), ``breakout`` (a policy name, with breakout.resolvers set, while a breakout
    link is usable; else the default upstreams) or ``default``."""
    if config is None:
        return "default"
    from resolver.dns.zones import Zones  # pure: no sockets, no asyncio

    zone = Zones(config.forward_zones).find(name)
    if zone is not None:
        return f"zone:{zone}"
    if match is not None and config.breakout.resolvers:
        return "breakout"
    return "default"


def _text_lines(
    rows: list[tuple[str, Match | None, str | None]], upstreams: list[str] | None = None
) -> list[str]:
    """One aligned line per name: name, row, pattern, required/optional, [category,] ports,
    [the upstream set, when the config forwards anything but to the default upstreams]."""
    categories = any(match is not None and match.rule.category for _, match, _ in rows)
    table: list[list[str]] = []
    for name, match, problem in rows:
        if problem is not None:
            table.append([name, f"invalid name: {problem}"])
        elif match is None:
            table.append([name, "no match"])
        else:
            rule = match.rule
            cells = [name, f"row {rule.row}", match.pattern]
            cells.append("required" if rule.required else "optional")
            if categories:
                cells.append(rule.category or "-")
            cells.append(",".join(rule.ports) or "-")
            table.append(cells)
    if upstreams is not None:
        width = max(len(cells) for cells in table)
        for cells, upstream in zip(table, upstreams, strict=True):
            cells.extend([""] * (width - len(cells)))
            cells.append(f"upstream: {upstream}")
    widths: dict[int, int] = {}
    for cells in table:
        for column, cell in enumerate(cells[:-1]):
            widths[column] = max(widths.get(column, 0), len(cell))
    return [
        printable(
            "  ".join([cell.ljust(widths[i]) for i, cell in enumerate(cells[:-1])] + [cells[-1]])
        )
        for cells in table
    ]


def run(args: argparse.Namespace) -> int:
    """Print the winning rule for each name; 1 if the policy or any name is bad."""
    from policy.loader import PolicyError, normalise_name
    from policy.matcher import Matcher
    from resolver.ctl import policysource

    try:
        policy, config = policysource.load_with_config(args.config)
    except PolicyError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        print("explain: cannot load the policy", file=sys.stderr)
        return 1
    matcher = Matcher(policy.rules)
    rows: list[tuple[str, Match | None, str | None]] = []
    for name in args.names:
        try:
            rows.append((name, matcher.match(normalise_name(name)), None))
        except ValueError as exc:
            print(f"explain: {name!r}: invalid name: {printable(str(exc))}", file=sys.stderr)
            rows.append((name, None, str(exc)))
    upstreams = [upstream_set(name, match, config) for name, match, _ in rows]
    in_scope = None
    if args.client is not None:
        from resolver.clients import client_ip
        from resolver.scope import Scope

        if client_ip(args.client) is None:
            print(f"explain: {printable(args.client)!r} is not an address", file=sys.stderr)
            return 1
        breakout = config.breakout if config is not None else None
        scope = Scope(breakout.clients, breakout.client_interfaces) if breakout else Scope((), ())
        in_scope = scope.contains(args.client, args.iif)
    # Only a config that forwards elsewhere than the default upstreams has anything to say.
    split = config is not None and bool(config.forward_zones or config.breakout.resolvers)
    if args.json:
        out: list[dict[str, object]] = []
        for (name, match, problem), upstream in zip(rows, upstreams, strict=True):
            item: dict[str, object] = {"name": name, "match": match and match.to_json()}
            if split:
                item["upstream"] = upstream
            if in_scope is not None:
                item["in_scope"] = in_scope
            if problem is not None:
                item["error"] = f"invalid name: {problem}"
            out.append(item)
        print(json.dumps(out, indent=2))
    else:
        for line in _text_lines(rows, upstreams if split else None):
            print(line)
        if in_scope is not None:
            where = f" on {args.iif}" if args.iif else ""
            verdict = "in" if in_scope else "outside"
            print(printable(f"client {args.client}{where}: {verdict} the breakout scope"))
    return 1 if any(problem is not None for _, _, problem in rows) else 0
