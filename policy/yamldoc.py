"""YAML checked node by node: every problem at once, each with its line and its path.

The one validator of the project: policy files (policy.loader) and the daemon's config
(resolver.config) both read their documents through `Document`, so both report errors alike:

    extra.yaml:7: /rules/3/domains/0: '*.': empty label
    /etc/resolverd/resolverd.yaml:12: /breakout/table: expected an integer, got 'x'

A document given as Python data rather than text (tests, built-in defaults) has no lines: its
errors read ``/path: message``. Pointers follow RFC 6901 (``~0``, ``~1``).

Two ways to read a mapping: by hand, with `Document.mapping` and the typed getters (the policy
loader does this), or declaratively, with `read_section` on a frozen dataclass whose fields
carry a `check` (a converter that raises ValueError or TypeError with the message) in their
metadata: the dataclass then owns its keys, its defaults and its ranges in one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_RESOLVER = yaml.resolver.Resolver()  # to tell explicit tags (refused) from implicit ones


class _Invalid:
    """A value whose problem has been reported already."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()


class DocumentError(Exception):
    """Every problem of a document, one formatted line each (``errors``)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def pointer(path: str, key: str | int) -> str:
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def kind(node: yaml.Node) -> str:
    """How a node reads in a message: a mapping, a list, 'text', 3, true, null."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == "tag:yaml.org,2002:str":
        return repr(node.value)
    if node.tag == "tag:yaml.org,2002:null":
        return "null"
    return str(node.value)  # as written: 3, true, 2024-01-01


def compose(text: str, source: str) -> yaml.Node | None:
    """The node tree of `text`; a syntax error raises DocumentError with its line."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        if isinstance(exc, yaml.reader.ReaderError):
            line = text.count("\n", 0, exc.position) + 1
            problem = str(exc).splitlines()[0]
        else:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            line = mark.line + 1 if mark is not None else 1
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DocumentError([f"{source}:{line}: invalid YAML: {problem}"]) from None


def read_text(path: str) -> str:
    """A file's text; DocumentError (one line) when it cannot be read or is not UTF-8."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise DocumentError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise DocumentError([f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})"]) from None


def node_of(data: Any) -> yaml.Node | None:
    """Python data as a node tree (for documents built in code): no lines to report."""
    return yaml.compose(yaml.safe_dump(data), Loader=yaml.SafeLoader)


class Document:
    """One document being checked: where it came from and the problems found so far.

    ``source`` names the file in every error; empty for data built in code, whose errors then
    carry neither file nor line.
    """

    def __init__(self, source: str = "") -> None:
        self.source = source
        self._found: list[tuple[int, str]] = []
        self._paths: list[str] = []
        self._constructor = yaml.constructor.SafeConstructor()

    def error(self, node: yaml.Node | None, path: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        where = path or "/"
        text = f"{self.source}:{line}: {where}: {message}" if self.source else f"{where}: {message}"
        self._found.append((line, text))
        self._paths.append(where)

    def has_error(self, path: str) -> bool:
        """Whether a problem was reported at `path` or below it."""
        return any(p == path or p.startswith(path + "/") for p in self._paths)

    @property
    def errors(self) -> list[str]:
        """Every error so far, in the order of the lines they point at."""
        return [message for _, message in sorted(self._found, key=lambda found: found[0])]

    @property
    def error_count(self) -> int:
        return len(self._found)

    # -- scalars ----------------------------------------------------------------------------

    def scalar(self, node: yaml.Node, path: str) -> Any:
        """The value of a scalar node (INVALID if reported); a list or mapping: the node."""
        if not isinstance(node, yaml.ScalarNode):
            return node
        if node.tag == _MERGE_TAG:
            self.error(node, path, "merge keys ('<<') are not supported")
            return INVALID
        implicit = (node.style is None, node.style is not None)
        if node.tag != _RESOLVER.resolve(yaml.ScalarNode, node.value, implicit):  # type: ignore[no-untyped-call]
            self.error(node, path, f"unsupported tag {node.tag!r}")
            return INVALID
        try:
            return self._constructor.construct_object(node)
        except (yaml.YAMLError, ValueError) as exc:
            self.error(node, path, f"cannot read value: {getattr(exc, 'problem', exc)}")
            return INVALID

    def value(self, node: yaml.Node, path: str) -> Any:
        """A scalar's value, or a list or mapping as plain Python data (INVALID if reported)."""
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        try:
            return self._constructor.construct_document(node)
        except (yaml.YAMLError, ValueError) as exc:
            self.error(node, path, f"cannot read value: {getattr(exc, 'problem', exc)}")
            return INVALID

    def convert(self, node: yaml.Node, path: str, check: Callable[[Any], T]) -> T:
        """`check(value)`; its ValueError or TypeError is reported here (INVALID returned)."""
        value = self.value(node, path)
        if value is INVALID:
            return INVALID  # type: ignore[no-any-return]
        try:
            return check(value)
        except (TypeError, ValueError) as exc:
            self.error(node, path, str(exc))
            return INVALID  # type: ignore[no-any-return]

    def string(self, node: yaml.Node, path: str, nullable: bool = False) -> str | None:
        value = self.scalar(node, path)
        if isinstance(value, str) or (nullable and value is None):
            return value
        if value is not INVALID:
            self.error(node, path, f"expected a string, got {kind(node)}")
        return None

    def integer(self, node: yaml.Node, path: str) -> int | None:
        value = self.scalar(node, path)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        if value is not INVALID:
            self.error(node, path, f"expected a positive integer, got {kind(node)}")
        return None

    def boolean(self, node: yaml.Node, path: str, nullable: bool = False) -> bool | None:
        value = self.scalar(node, path)
        if isinstance(value, bool) or (nullable and value is None):
            return value
        if value is not INVALID:
            self.error(node, path, f"expected true or false, got {kind(node)}")
        return None

    # -- collections ------------------------------------------------------------------------

    def mapping(
        self, node: yaml.Node, path: str, keys: Sequence[str], required: Collection[str] = ()
    ) -> dict[str, yaml.Node] | None:
        """The known keys' value nodes; unknown, duplicate and missing keys are reported."""
        pairs = self.pairs(node, path)
        if pairs is None:
            return None
        found: dict[str, yaml.Node] = {}
        for key, key_node, value_node in pairs:
            if key not in keys:
                known = ", ".join(keys)
                self.error(key_node, pointer(path, key), f"unknown key (known: {known})")
            else:
                found[key] = value_node
        for key in keys:
            if key in required and key not in found:
                self.error(node, path, f"missing key {key!r}")
        return found

    def pairs(self, node: yaml.Node, path: str) -> list[tuple[str, yaml.Node, yaml.Node]] | None:
        """(key, key node, value node) of a mapping with string keys, duplicates reported."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path, f"expected a mapping, got {kind(node)}")
            return None
        if node.tag != _MAP_TAG:
            self.error(node, path, f"unsupported tag {node.tag!r}")
            return None
        out: list[tuple[str, yaml.Node, yaml.Node]] = []
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = self.scalar(key_node, path)
            if key is INVALID:
                continue
            if not isinstance(key, str):
                self.error(key_node, path, f"keys must be strings, got {kind(key_node)}")
            elif key in seen:
                self.error(key_node, pointer(path, key), "duplicate key")
            else:
                seen.add(key)
                out.append((key, key_node, value_node))
        return out

    def items(self, node: yaml.Node, path: str) -> list[tuple[yaml.Node, str]]:
        """The items of a list with their paths; null counts as an empty list."""
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                self.error(node, path, f"unsupported tag {node.tag!r}")
                return []
            return [(item, pointer(path, i)) for i, item in enumerate(node.value)]
        if self.scalar(node, path) not in (None, INVALID):
            self.error(node, path, f"expected a list, got {kind(node)}")
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


# -- declarative sections ------------------------------------------------------------------------


def check(convert: Callable[[Any], Any], default: Any, null: Any = dataclasses.MISSING) -> Any:
    """A dataclass field read by `read_section`: `convert(value)` checks and converts it. A
    null value means the default, or `null` when given."""
    meta: dict[str, Any] = {"check": convert}
    if null is not dataclasses.MISSING:
        meta["null"] = null
    return dataclasses.field(default=default, metadata=meta)


def each(convert: Callable[[Any], Any], default: tuple[Any, ...] = ()) -> Any:
    """A field holding a list: `convert` checks each item (errors name the item's path)."""
    return dataclasses.field(default=default, metadata={"each": convert})


def table(key: Callable[[Any], Any], convert: Callable[[Any], Any]) -> Any:
    """A field holding a mapping of checked keys to values, default empty."""
    return dataclasses.field(default_factory=dict, metadata={"table": (key, convert)})


def section(cls: type[Any], default: Any = dataclasses.MISSING) -> Any:
    """A field holding a nested section (its own dataclass); absent: `default`, else the
    section with all its defaults."""
    if default is dataclasses.MISSING:
        return dataclasses.field(default_factory=cls, metadata={"section": cls})
    return dataclasses.field(default=default, metadata={"section": cls})


def sections(cls: type[Any]) -> Any:
    """A field holding a list of sections of dataclass `cls`, default empty."""
    return dataclasses.field(default=(), metadata={"sections": cls})


def is_null(doc: Document, node: yaml.Node, path: str) -> bool:
    return isinstance(node, yaml.ScalarNode) and doc.scalar(node, path) is None


def read_section(doc: Document, node: yaml.Node | None, path: str, cls: type[T]) -> T:
    """An instance of dataclass `cls` from a mapping node. Its keys are the fields that carry
    `check`, `each`, `table`, `section` or `sections` metadata; an absent or null key takes the
    field's default, and so does a key whose value was reported as wrong (so that the checks
    across keys can still run: look at `doc.error_count` before using the result)."""
    if node is None or is_null(doc, node, path):
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata}  # type: ignore[arg-type]
    found = doc.mapping(node, path, list(fields)) or {}
    values: dict[str, Any] = {}
    for key, value_node in found.items():
        where = pointer(path, key)
        meta = fields[key].metadata
        if is_null(doc, value_node, where):
            if "null" in meta:
                values[key] = meta["null"]
            continue
        value = read_field(doc, value_node, where, meta)
        if value is not INVALID:
            values[key] = value
    return cls(**values)


def read_field(doc: Document, node: yaml.Node, path: str, meta: Mapping[str, Any]) -> Any:
    if "check" in meta:
        return doc.convert(node, path, meta["check"])
    if "section" in meta:
        return read_section(doc, node, path, meta["section"])
    if "each" in meta:
        items = [doc.convert(item, where, meta["each"]) for item, where in doc.items(node, path)]
        return tuple(item for item in items if item is not INVALID)
    if "sections" in meta:
        cls = meta["sections"]
        return tuple(read_section(doc, item, where, cls) for item, where in doc.items(node, path))
    key_check, convert = meta["table"]
    out = {}
    for key, key_node, value_node in doc.pairs(node, path) or []:
        where = pointer(path, key)
        name = doc.convert(key_node, where, key_check)
        if name is not INVALID:
            out[name] = read_field(doc, value_node, where, {"each": convert})
    return out
