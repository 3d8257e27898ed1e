"""The Microsoft 365 endpoint web service (https://endpoints.office.com): JSON -> Policy.

Parsing only: the HTTP client lives on the daemon side (``resolver.feed``). One rule per
endpoint set, ``row`` being the set's id and ``category`` its Optimize, Allow or Default.

What the service sends is bounded, since whoever answers for it decides what leaves past head
office's security stack (the policy files an operator writes are trusted, and keep the loader's
rules). Skipped, each with a warning naming its path, like any entry that cannot be used:

- a wildcard (``*.X``, or ``<tenant>.X`` without ``policy.tenant``) over more than one
  registrable domain: ``X`` needs two labels (``*.com`` is skipped, ``*.office.com`` is not),
  three when its last two are a public suffix of their own (``*.co.uk``, ``<tenant>.com.au``).
  There is no Public Suffix List on the machine, so a public two-label suffix is a generic
  second-level label (``co``, ``com``, ``net``, ``org``, ``gov``, ``edu``, ``ac``, ``or``,
  ``ne``, ``go``, ...) under a two-letter country code: co.uk, com.au, co.jp, com.br, com.cn;
- a prefix broader than ``MIN_PREFIX``: an IPv4 prefix shorter than /10 (4 Mi addresses; the
  service's broadest is a /13, and four of its /14s would merge into a /12), an IPv6 prefix
  shorter than /32 (what a registry gives a whole ISP; the service's broadest is a /36).

An endpoint set's id becomes the row of every route made for it, which the hold journal keeps
(``resolver.net.records`` reads a row of at most 10 digits back): an id above ``model.MAX_ROW``
(2**31 - 1; the service's are below 1000) is a structural error, like a missing one.

Skipped rather than refusing the whole download: the other entries and sets are still
Microsoft's and still verified one by one, refusing them would freeze the policy at an old
version, and what is skipped is logged, never used. The first SHOWN_SKIPPED warnings are
given, the others counted in one more: a download of skips costs a few lines, not one each.

What the sets in use carry together is bounded too, each bound far above what Microsoft
publishes: MAX_SETS sets (a traffic class each, with its nft chain and counters), MAX_PREFIXES
prefixes (a route each on every link, which `breakout.max_entries` does not bound) and
MAX_NAMES names. A download past one is refused whole, as a structural error is: which sets
to drop would be a guess, and the policy in use stays.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection

from policy.loader import PolicyError, normalise_cidr, normalise_pattern, normalise_port
from policy.model import MAX_ROW, TENANT_PREFIX, Policy, Rule

_REQUIRED_KEYS = ("id", "serviceArea", "category", "required", "expressRoute")
MIN_PREFIX = {4: 10, 6: 32}  # the shortest prefix length taken from the service, by version
# Several times what Microsoft's worldwide instance carries (about 100 KB in all).
MAX_SETS = 1000
MAX_PREFIXES = 4096
MAX_NAMES = 20_000
SHOWN_SKIPPED = 20  # warnings given per download; the rest are counted in one more
# Second-level labels that make a public suffix under a two-letter country code (co.uk).
PUBLIC_SECOND_LEVEL = frozenset(
    {"ac", "co", "com", "edu", "go", "gob", "gov", "govt", "gv", "ltd", "mil", "ne", "net"}
    | {"nic", "nom", "or", "org", "plc", "sch", "web"}
)


def feed_pattern(text: str, tenant: str | None) -> str:
    """A name or wildcard from the service, normalised; ValueError if it does not parse or
    covers more than one registrable domain."""
    pattern = normalise_pattern(text, tenant)
    for prefix in ("*.", TENANT_PREFIX):
        if pattern.startswith(prefix):
            base = pattern[len(prefix) :]
            labels = base.split(".")
            public = len(labels) == 2 and _public_suffix(labels)
            if len(labels) < 2 or public:
                kind = "a public suffix" if public else "a top-level domain"
                raise ValueError(
                    f"a wildcard over every name in {base!r} ({kind}): broader than a "
                    "registrable domain"
                )
    return pattern


def _public_suffix(labels: list[str]) -> bool:
    second, top = labels
    return len(top) == 2 and top.isalpha() and second in PUBLIC_SECOND_LEVEL


def feed_cidr(text: str) -> str:
    """A prefix from the service, normalised; ValueError if it does not parse or is broader
    than MIN_PREFIX."""
    cidr = normalise_cidr(text)
    network = ipaddress.ip_network(cidr)
    shortest = MIN_PREFIX[network.version]
    if network.prefixlen < shortest:
        raise ValueError(
            f"broader than /{shortest}: an IPv{network.version} prefix from the service "
            f"must be /{shortest} or longer"
        )
    return cidr


class _Skips:
    """The warnings of one download: the first SHOWN_SKIPPED kept, the others counted."""

    def __init__(self) -> None:
        self.shown: list[str] = []
        self.more = 0

    def append(self, warning: str) -> None:
        if len(self.shown) < SHOWN_SKIPPED:
            self.shown.append(warning)
        else:
            self.more += 1

    def given(self, source: str) -> list[str]:
        more = [f"{source}: {self.more} more entries skipped"] if self.more else []
        return self.shown + more


def _over_bounds(rules: list[Rule], source: str) -> list[str]:
    """What the sets in use carry past MAX_SETS, MAX_PREFIXES or MAX_NAMES (each prefix and
    name counted once, however many sets list it), as errors."""
    counts = (
        ("endpoint sets", len(rules), MAX_SETS),
        ("prefixes", len({cidr for rule in rules for cidr in rule.cidrs}), MAX_PREFIXES),
        ("names", len({name for rule in rules for name in rule.patterns}), MAX_NAMES),
    )
    return [
        f"{source}: {count} {what} in the configured categories, more than the {most} taken "
        "from the service (Microsoft publishes far fewer): refused"
        for what, count, most in counts
        if count > most
    ]


def _rule(
    entry: dict[str, object], row: int, where: str, tenant: str | None, warnings: _Skips
) -> Rule:
    """One endpoint set as a rule; names, prefixes and ports that do not parse become warnings."""
    patterns: dict[str, None] = {}
    for index, url in enumerate(_string_list(entry, "urls", where)):
        try:
            patterns.setdefault(feed_pattern(url, tenant), None)
        except ValueError as exc:
            warnings.append(f"{where}/urls/{index}: {url!r}: {exc}; skipped")
    cidrs: dict[str, None] = {}
    for index, ip in enumerate(_string_list(entry, "ips", where)):
        try:
            cidrs.setdefault(feed_cidr(ip), None)
        except ValueError as exc:
            warnings.append(f"{where}/ips/{index}: {ip!r}: {exc}; skipped")
    ports: dict[str, None] = {}
    for key, proto in (("tcpPorts", "tcp"), ("udpPorts", "udp")):
        text = entry.get(key, "")
        if not isinstance(text, str):
            raise ValueError(f"{where}/{key}: expected a string such as '80,443', got {text!r}")
        for part in text.split(","):
            if not part.strip():
                continue
            try:
                ports.setdefault(normalise_port(f"{proto}/{part.strip()}"), None)
            except ValueError as exc:
                warnings.append(f"{where}/{key}: {part.strip()!r}: {exc}; skipped")
    notes = entry.get("notes", "")
    return Rule(
        row=row,
        purpose=str(entry.get("serviceAreaDisplayName") or entry["serviceArea"]),
        required=entry["required"] is True,
        patterns=tuple(patterns),
        cidrs=tuple(cidrs),
        ports=tuple(ports),
        expressroute=entry["expressRoute"] is True,
        category=str(entry["category"]),
        notes=notes if isinstance(notes, str) else "",
    )


def _string_list(entry: dict[str, object], key: str, where: str) -> list[str]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{where}/{key}: expected a list of strings")
    return value


def _check(entry: dict[str, object], where: str) -> list[str]:
    """The structural problems of one endpoint set (missing keys, wrong types)."""
    errors = [f"{where}: missing key {key!r}" for key in _REQUIRED_KEYS if key not in entry]
    for key in ("required", "expressRoute"):
        if key in entry and not isinstance(entry[key], bool):
            errors.append(f"{where}/{key}: expected true or false, got {entry[key]!r}")
    for key in ("serviceArea", "category"):
        if key in entry and not isinstance(entry[key], str):
            errors.append(f"{where}/{key}: expected a string, got {entry[key]!r}")
    return errors


def policy_from_endpoints_json(
    data: object,
    version: str,
    categories: Collection[str],
    *,
    source: str = "endpoints",
    tenant: str | None = None,
    warnings: list[str] | None = None,
) -> Policy:
    """A policy from the service's endpoint sets whose category is in ``categories``.

    Structural problems (not a list, missing keys, wrong types, ids repeated or above
    ``MAX_ROW``) raise PolicyError listing all of them, each as ``<source>: /<index>/<key>:
    ...``. A name, prefix or port that does not parse, or is broader than the bounds above, is
    skipped with a message appended to ``warnings`` (the first SHOWN_SKIPPED, then one line
    counting the others). More than MAX_SETS sets in use, MAX_PREFIXES prefixes or MAX_NAMES
    names is a structural problem too. ``<tenant>`` in a name becomes ``tenant``
    when one is given (``<tenant>-my.sharepoint.com`` -> ``contoso-my.sharepoint.com``); without
    one ``<tenant>.sharepoint.com`` stays a one-label wildcard and ``<tenant>-my.sharepoint.com``,
    which no label wildcard can express, is skipped with a warning.
    """
    skips = _Skips()
    if not isinstance(data, list):
        raise PolicyError([f"{source}: /: expected a list of endpoint sets"])
    errors: list[str] = []
    rules: list[Rule] = []
    seen: set[int] = set()
    for index, entry in enumerate(data):
        where = f"{source}: /{index}"
        if not isinstance(entry, dict):
            errors.append(f"{where}: expected an object, got {type(entry).__name__}")
            continue
        problems = _check(entry, where)
        set_id = entry.get("id")
        if "id" in entry and not _is_positive_int(set_id):
            problems.append(f"{where}/id: expected a positive integer, got {set_id!r}")
        elif isinstance(set_id, int) and set_id > MAX_ROW:
            problems.append(
                f"{where}/id: {set_id} is out of range 1-{MAX_ROW} (an id becomes the row "
                "the hold journal keeps for its routes)"
            )
        elif set_id in seen:
            problems.append(f"{where}/id: duplicate id {set_id}")
        if problems or not isinstance(set_id, int):
            errors.extend(problems)
            continue
        seen.add(set_id)
        if entry["category"] not in categories:
            continue
        try:
            rules.append(_rule(entry, set_id, where, tenant, skips))
        except ValueError as exc:
            errors.append(str(exc))
    if warnings is not None:
        warnings.extend(skips.given(source))
    errors = errors or _over_bounds(rules, source)
    if errors:
        raise PolicyError(errors)
    return Policy(rules=tuple(rules), source=source, version=version)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
