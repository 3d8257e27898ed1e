"""Shared by every tier: `async def test_...` functions run on a fresh event loop.

No pytest plugin is needed: the hook below runs a coroutine test with `asyncio.run` under a
time limit, so a hung test fails instead of stalling the suite. Unit tests use it as much as
the integration and namespace tiers do.
"""

from __future__ import annotations

import asyncio
import inspect

import pytest

TEST_TIME_LIMIT = 60.0


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    asyncio.run(asyncio.wait_for(pyfuncitem.obj(**kwargs), TEST_TIME_LIMIT))
    return True
