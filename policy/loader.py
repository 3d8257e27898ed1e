"""Policy files (YAML) -> Policy.

Validation reports every problem at once, each as ``<file>:<line>: <JSON pointer>: <message>``,
for example ``extra.yaml:7: /rules/3/domains/0: '*.': empty label``. The ``load_*`` functions
raise nothing but ``PolicyError`` for bad input; the ``normalise_*`` helpers raise ValueError.

Names follow one grammar, shared with ``policy.endpoints``: lower-case A-labels (IDN labels are
converted with Python's ``idna`` codec), no trailing dot, labels of letters, digits and hyphens
of at most 63 octets, at most 253 octets in all. A pattern may start with ``*.`` (one or more
labels) or with ``<tenant>.`` (exactly one label: Microsoft's placeholder for the tenant name).
``with_tenant`` turns the ``<tenant>.`` patterns into the configured tenant's exact names.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import pkgutil
from collections.abc import Sequence

import yaml

from policy.model import MAX_ROW, TENANT, TENANT_PREFIX, Policy, Rule
from policy.yamldoc import Document, DocumentError, compose, pointer, read_text

BUILTINS = ("microsoft365",)
CATEGORIES = ("Optimize", "Allow", "Default")
PROTOCOLS = ("tcp", "udp")

_RULE_KEYS = (
    "row",
    "purpose",
    "required",
    "expressroute",
    "domains",
    "cidrs",
    "ports",
    "category",
    "notes",
)
_RULE_REQUIRED = frozenset({"row", "purpose", "required"})
_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_HOSTNAME_CHARS = _LDH | {"_"}


class PolicyError(DocumentError):
    """A policy that cannot be used; ``errors`` lists every problem, one line each."""


# --- names, prefixes and ports ---------------------------------------------------------------


def normalise_pattern(text: str, tenant: str | None = None) -> str:
    """Return the canonical form of a policy name or wildcard; ValueError says what is wrong.

    With ``tenant`` (a valid label) every ``<tenant>`` is replaced by it first, so
    ``<tenant>.onmicrosoft.com`` and ``<tenant>-my.sharepoint.com`` become exact names.
    Without it ``<tenant>.`` is kept as the one-label wildcard it stands for, and ``<tenant>``
    anywhere else (inside a label) is an error: no label wildcard can express it.
    """
    if tenant is not None:
        text = text.replace(TENANT, tenant)
    one_label = text.startswith(TENANT_PREFIX)
    if one_label:
        text = text[len(TENANT_PREFIX) :]
        if not text:
            raise ValueError(f"a wildcard needs a name after {TENANT_PREFIX!r}")
    if TENANT in text:
        raise ValueError(
            f"{TENANT!r} inside a name needs policy.tenant (only a whole first label "
            f"{TENANT_PREFIX!r} is a wildcard)"
        )
    labels = _split(text)
    wildcard = not one_label and labels[0] == "*"
    if wildcard:
        labels = labels[1:]
        if not labels:
            raise ValueError("a wildcard needs a name after '*.'")
    name = ".".join(_a_label(label, _LDH, strict=True) for label in labels)
    if len(name) + (2 if wildcard or one_label else 0) > 253:
        raise ValueError("name longer than 253 octets")
    return ("*." if wildcard else TENANT_PREFIX if one_label else "") + name


def normalise_name(text: str) -> str:
    """Return the canonical form of a query name (no wildcards; ``_`` allowed, as in SRV names)."""
    name = ".".join(_a_label(label, _HOSTNAME_CHARS, strict=False) for label in _split(text))
    if len(name) > 253:
        raise ValueError("name longer than 253 octets")
    return name


def normalise_cidr(text: str) -> str:
    """Return the compressed form of an IPv4 or IPv6 prefix; host bits must be zero."""
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError as exc:
        raise ValueError(str(exc)) from None


def normalise_port(text: str) -> str:
    """Return ``proto/N`` or ``proto/N-M`` (tcp or udp, 1-65535, N <= M)."""
    proto, slash, span = text.strip().lower().partition("/")
    if not slash or proto not in PROTOCOLS:
        raise ValueError("expected tcp/N, udp/N or a range such as udp/3478-3481")
    first, dash, last = span.partition("-")
    low = _port_number(first)
    if not dash:
        return f"{proto}/{low}"
    high = _port_number(last)
    if high < low:
        raise ValueError(f"range {low}-{high} is reversed")
    return f"{proto}/{low}-{high}"


def _port_number(text: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"{text!r} is not a port number")
    number = int(text)
    if not 1 <= number <= 65535:
        raise ValueError(f"port {number} is outside 1-65535")
    return number


def _split(text: str) -> list[str]:
    if not text:
        raise ValueError("empty name")
    labels = text.split(".")
    if len(labels) > 1 and labels[-1] == "" and labels[-2] not in ("", "*"):
        labels.pop()  # one trailing dot: a fully qualified name
    return labels


def _a_label(label: str, allowed: frozenset[str], strict: bool) -> str:
    if not label:
        raise ValueError("empty label")
    if "*" in label:
        raise ValueError("'*' is only allowed as the whole first label")
    if label.isascii():
        label = label.lower()
    else:
        try:
            label = label.encode("idna").decode("ascii")
        except UnicodeError as exc:
            reason = exc.__cause__ or exc
            raise ValueError(f"label {label!r} is not a valid IDN label: {reason}") from None
    if len(label) > 63:
        raise ValueError(f"label {label!r} is longer than 63 octets")
    for char in label:
        if char not in allowed:
            raise ValueError(f"invalid character {char!r}")
    if strict and (label.startswith("-") or label.endswith("-")):
        raise ValueError(f"label {label!r} starts or ends with a hyphen")
    return label


# --- YAML ----------------------------------------------------------------------------------


def _parse_rule(
    doc: Document, node: yaml.Node, path: str, tenant: str | None
) -> tuple[int | None, Rule | None]:
    """The rule's row number (if readable) and the rule (if it has no errors)."""
    fields = doc.mapping(node, path, _RULE_KEYS, _RULE_REQUIRED)
    if fields is None:
        return None, None
    before = doc.error_count
    row = purpose = required = None
    if "row" in fields:
        row = doc.integer(fields["row"], pointer(path, "row"))
        if row is not None and row > MAX_ROW:
            doc.error(
                fields["row"], pointer(path, "row"),
                f"{row} is out of range 1-{MAX_ROW} (the hold journal keeps the row of a route)",
            )  # fmt: skip
            row = None
    if "purpose" in fields:
        purpose = doc.string(fields["purpose"], pointer(path, "purpose"))
    if "required" in fields:
        required = doc.boolean(fields["required"], pointer(path, "required"))
    expressroute = None
    if "expressroute" in fields:
        expressroute = doc.boolean(fields["expressroute"], pointer(path, "expressroute"), True)
    category = None
    if "category" in fields:
        cat_path = pointer(path, "category")
        category = doc.string(fields["category"], cat_path, nullable=True)
        if category is not None and category not in CATEGORIES:
            known = ", ".join(CATEGORIES)
            doc.error(fields["category"], cat_path, f"expected one of {known}, got {category!r}")
    notes = None
    if "notes" in fields:
        notes = doc.string(fields["notes"], pointer(path, "notes"), nullable=True)
    lists: dict[str, tuple[str, ...]] = {}
    for key, normalise in (
        ("domains", functools.partial(normalise_pattern, tenant=tenant)),
        ("cidrs", normalise_cidr),
        ("ports", normalise_port),
    ):
        if key in fields:
            lists[key] = doc.strings(fields[key], pointer(path, key), normalise)
    if doc.error_count > before or row is None or purpose is None or required is None:
        return row, None
    return row, Rule(
        row=row,
        purpose=purpose.strip(),
        required=required,
        patterns=lists.get("domains", ()),
        cidrs=lists.get("cidrs", ()),
        ports=lists.get("ports", ()),
        expressroute=expressroute,
        category=category,
        notes=(notes or "").strip(),
    )


def load_policy_text(text: str, source: str, tenant: str | None = None) -> Policy:
    """Parse and check one policy document; ``source`` names it in errors and in the Policy.

    With ``tenant``, ``<tenant>`` in names becomes it (see ``normalise_pattern``)."""
    try:
        root = compose(text, source)
    except DocumentError as exc:
        raise PolicyError(exc.errors) from None
    if root is None:
        raise PolicyError([f"{source}:1: /: empty document, expected a mapping with 'rules'"])
    doc = Document(source)
    top = doc.mapping(root, "", ("version", "rules"), ("rules",))
    version = None
    rules: list[Rule] = []
    if top is not None and "version" in top:
        version = doc.string(top["version"], "/version")
    if top is not None and "rules" in top:
        first_line: dict[int, int] = {}
        for item, path in doc.items(top["rules"], "/rules"):
            row, rule = _parse_rule(doc, item, path, tenant)
            if row is not None and row in first_line:
                doc.error(item, path, f"duplicate row {row} (first at line {first_line[row]})")
            elif row is not None:
                first_line[row] = item.start_mark.line + 1
            if rule is not None:
                rules.append(rule)
    if doc.error_count:
        raise PolicyError(doc.errors)
    return Policy(rules=tuple(rules), source=source, version=version or "")


def load_policy_file(path: str | os.PathLike[str], tenant: str | None = None) -> Policy:
    """Read and check one policy file (``tenant`` as for ``load_policy_text``)."""
    name = os.fspath(path)
    try:
        text = read_text(name)
    except DocumentError as exc:
        raise PolicyError(exc.errors) from None
    policy = load_policy_text(text, name, tenant)
    return Policy(rules=policy.rules, source=name, version=policy.version, files=(name,))


@functools.lru_cache(maxsize=len(BUILTINS))
def builtin_policy(name: str = "microsoft365") -> Policy:
    """The policy shipped in this package under ``name`` (see BUILTINS)."""
    if name not in BUILTINS:
        raise PolicyError([f"unknown builtin policy {name!r} (known: {', '.join(BUILTINS)})"])
    # pkgutil, not importlib.resources: the same file through the package's loader, without
    # the 0.9 MiB of modules (tempfile, zipfile, ...) importlib.resources brings into the daemon.
    try:
        data = pkgutil.get_data("policy", f"{name}.yaml")
        if data is None:  # a package without a loader that reads files (a namespace package)
            raise OSError("the policy package cannot read files")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:  # a damaged install: a policy error, no crash
        raise PolicyError([f"builtin policy {name!r}: {exc}"]) from None
    policy = load_policy_text(text, f"policy/{name}.yaml")
    return Policy(rules=policy.rules, source=f"builtin:{name}", version=policy.version)


def merge_policies(policies: Sequence[Policy], include_optional: bool = True) -> Policy:
    """One policy with the rules of all, in order; optional rules dropped unless included."""
    rules = tuple(
        rule for policy in policies for rule in policy.rules if include_optional or rule.required
    )
    return Policy(
        rules=rules,
        source="+".join(policy.source for policy in policies) or "none",
        version="+".join(policy.version for policy in policies if policy.version),
        files=tuple(name for policy in policies for name in policy.files),
    )


def with_tenant(policy: Policy, tenant: str | None) -> Policy:
    """``policy`` with its ``<tenant>.`` patterns made ``tenant``'s exact names (None: as is).

    Raises PolicyError if a name would become invalid (too long) with this tenant.
    """
    if tenant is None:
        return policy
    rules: list[Rule] = []
    errors: list[str] = []
    for rule in policy.rules:
        if not any(pattern.startswith(TENANT_PREFIX) for pattern in rule.patterns):
            rules.append(rule)
            continue
        patterns: dict[str, None] = {}
        for pattern in rule.patterns:
            try:
                patterns.setdefault(normalise_pattern(pattern, tenant), None)
            except ValueError as exc:
                errors.append(
                    f"{policy.source}: row {rule.row}: {pattern!r} with policy.tenant "
                    f"{tenant!r}: {exc}"
                )
        rules.append(dataclasses.replace(rule, patterns=tuple(patterns)))
    if errors:
        raise PolicyError(errors)
    return dataclasses.replace(policy, rules=tuple(rules))


def load_policy(
    builtin: str | None,
    files: Sequence[str],
    include_optional: bool,
    tenant: str | None = None,
) -> Policy:
    """The builtin policy (if any) then each file, merged; every file's errors are reported.

    With ``tenant``, ``<tenant>`` in the files' names becomes it (inside a label too, as in
    ``<tenant>-my.sharepoint.com``), and so do the built-in table's ``<tenant>.`` patterns.
    """
    policies: list[Policy] = []
    errors: list[str] = []
    if builtin is not None:
        try:
            policies.append(builtin_policy(builtin))
        except PolicyError as exc:
            errors.extend(exc.errors)
    for path in files:
        try:
            policies.append(load_policy_file(path, tenant))
        except PolicyError as exc:
            errors.extend(exc.errors)
    if errors:
        raise PolicyError(errors)
    return with_tenant(merge_policies(policies, include_optional), tenant)
