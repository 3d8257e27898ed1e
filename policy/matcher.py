"""Which rule, if any, covers a DNS name.

A trie keyed by labels from the right (``com`` -> ``office`` -> ``manage``). Each node holds the
winning exact match, the winning one-label wildcard match and the winning wildcard match for its
name, settled when the trie is built, so a lookup walks the name's labels once whatever the
number of rules.

Two kinds of wildcard: ``*.office.com`` covers names one or more labels below ``office.com``;
``<tenant>.onmicrosoft.com`` (Microsoft's tenant placeholder, when no tenant is configured)
covers names exactly one label below ``onmicrosoft.com``. Neither covers its base name itself.

Precedence: an exact name beats every wildcard; a longer wildcard (more labels after the ``*.``
or ``<tenant>.``) beats a shorter one; between wildcards of the same base a one-label wildcard
beats ``*.``, being the narrower of the two (so a one-label wildcard, whose base is always the
name minus its first label, beats every ``*.`` that covers the name: ``contoso.onmicrosoft.com``
is row 3's ``<tenant>.onmicrosoft.com``, not row 10's ``*.onmicrosoft.com``, while
``a.b.onmicrosoft.com`` is only row 10's); between equals a required rule beats an optional one,
then the lower row number, then the earlier rule.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable

from policy.model import TENANT_PREFIX, Match, Rule


class _Node:
    """The rules for one name: children by next label; the best exact match, the best
    one-label wildcard (``<tenant>.``) and the best wildcard (``*.``) match."""

    __slots__ = ("children", "exact", "one", "wild")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.exact: Match | None = None
        self.one: Match | None = None
        self.wild: Match | None = None


_EXACT, _WILD, _ONE = "exact", "*.", TENANT_PREFIX  # the kinds of pattern


def _rank(rule: Rule) -> tuple[bool, int]:
    """Orders rules that share a pattern: required first, then the lower row."""
    return (not rule.required, rule.row)


class Matcher:
    """Match names against rules; build once, share freely (lookups do not change it)."""

    __slots__ = ("_root", "rules")

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)
        self._root = _Node()
        # The build makes hundreds of thousands of small objects for a large policy; pausing
        # the cyclic collector meanwhile more than halves the time (the trie holds no cycles).
        collecting = gc.isenabled()
        gc.disable()
        try:
            for rule in self.rules:
                rank = _rank(rule)
                for pattern in rule.patterns:
                    self._add(rule, rank, pattern)
        finally:
            if collecting:
                gc.enable()

    def _add(self, rule: Rule, rank: tuple[bool, int], pattern: str) -> None:
        """Put ``pattern`` in the trie unless an earlier rule of equal or better rank has it."""
        name = pattern.lower().rstrip(".")
        kind = _EXACT
        if name.startswith("*."):
            kind, name = _WILD, name[2:]
        elif name.startswith(TENANT_PREFIX):
            kind, name = _ONE, name[len(TENANT_PREFIX) :]
        node = self._root
        for label in reversed(name.split(".")):
            children = node.children
            child = children.get(label)
            if child is None:
                child = children[label] = _Node()
            node = child
        old = node.exact if kind is _EXACT else node.wild if kind is _WILD else node.one
        if old is not None and _rank(old.rule) <= rank:
            return
        if kind is _EXACT:
            node.exact = Match(rule, pattern)
        elif kind is _WILD:
            node.wild = Match(rule, pattern)
        else:
            node.one = Match(rule, pattern)

    def __len__(self) -> int:
        """The number of rules given, including those without names."""
        return len(self.rules)

    def match(self, name: str) -> Match | None:
        """The winning rule for ``name`` (any case, trailing dot or not), or None. A name
        with an escaped byte (``\\DDD``: a dot or a space inside a label, ...) is no host name
        and matches nothing."""
        if "\\" in name:
            return None
        labels = name.lower().rstrip(".").split(".")
        first = labels.pop(0)
        node = self._root
        best = None
        for label in reversed(labels):  # down to the name's parent
            if node.wild is not None:
                best = node.wild  # a label remains below this node, so its wildcard applies
            child = node.children.get(label)
            if child is None:
                return best
            node = child
        if node.wild is not None:
            best = node.wild
        if node.one is not None:
            best = node.one  # exactly one label below: narrower than every `*.` that applies
        child = node.children.get(first)
        if child is not None and child.exact is not None:
            return child.exact
        return best

    def match_any(self, names: Iterable[str]) -> tuple[str, Match] | None:
        """The first of ``names`` (in order) that matches, with its match; or None."""
        for name in names:
            found = self.match(name)
            if found is not None:
                return name, found
        return None
