"""What a Microsoft 365 policy is: rules, matches and the policy as a whole.

Pure data: no I/O, no sockets. Everything is frozen so a loaded policy can be shared by the
resolver's hot path and swapped atomically on reload.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Microsoft's placeholder for the tenant name; a pattern "<tenant>.rest" is a one-label wildcard.
TENANT = "<tenant>"
TENANT_PREFIX = TENANT + "."
# The largest row: a route's row is kept in the hold journal, whose reader takes at most 10
# digits (resolver.net.records).
MAX_ROW = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the endpoint table (or one endpoint set from the web service).

    ``patterns`` are lower-case A-label names without a trailing dot. A pattern that starts
    with ``*.`` is a wildcard: it matches one or more labels below the rest, never the rest
    itself. A pattern that starts with ``<tenant>.`` (Microsoft's placeholder for the tenant
    name, kept as written when no tenant is configured) matches exactly one label below the
    rest: ``<tenant>.onmicrosoft.com`` covers ``contoso.onmicrosoft.com``, not
    ``a.b.onmicrosoft.com``. ``ports`` look like ``tcp/443`` or ``udp/3478-3481``.
    """

    row: int
    purpose: str
    required: bool
    patterns: tuple[str, ...] = ()
    cidrs: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    expressroute: bool | None = None
    # Optimize, Allow or Default for rules from the web service; None for seed rows.
    category: str | None = None
    notes: str = ""


@dataclass(frozen=True, slots=True)
class Match:
    """The rule that won for a name, and the pattern of that rule that matched."""

    rule: Rule
    pattern: str

    def to_json(self) -> dict[str, object]:
        return {
            "row": self.rule.row,
            "pattern": self.pattern,
            "required": self.rule.required,
            "category": self.rule.category,
            "ports": list(self.rule.ports),
        }


@dataclass(frozen=True, slots=True)
class Policy:
    """A loaded policy: its rules in load order, where they came from and their version."""

    rules: tuple[Rule, ...]
    source: str = "builtin:microsoft365"
    version: str = ""
    files: tuple[str, ...] = field(default=())

    @property
    def cidrs(self) -> tuple[str, ...]:
        """Every prefix of every rule, in rule order, without duplicates."""
        seen: dict[str, None] = {}
        for rule in self.rules:
            for cidr in rule.cidrs:
                seen.setdefault(cidr, None)
        return tuple(seen)
