"""Tagging: the step between an answer and the breakout hook.

An answer is tagged when its query name or a name on its CNAME chain matches the policy (the
first one that does, in chain order); the tag carries the rule, that name and the chain's
addresses. Tagging runs once per answer fetched from upstream, and again for every cached
answer when a reload changes the policy; a cache hit reuses the tag it was stored with.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from policy.model import Match
from resolver.dns.cache import Chain
from resolver.hooks import Tagged


class NameMatcher(Protocol):
    """What the DNS side needs of the policy (policy.matcher.Matcher provides it)."""

    def match(self, name: str) -> Match | None: ...

    def match_any(self, names: Iterable[str]) -> tuple[str, Match] | None: ...


def tag(chain: Chain, matcher: NameMatcher) -> Tagged | None:
    """The tag of an answer with this chain, or None when no name on it matches."""
    found = matcher.match_any(chain.names)  # escaped names (no host names) match nothing
    if found is None:
        return None
    return Tagged(chain.names[0], found[0], found[1], chain.addresses)
