"""``resolverctl explain [--config FILE] NAME... [--json]``: which policy rule covers each name.

Works without the daemon: it loads the policy itself, as resolverd would (see policysource):
from ``--config``, else the default config file if there is one, else the built-in table.
The pattern shown is the one the policy holds: ``<tenant>.onmicrosoft.com`` (exactly one label)
without ``policy.tenant``, the tenant's exact name (``contoso.onmicrosoft.com``) with it.
The policy code is imported when the command runs, so other commands do not pay for it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from policy.model import Match


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``explain`` subcommand to ``sub``."""
    parser = sub.add_parser(
        "explain",
        help="show which policy rule covers each name (no daemon needed)",
        description=__doc__,
    )
    parser.add_argument("--config", metavar="FILE", help="take the policy from this config file")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.add_argument("names", nargs="+", metavar="NAME", help="DNS name to look up")
    parser.set_defaults(func=run)


def _text_lines(rows: list[tuple[str, Match | None, str | None]]) -> list[str]:
    """One aligned line per name: name, row, pattern, required/optional, [category,] ports."""
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
    widths: dict[int, int] = {}
    for cells in table:
        for column, cell in enumerate(cells[:-1]):
            widths[column] = max(widths.get(column, 0), len(cell))
    return [
        "  ".join([cell.ljust(widths[i]) for i, cell in enumerate(cells[:-1])] + [cells[-1]])
        for cells in table
    ]


def run(args: argparse.Namespace) -> int:
    """Print the winning rule for each name; 1 if the policy or any name is bad."""
    from policy.loader import PolicyError, normalise_name
    from policy.matcher import Matcher
    from resolver.ctl import policysource

    try:
        policy = policysource.load(args.config)
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
            print(f"explain: {name!r}: invalid name: {exc}", file=sys.stderr)
            rows.append((name, None, str(exc)))
    if args.json:
        out: list[dict[str, object]] = []
        for name, match, problem in rows:
            item: dict[str, object] = {"name": name, "match": match and match.to_json()}
            if problem is not None:
                item["error"] = f"invalid name: {problem}"
            out.append(item)
        print(json.dumps(out, indent=2))
    else:
        for line in _text_lines(rows):
            print(line)
    return 1 if any(problem is not None for _, _, problem in rows) else 0
