"""Shared by every tier: the plugins that run the tests, and the fixtures every tier may use.

`async def test_...` functions run under pytest-asyncio (`asyncio_mode = "auto"` in
pyproject.toml), each on a fresh event loop of asyncio's own (no loop policy is set: a test
that wants uvloop makes the loop itself). pytest-timeout fails a test that runs longer than the
`timeout` in pyproject.toml, sync or async, so that a hung test fails instead of stalling the
suite. The namespace tier, whose scenarios take up to a minute on their own (tests/netns/
test_crash.py), gets TIER_LIMITS' longer default; the tiers that run long by design (fuzz, bench,
soak, package) have no default limit. A test that sets `@pytest.mark.timeout(...)` keeps its own.

The owners' fixtures (tests/owners.py: the breakout's owners over an in-memory kernel) and the
log fixtures (tests/logfixtures.py: the root logger given back, the daemon's log on a buffer)
are registered here, for any tier.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.owners", "tests.logfixtures"]

# Seconds a test of the tier may take when not the `timeout` of pyproject.toml (0: no limit).
TIER_LIMITS = {"netns": 300, "fuzz": 0, "bench": 0, "soak": 0, "package": 0}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is not None:
            continue
        limits = [s for tier, s in TIER_LIMITS.items() if item.get_closest_marker(tier)]
        if limits:
            item.add_marker(pytest.mark.timeout(0 if 0 in limits else max(limits)))
