"""The endpoint feed inside resolverd (a process, as in test_daemon.py): after a 429 neither the
poll loop (at start, after a reload, after a restart) nor ``resolverctl policy update`` sends a
request before the Retry-After; status shows last_check, last_error and next_check; the tenant
goes to the service and makes its names exact; a hostile answer is shown and the polling goes
on; plain http:// is a config error unless allowed (the fake service is plain http, so the
tests allow it)."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from policy.endpoints import MAX_PREFIXES
from tests.fakeendpoints import SAMPLE, FakeService, serving
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


# -- a kept copy of the endpoint sets that cannot be used ----------------------------------
# resolverd started on a kept copy (state_dir/endpoints.json) that cannot be used starts without
# it, says once which file and why, and its first version check downloads the sets again, even
# when the service's version is the one the copy claims. A download with an endpoint set id the
# hold journal could not read back is refused, naming the entry.

SAMPLE_RULES = 3  # the sample's required sets in Optimize and Allow: 1, 11, 31
HUGE_ID = {**SAMPLE[0], "id": 10**11}


def start_on(rd: Resolverd, service: str, kept: str) -> Path:
    """Start resolverd with ``kept`` as its endpoints.json; the file's path."""
    path = rd.tmp / "state" / "endpoints.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(kept)
    rd.write_config(f"policy: {{endpoints: {{url: '{service}', allow_http: true}}}}\n")
    rd.start()
    return path


def policy_once_checked(rd: Resolverd, rules: int, timeout: float = 10.0) -> dict[str, Any]:
    """The status's policy object once it has ``rules`` rules, or at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        policy: dict[str, Any] = rd.status()["policy"]
        if policy["rules"] == rules or time.monotonic() > deadline:
            return policy
        time.sleep(0.1)


def paths() -> list[str]:
    return [urllib.parse.urlsplit(p).path for p in FakeService.requests]


@pytest.mark.parametrize(
    ("kept", "reason"),
    [
        ('{"instance": "Worldwide", "version": "2024103100", "endpoints": [{"id": 1', "not JSON"),
        (
            '{"instance": "Worldwide", "endpoints": ' + "[" * 100_000 + "]" * 100_000 + "}",
            "refused unparsed",
        ),
        (
            json.dumps({"instance": "Worldwide", "version": "2024103100", "endpoints": [HUGE_ID]}),
            "/0/id: 100000000000 is out of range 1-2147483647",
        ),
    ],
    ids=["cut short", "nested 100000 deep", "an id out of range, the current version"],
)
def test_an_unusable_kept_copy_is_said_once_and_downloaded_again(
    rd: Resolverd, service: str, kept: str, reason: str
) -> None:
    path = start_on(rd, service, kept)
    policy = policy_once_checked(rd, BUILTIN_RULES + SAMPLE_RULES)
    assert (policy["rules"], policy["last_error"]) == (BUILTIN_RULES + SAMPLE_RULES, None)
    assert paths() == ["/version/Worldwide", "/endpoints/Worldwide"]
    assert json.loads(path.read_text())["endpoints"] == SAMPLE  # replaced by the download
    log = rd.log()
    assert log.count(f"{path}: unusable endpoint cache: ") == 1, log
    assert f"WARNING resolverd.policy: {path}: unusable" in log, log  # the daemon's format
    assert reason in log
    assert "Traceback" not in log


def test_a_download_with_an_id_out_of_range_is_refused_naming_the_entry(
    rd: Resolverd, service: str
) -> None:
    FakeService.body_for = {"/endpoints/Worldwide": json.dumps([*SAMPLE, HUGE_ID]).encode()}
    path = start_on(rd, service, json.dumps({"instance": "Worldwide", "version": "2024010100",
                                             "endpoints": SAMPLE}))  # fmt: skip
    assert rd.status()["policy"]["rules"] == BUILTIN_RULES + SAMPLE_RULES  # the kept copy
    deadline = time.monotonic() + 10
    while rd.status()["policy"]["last_error"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
    policy = rd.status()["policy"]
    assert policy["last_error"] == (
        "endpoint web service: endpoints: /5/id: 100000000000 is out of range 1-2147483647 "
        "(an id becomes the row the hold journal keeps for its routes)"
    )
    assert policy["rules"] == BUILTIN_RULES + SAMPLE_RULES  # nothing changed
    assert json.loads(path.read_text())["version"] == "2024010100"  # nor what is kept


def test_a_download_past_the_bounds_is_refused_and_the_policy_stays(
    rd: Resolverd, service: str
) -> None:
    """A download whose sets carry more prefixes than MAX_PREFIXES (a route each on every
    link, which breakout.max_entries does not bound) is refused whole, like a structural
    error: the policy in use and the kept copy stay."""
    many = [f"10.{i >> 8}.{i & 255}.0/24" for i in range(MAX_PREFIXES + 1)]
    FakeService.body_for = {"/endpoints/Worldwide": json.dumps([{**SAMPLE[0], "ips": many},
                                                                *SAMPLE[1:]]).encode()}  # fmt: skip
    path = start_on(rd, service, json.dumps({"instance": "Worldwide", "version": "2024010100",
                                             "endpoints": SAMPLE}))  # fmt: skip
    deadline = time.monotonic() + 10
    while rd.status()["policy"]["last_error"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
    policy = rd.status()["policy"]
    refused = re.fullmatch(
        r"endpoint web service: endpoints: (\d+) prefixes in the configured categories, more "
        rf"than the {MAX_PREFIXES} taken from the service \(Microsoft publishes far fewer\): "
        "refused",
        str(policy["last_error"]),
    )
    assert refused is not None and int(refused[1]) > MAX_PREFIXES, policy["last_error"]
    assert policy["rules"] == BUILTIN_RULES + SAMPLE_RULES  # nothing changed
    assert json.loads(path.read_text())["version"] == "2024010100"  # nor what is kept
