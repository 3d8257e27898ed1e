"""What resolverctl's commands print: ``Key: value`` blocks (resolvectl's style), and the
scalars, durations and byte counts in them, never with a control character in them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from resolver.ctl.printable import printable

Block = tuple[str, list[tuple[str, str]]]


def format_duration(seconds: Any) -> str:
    """systemd's style: ``1d 2h 3min 4s``; ``-`` for anything that is not a number."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        return "-"
    left = int(seconds)
    if left == 0:
        return f"{seconds:.1f}s" if 0 < seconds < 1 else "0s"
    parts = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return " ".join(parts)


def format_bytes(value: Any) -> str:
    """``1.5 MB``-style (powers of 1000), for counters; ``-`` for anything not a count."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return "-"
    amount = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if amount < 1000 or unit == "TB":
            return f"{value} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    return "-"


def text(value: Any) -> str:
    """A scalar as text: ``-`` for None, yes/no for booleans, lists comma-separated; never a
    control character (see `printable`)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(text(item) for item in value) or "-"
    return printable(str(value))


def label(key: str) -> str:
    """``cidr_routes`` -> ``Cidr routes``: the label for a field this module does not know."""
    return key.replace("_", " ").capitalize()


def render_blocks(blocks: Sequence[Block]) -> str:
    """Titled blocks of ``Key: value`` lines, keys right-aligned within each block."""
    out: list[str] = []
    for title, pairs in blocks:
        if out:
            out.append("")
        out.append(printable(title))
        width = max((len(key) for key, _ in pairs), default=0)
        out.extend(f"{printable(key).rjust(width + 2)}: {printable(value)}" for key, value in pairs)
    return "\n".join(out) + "\n"


def mapping_pairs(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """A result object as ``Key: value`` pairs; nested objects one level deep."""
    pairs: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix} {key.replace('_', ' ')}" if prefix else label(key)
        if isinstance(value, Mapping) and not prefix:
            pairs.extend(mapping_pairs(value, name))
        elif isinstance(value, Mapping):
            pairs.append((name, ", ".join(f"{k}={text(v)}" for k, v in value.items()) or "-"))
        else:
            pairs.append((name, text(value)))
    return pairs
