"""Which rule, if any, covers a DNS name.

A trie keyed by labels from the right (``com`` -> ``office`` -> ``manage``). Each node holds the
winning exact match and the winning wildcard match for its name, settled when the trie is built,
so a lookup walks the name's labels once whatever the number of rules.

Precedence: an exact name beats every wildcard; a longer wildcard beats a shorter one; between
equals a required rule beats an optional one, then the lower row number, then the earlier rule.
``*.office.com`` covers names one or more labels below ``office.com``, never ``office.com``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable

from policy.model import Match, Rule


class _Node:
    """The rules for one name: children by next label, the best exact and wildcard match."""

    __slots__ = ("children", "exact", "wild")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.exact: Match | None = None
        self.wild: Match | None = None


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
        wildcard = name.startswith("*.")
        if wildcard:
            name = name[2:]
        node = self._root
        for label in reversed(name.split(".")):
            children = node.children
            child = children.get(label)
            if child is None:
                child = children[label] = _Node()
            node = child
        old = node.wild if wildcard else node.exact
        if old is not None and _rank(old.rule) <= rank:
            return
        if wildcard:
            node.wild = Match(rule, pattern)
        else:
            node.exact = Match(rule, pattern)

    def __len__(self) -> int:
        """The number of rules given, including those without names."""
        return len(self.rules)

    def match(self, name: str) -> Match | None:
        """The winning rule for ``name`` (any case, trailing dot or not), or None."""
        node = self._root
        best = None
        for label in reversed(name.lower().rstrip(".").split(".")):
            if node.wild is not None:
                best = node.wild  # a label remains below this node, so its wildcard applies
            child = node.children.get(label)
            if child is None:
                return best
            node = child
        return node.exact if node.exact is not None else best

    def match_any(self, names: Iterable[str]) -> tuple[str, Match] | None:
        """The first of ``names`` (in order) that matches, with its match; or None."""
        for name in names:
            found = self.match(name)
            if found is not None:
                return name, found
        return None
