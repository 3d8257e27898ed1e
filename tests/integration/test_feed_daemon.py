"""The endpoint feed inside resolverd (a process, as in test_daemon.py): after a 429 neither the
poll loop (at start, after a reload, after a restart) nor ``resolverctl policy update`` sends a
request before the Retry-After; status shows last_check, last_error and next_check; the tenant
goes to the service and makes its names exact."""

from __future__ import annotations

import json
import signal
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.fakeendpoints import FakeService, serving
from tests.integration.test_daemon import BUILTIN_RULES, STOP_BOUND, Resolverd, UpstreamThread

pytestmark = pytest.mark.integration


@pytest.fixture
def service() -> Iterator[str]:
    with serving() as url:
        yield url


@pytest.fixture
def rd(tmp: Path) -> Iterator[Resolverd]:
    with UpstreamThread() as upstream:
        daemon = Resolverd(tmp, upstream.fake)
        try:
            yield daemon
        finally:
            daemon.close()


def wait_for_policy(rd: Resolverd, key: str, timeout: float = 10.0) -> dict[str, Any]:
    """The status's policy object once ``key`` is set (the first check has ended)."""
    deadline = time.monotonic() + timeout
    while True:
        policy: dict[str, Any] = rd.status()["policy"]
        if policy.get(key) is not None or time.monotonic() > deadline:
            return policy
        time.sleep(0.1)


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).astimezone(UTC).timestamp()


def test_429_holds_back_the_poll_and_policy_update(rd: Resolverd, service: str) -> None:
    FakeService.status_for = {"/endpoints/Worldwide": 429}
    FakeService.extra_headers = {"Retry-After": "3600"}
    rd.write_config(f"policy: {{endpoints: {{url: '{service}', poll_interval: 60}}}}\n")
    started = time.time()
    proc = rd.start()
    policy = wait_for_policy(rd, "last_error")
    assert "HTTP 429" in policy["last_error"], policy
    assert policy["rules"] == BUILTIN_RULES  # nothing downloaded
    assert started - 1 <= seconds(policy["last_check"]) <= time.time()
    next_check = policy["next_check"]
    assert started + 3590 <= seconds(next_check) <= time.time() + 3601  # not 60 s: Retry-After
    requested = list(FakeService.requests)
    assert [urllib.parse.urlsplit(p).path for p in requested] == [
        "/version/Worldwide",
        "/endpoints/Worldwide",
    ]

    res = rd.ctl("policy", "update")
    assert res.returncode == 1
    assert res.stderr == (
        "resolverctl: policy update failed: the endpoint web service answered HTTP 429 "
        f"(too many requests): no request to it before {next_check}\n"
    )
    text = rd.ctl("status").stdout
    assert f"Next check: {next_check}" in text
    assert f"Last check: {policy['last_check']}" in text
    assert "Last error: endpoint web service: GET " in text

    # a reload that changes policy.endpoints wakes the poll loop: it still waits
    rd.write_config(f"policy: {{endpoints: {{url: '{service}', poll_interval: 120}}}}\n")
    assert rd.ctl("reload").returncode == 0
    time.sleep(1.0)
    assert FakeService.requests == requested
    assert rd.status()["policy"]["next_check"] == next_check

    # so does a restart: the deadline is kept in the state directory
    proc.send_signal(signal.SIGTERM)
    assert rd.wait(STOP_BOUND) == 0
    rd.start()
    time.sleep(1.0)
    assert rd.proc is not None and rd.proc.poll() is None, rd.log()
    policy = rd.status()["policy"]
    assert FakeService.requests == requested
    assert (policy["last_check"], policy["next_check"]) == (None, next_check)
    assert rd.ctl("policy", "update").returncode == 1
    assert FakeService.requests == requested


def test_tenant_in_the_daemon(rd: Resolverd, service: str) -> None:
    rd.write_config(
        f"policy: {{tenant: contoso, endpoints: {{url: '{service}', poll_interval: 3600}}}}\n"
    )
    rd.start()
    policy = wait_for_policy(rd, "last_check")
    deadline = time.monotonic() + 10
    while policy["rules"] == BUILTIN_RULES and time.monotonic() < deadline:
        time.sleep(0.1)
        policy = rd.status()["policy"]
    assert policy["rules"] == BUILTIN_RULES + 4
    assert policy["last_error"] is None
    assert seconds(policy["next_check"]) - seconds(policy["last_check"]) == 3600
    assert FakeService.requests[1].endswith("&TenantName=contoso")
    kept = json.loads((rd.tmp / "state" / "endpoints.json").read_text())
    assert kept["tenant"] == "contoso"
    res = rd.ctl("policy", "update", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"changed": False, "version": "2024103100"}
