"""Policy files (YAML) -> Policy.

Validation reports every problem at once, each as ``<file>:<line>: <JSON pointer>: <message>``,
for example ``extra.yaml:7: /rules/3/domains/0: '*.': empty label``. The ``load_*`` functions
raise nothing but ``PolicyError`` for bad input; the ``normalise_*`` helpers raise ValueError.

Names follow one grammar, shared with ``policy.endpoints``: lower-case A-labels (IDN labels are
converted with Python's ``idna`` codec), no trailing dot, labels of letters, digits and hyphens
of at most 63 octets, at most 253 octets in all. A pattern may start with ``*.`` (one or more
labels); ``<tenant>.`` is read as ``*.``.
"""

from __future__ import annotations

import functools
import importlib.resources
import ipaddress
import os
from collections.abc import Callable, Collection, Sequence

import yaml

from policy.model import Policy, Rule

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
_TENANT = "<tenant>."
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_INVALID = object()  # a scalar whose problem has been reported already
_RESOLVER = yaml.resolver.Resolver()  # to tell explicit tags (refused) from implicit ones


class PolicyError(Exception):
    """A policy that cannot be used; ``errors`` lists every problem, one line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


# --- names, prefixes and ports ---------------------------------------------------------------


def normalise_pattern(text: str) -> str:
    """Return the canonical form of a policy name or wildcard; ValueError says what is wrong."""
    if text.startswith(_TENANT):
        text = "*." + text[len(_TENANT) :]
    labels = _split(text)
    wildcard = labels[0] == "*"
    if wildcard:
        labels = labels[1:]
        if not labels:
            raise ValueError("a wildcard needs a name after '*.'")
    name = ".".join(_a_label(label, _LDH, strict=True) for label in labels)
    pattern = "*." + name if wildcard else name
    if len(pattern) > 253:
        raise ValueError("name longer than 253 octets")
    return pattern


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


def _pointer(path: str, key: str | int) -> str:
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == "tag:yaml.org,2002:str":
        return repr(node.value)
    if node.tag == "tag:yaml.org,2002:null":
        return "null"
    return str(node.value)  # as written: 3, true, 2024-01-01


class _Document:
    """One YAML document being checked: its source name and the errors found so far."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._found: list[tuple[int, str]] = []
        self._constructor = yaml.constructor.SafeConstructor()

    def error(self, node: yaml.Node, path: str, message: str) -> None:
        line = node.start_mark.line + 1
        self._found.append((line, f"{self.source}:{line}: {path or '/'}: {message}"))

    @property
    def errors(self) -> list[str]:
        """Every error so far, in the order of the lines they point at."""
        return [message for _, message in sorted(self._found, key=lambda found: found[0])]

    @property
    def error_count(self) -> int:
        return len(self._found)

    def scalar(self, node: yaml.Node, path: str) -> object:
        """The value of a scalar node (_INVALID if reported); a list or mapping: the node."""
        if not isinstance(node, yaml.ScalarNode):
            return node
        if node.tag == _MERGE_TAG:
            self.error(node, path, "merge keys ('<<') are not supported")
            return _INVALID
        implicit = (node.style is None, node.style is not None)
        if node.tag != _RESOLVER.resolve(yaml.ScalarNode, node.value, implicit):  # type: ignore[no-untyped-call]
            self.error(node, path, f"unsupported tag {node.tag!r}")
            return _INVALID
        try:
            return self._constructor.construct_object(node)
        except (yaml.YAMLError, ValueError) as exc:
            self.error(node, path, f"cannot read value: {getattr(exc, 'problem', exc)}")
            return _INVALID

    def mapping(
        self, node: yaml.Node, path: str, keys: Sequence[str], required: Collection[str]
    ) -> dict[str, yaml.Node] | None:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path, f"expected a mapping, got {_kind(node)}")
            return None
        if node.tag != _MAP_TAG:
            self.error(node, path, f"unsupported tag {node.tag!r}")
            return None
        found: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, path)
            if key is _INVALID:
                continue
            if not isinstance(key, str):
                self.error(key_node, path, f"keys must be strings, got {_kind(key_node)}")
            elif key in found:
                self.error(key_node, _pointer(path, key), "duplicate key")
            elif key not in keys:
                known = ", ".join(keys)
                self.error(key_node, _pointer(path, key), f"unknown key (known: {known})")
            else:
                found[key] = value_node
        for key in keys:
            if key in required and key not in found:
                self.error(node, path, f"missing key {key!r}")
        return found

    def string(self, node: yaml.Node, path: str, nullable: bool = False) -> str | None:
        value = self.scalar(node, path)
        if isinstance(value, str) or (nullable and value is None):
            return value
        if value is not _INVALID:
            self.error(node, path, f"expected a string, got {_kind(node)}")
        return None

    def integer(self, node: yaml.Node, path: str) -> int | None:
        value = self.scalar(node, path)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        if value is not _INVALID:
            self.error(node, path, f"expected a positive integer, got {_kind(node)}")
        return None

    def boolean(self, node: yaml.Node, path: str, nullable: bool = False) -> bool | None:
        value = self.scalar(node, path)
        if isinstance(value, bool) or (nullable and value is None):
            return value
        if value is not _INVALID:
            self.error(node, path, f"expected true or false, got {_kind(node)}")
        return None

    def items(self, node: yaml.Node, path: str) -> list[tuple[yaml.Node, str]]:
        """The items of a list with their paths; null counts as an empty list."""
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                self.error(node, path, f"unsupported tag {node.tag!r}")
                return []
            return [(item, _pointer(path, i)) for i, item in enumerate(node.value)]
        if self.scalar(node, path) not in (None, _INVALID):
            self.error(node, path, f"expected a list, got {_kind(node)}")
        return []

    def strings(
        self, node: yaml.Node, path: str, normalise: Callable[[str], str]
    ) -> tuple[str, ...]:
        """A list of strings, each normalised; duplicates after normalising appear once."""
        out: dict[str, None] = {}
        for item, item_path in self.items(node, path):
            text = self.string(item, item_path)
            if text is None:
                continue
            try:
                out.setdefault(normalise(text), None)
            except ValueError as exc:
                self.error(item, item_path, f"{text!r}: {exc}")
        return tuple(out)


def _parse_rule(doc: _Document, node: yaml.Node, path: str) -> tuple[int | None, Rule | None]:
    """The rule's row number (if readable) and the rule (if it has no errors)."""
    fields = doc.mapping(node, path, _RULE_KEYS, _RULE_REQUIRED)
    if fields is None:
        return None, None
    before = doc.error_count
    row = purpose = required = None
    if "row" in fields:
        row = doc.integer(fields["row"], _pointer(path, "row"))
    if "purpose" in fields:
        purpose = doc.string(fields["purpose"], _pointer(path, "purpose"))
    if "required" in fields:
        required = doc.boolean(fields["required"], _pointer(path, "required"))
    expressroute = None
    if "expressroute" in fields:
        expressroute = doc.boolean(fields["expressroute"], _pointer(path, "expressroute"), True)
    category = None
    if "category" in fields:
        cat_path = _pointer(path, "category")
        category = doc.string(fields["category"], cat_path, nullable=True)
        if category is not None and category not in CATEGORIES:
            known = ", ".join(CATEGORIES)
            doc.error(fields["category"], cat_path, f"expected one of {known}, got {category!r}")
    notes = None
    if "notes" in fields:
        notes = doc.string(fields["notes"], _pointer(path, "notes"), nullable=True)
    lists: dict[str, tuple[str, ...]] = {}
    for key, normalise in (
        ("domains", normalise_pattern),
        ("cidrs", normalise_cidr),
        ("ports", normalise_port),
    ):
        if key in fields:
            lists[key] = doc.strings(fields[key], _pointer(path, key), normalise)
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


def _yaml_error(source: str, text: str, exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        problem = str(exc).splitlines()[0]
    else:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{source}:{line}: invalid YAML: {problem}"


def load_policy_text(text: str, source: str) -> Policy:
    """Parse and check one policy document; ``source`` names it in errors and in the Policy."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise PolicyError([_yaml_error(source, text, exc)]) from None
    if root is None:
        raise PolicyError([f"{source}:1: /: empty document, expected a mapping with 'rules'"])
    doc = _Document(source)
    top = doc.mapping(root, "", ("version", "rules"), ("rules",))
    version = None
    rules: list[Rule] = []
    if top is not None and "version" in top:
        version = doc.string(top["version"], "/version")
    if top is not None and "rules" in top:
        first_line: dict[int, int] = {}
        for item, path in doc.items(top["rules"], "/rules"):
            row, rule = _parse_rule(doc, item, path)
            if row is not None and row in first_line:
                doc.error(item, path, f"duplicate row {row} (first at line {first_line[row]})")
            elif row is not None:
                first_line[row] = item.start_mark.line + 1
            if rule is not None:
                rules.append(rule)
    if doc.error_count:
        raise PolicyError(doc.errors)
    return Policy(rules=tuple(rules), source=source, version=version or "")


def load_policy_file(path: str | os.PathLike[str]) -> Policy:
    """Read and check one policy file."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise PolicyError([f"{name}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise PolicyError([f"{name}: not UTF-8 text (byte {exc.start}: {exc.reason})"]) from None
    policy = load_policy_text(text, name)
    return Policy(rules=policy.rules, source=name, version=policy.version, files=(name,))


@functools.lru_cache(maxsize=len(BUILTINS))
def builtin_policy(name: str = "microsoft365") -> Policy:
    """The policy shipped in this package under ``name`` (see BUILTINS)."""
    if name not in BUILTINS:
        raise PolicyError([f"unknown builtin policy {name!r} (known: {', '.join(BUILTINS)})"])
    resource = importlib.resources.files("policy").joinpath(f"{name}.yaml")
    policy = load_policy_text(resource.read_text(encoding="utf-8"), f"policy/{name}.yaml")
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


def load_policy(builtin: str | None, files: Sequence[str], include_optional: bool) -> Policy:
    """The builtin policy (if any) then each file, merged; every file's errors are reported."""
    policies: list[Policy] = []
    errors: list[str] = []
    if builtin is not None:
        try:
            policies.append(builtin_policy(builtin))
        except PolicyError as exc:
            errors.extend(exc.errors)
    for path in files:
        try:
            policies.append(load_policy_file(path))
        except PolicyError as exc:
            errors.extend(exc.errors)
    if errors:
        raise PolicyError(errors)
    return merge_policies(policies, include_optional)
