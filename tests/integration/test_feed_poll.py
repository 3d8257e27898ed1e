"""resolverd's endpoint poll loop (Daemon._poll_endpoints) outlives any error: a failure it
did not foresee is logged with its traceback once, shown as the feed's last_error, and the loop
goes on to the next check (woken here as a reload that changes policy.endpoints wakes it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from policy.matcher import Matcher
from policy.model import Policy
from resolver.config import Config, EndpointsConfig, PolicyConfig
from resolver.daemon import Daemon, Loaded

pytestmark = pytest.mark.integration


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_the_poll_loop_outlives_an_unexpected_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    endpoints = EndpointsConfig(url="https://127.0.0.1:9", poll_interval=600)
    config = Config(
        upstreams=(("192.0.2.53", 53),),
        state_dir=str(tmp_path),
        policy=PolicyConfig(endpoints=endpoints),
    )
    policy = Policy(rules=(), source="none")
    daemon = Daemon(Loaded(config, policy, Matcher(policy.rules)))
    calls: list[int] = []

    async def broken_update() -> dict[str, Any]:
        calls.append(1)
        raise RuntimeError("a bug")

    daemon.policy_update = broken_update  # type: ignore[method-assign]
    message = "endpoint web service: unexpected error: RuntimeError: a bug"
    with caplog.at_level(logging.ERROR, "resolverd.policy"):
        task = asyncio.create_task(daemon._poll_endpoints())
        try:
            await until(lambda: len(calls) == 1)
            await asyncio.sleep(0.05)
            assert not task.done()
            status = daemon.feed.status(endpoints)
            assert status["last_error"] == message
            last, due = (datetime.fromisoformat(status[k]) for k in ("last_check", "next_check"))
            assert (due - last).total_seconds() == 600  # the next check comes on time

            daemon.endpoints_changed.set()
            await until(lambda: len(calls) == 2)
            await asyncio.sleep(0.05)
            assert not task.done()
        finally:
            task.cancel()
    assert caplog.messages == [message, f"{message} (again)"]
    assert [record.exc_info is not None for record in caplog.records] == [True, False]
