"""The endpoint feed inside resolverd (a process, as in test_daemon.py): after a 429 neither the
poll loop (at start, after a reload, after a restart) nor ``resolverctl policy update`` sends a
request before the Retry-After; status shows last_check, last_error and next_check; the tenant
goes to the service and makes its names exact; a hostile answer is shown and the polling goes
on; plain http:// is a config error unless allowed (the fake service is plain http, so the
tests allow it)."""

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
from tests.integration.test_daemon import (
    BUILTIN_RULES,
    START_TIMEOUT,
    STOP_BOUND,
    Resolverd,
    UpstreamThread,
)

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


def endpoints(url: str, keys: str, policy: str = "") -> str:
    """The config's policy section for the fake service, which is plain http: allowed."""
    return f"policy: {{{policy}endpoints: {{url: '{url}', allow_http: true, {keys}}}}}\n"


def test_429_holds_back_the_poll_and_policy_update(rd: Resolverd, service: str) -> None:
    FakeService.status_for = {"/endpoints/Worldwide": 429}
    FakeService.extra_headers = {"Retry-After": "3600"}
    rd.write_config(endpoints(service, "poll_interval: 60"))
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
    rd.write_config(endpoints(service, "poll_interval: 120"))
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
    rd.write_config(endpoints(service, "poll_interval: 3600", policy="tenant: contoso, "))
    rd.start()
    policy = wait_for_policy(rd, "last_check")
    deadline = time.monotonic() + 10
    while policy["rules"] == BUILTIN_RULES and time.monotonic() < deadline:
        time.sleep(0.1)
        policy = rd.status()["policy"]
    assert policy["rules"] == BUILTIN_RULES + 3  # the sample's required sets: 1, 11, 31
    assert policy["last_error"] is None
    assert seconds(policy["next_check"]) - seconds(policy["last_check"]) == 3600
    assert FakeService.requests[1].endswith("&TenantName=contoso")
    kept = json.loads((rd.tmp / "state" / "endpoints.json").read_text())
    assert kept["tenant"] == "contoso"
    res = rd.ctl("policy", "update", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"changed": False, "version": "2024103100"}


def test_a_hostile_answer_is_shown_and_the_polling_goes_on(rd: Resolverd, service: str) -> None:
    """A /version answer nested past the recursion limit used to end the poll task silently."""
    FakeService.body_for = {"/version/Worldwide": b'{"latest": ' + b"[" * 1100 + b"]" * 1100 + b"}"}
    rd.write_config(endpoints(service, "poll_interval: 60"))
    rd.start()
    policy = wait_for_policy(rd, "last_error")
    error = policy["last_error"]
    assert error is not None, rd.log()
    assert error.startswith(f"endpoint web service: GET {service}/version/Worldwide?")
    assert error.endswith(": nested deeper than 16 levels: refused unparsed")
    assert seconds(policy["next_check"]) - seconds(policy["last_check"]) == 60
    assert policy["rules"] == BUILTIN_RULES
    assert f"policy update: {error}" in rd.log()
    assert "Traceback" not in rd.log()

    # the loop is alive: a reload that changes policy.endpoints wakes it, and it checks again
    FakeService.body_for = {}
    rd.write_config(endpoints(service, "poll_interval: 61"))
    assert rd.ctl("reload").returncode == 0
    deadline = time.monotonic() + 10
    while rd.status()["policy"]["rules"] == BUILTIN_RULES and time.monotonic() < deadline:
        time.sleep(0.1)
    policy = rd.status()["policy"]
    assert (policy["rules"], policy["last_error"]) == (BUILTIN_RULES + 3, None)
    paths = [urllib.parse.urlsplit(p).path for p in FakeService.requests]
    assert paths == ["/version/Worldwide", "/version/Worldwide", "/endpoints/Worldwide"]


def test_plain_http_is_a_config_error_unless_allowed(rd: Resolverd, service: str) -> None:
    rd.write_config(f"policy: {{endpoints: {{url: '{service}'}}}}\n")
    proc = rd.spawn()
    assert rd.wait(START_TIMEOUT) == 1
    assert proc.returncode == 1
    log = rd.log()
    assert log == (
        f"resolverd: {rd.config}:6: /policy/endpoints/url: plain http:// can be forged on the "
        "way: use https://, or set allow_http: true for a mirror you trust\n"
    )
    assert FakeService.requests == []
