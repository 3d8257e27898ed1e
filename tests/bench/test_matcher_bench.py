"""Matcher speed: 100,000 synthetic rules built in under 2 s, lookups under 5 µs on average.

Run by ``make bench`` (``pytest tests/bench -s -m bench``), which shows the printed figures.
"""

from __future__ import annotations

import random
import string
import time

import pytest

from policy.loader import builtin_policy
from policy.matcher import Matcher
from policy.model import Rule

pytestmark = pytest.mark.bench

RULES = 100_000
LOOKUPS = 200_000
TLDS = ("com", "net", "org", "io", "ms", "example")


def label(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(3, 12)))


def synthetic_rules(rng: random.Random) -> tuple[list[Rule], list[str]]:
    """RULES rules of one to three patterns each, half of them wildcards; and their base names."""
    rules: list[Rule] = []
    bases: list[str] = []
    for row in range(1, RULES + 1):
        patterns = []
        for _ in range(rng.randint(1, 3)):
            base = ".".join([label(rng) for _ in range(rng.randint(1, 3))] + [rng.choice(TLDS)])
            bases.append(base)
            patterns.append(f"*.{base}" if rng.random() < 0.5 else base)
        rules.append(
            Rule(row=row, purpose="", required=rng.random() < 0.5, patterns=tuple(patterns))
        )
    return rules, bases


def queries(rng: random.Random, bases: list[str]) -> list[str]:
    """Hits (exact names and names under wildcards) and misses, upper case and FQDN forms too."""
    names: list[str] = []
    for _ in range(LOOKUPS):
        roll = rng.random()
        if roll < 0.35:
            name = rng.choice(bases)
        elif roll < 0.7:
            name = ".".join([label(rng) for _ in range(rng.randint(1, 3))] + [rng.choice(bases)])
        else:
            name = f"{label(rng)}.{label(rng)}.{rng.choice(TLDS)}"
        if rng.random() < 0.1:
            name = name.upper() + "."
        names.append(name)
    return names


def mean_lookup_us(matcher: Matcher, names: list[str]) -> tuple[float, int]:
    match = matcher.match
    hits = 0
    started = time.perf_counter()
    for name in names:
        if match(name) is not None:
            hits += 1
    return (time.perf_counter() - started) / len(names) * 1e6, hits


def test_matcher_100k_rules() -> None:
    rng = random.Random(365)
    rules, bases = synthetic_rules(rng)
    names = queries(rng, bases)

    started = time.perf_counter()
    matcher = Matcher(rules)
    build_s = time.perf_counter() - started
    mean_lookup_us(matcher, names[:10_000])  # warm up
    lookup_us, hits = mean_lookup_us(matcher, names)

    seed = Matcher(builtin_policy().rules)
    seed_bases = [p.removeprefix("*.") for r in seed.rules for p in r.patterns]
    seed_us, seed_hits = mean_lookup_us(seed, queries(rng, seed_bases))
    print(
        f"\nmatcher: {len(rules):,} rules ({len(bases):,} patterns) built in {build_s:.3f} s; "
        f"{len(names):,} lookups ({hits:,} hits) mean {lookup_us:.2f} µs; "
        f"built-in table (16 rules): mean {seed_us:.2f} µs ({seed_hits:,} hits)"
    )
    assert len(matcher) == RULES
    assert 0.3 * LOOKUPS < hits < 0.9 * LOOKUPS  # the mix really has hits and misses
    assert build_s < 2.0
    assert lookup_us < 5.0
    assert seed_us < 5.0
