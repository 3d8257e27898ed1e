"""The endpoint web service client and the feed (resolver.feed), against an HTTP server on
127.0.0.1: version check, download once per version, the kept copy, 429 and Retry-After,
TenantName, and the status fields."""

from __future__ import annotations

import email.utils
import json
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from policy.loader import builtin_policy
from policy.matcher import Matcher
from resolver.config import EndpointsConfig, PolicyConfig
from resolver.control.protocol import UpdateFailed
from resolver.endpointcache import EndpointSets, merge_endpoints, read_cache
from resolver.feed import (
    EndpointFeed,
    EndpointsClient,
    EndpointsError,
    RateLimited,
    new_client_request_id,
    utc_iso,
)
from tests.fakeendpoints import SAMPLE, FakeService, serving

pytestmark = pytest.mark.integration

NOW = 1_730_000_000.0  # 2024-10-27T03:33:20Z


@pytest.fixture
def service() -> Iterator[str]:
    with serving() as url:
        yield url


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def paths() -> list[str]:
    return [urllib.parse.urlsplit(p).path for p in FakeService.requests]


# --- the client --------------------------------------------------------------------------


def test_client_fetches_version_and_endpoints(service: str) -> None:
    client = EndpointsClient(service + "/", "Worldwide", "a b&c", timeout=5)
    assert client.fetch_version() == "2024103100"
    assert client.fetch_endpoints() == SAMPLE
    assert FakeService.requests == [
        "/version/Worldwide?clientrequestid=a+b%26c",
        "/endpoints/Worldwide?clientrequestid=a+b%26c",
    ]


def test_client_sends_the_tenant_name_to_endpoints(service: str) -> None:
    client = EndpointsClient(service, "Worldwide", "id-1", timeout=5, tenant="contoso")
    client.fetch_version()
    client.fetch_endpoints()
    assert FakeService.requests == [
        "/version/Worldwide?clientrequestid=id-1",  # /version takes no TenantName
        "/endpoints/Worldwide?clientrequestid=id-1&TenantName=contoso",
    ]


def test_client_request_id_defaults_to_a_guid() -> None:
    client_id = EndpointsClient("http://127.0.0.1:9").client_request_id
    assert len(client_id) == 36 and client_id.count("-") == 4
    assert new_client_request_id() != new_client_request_id()


def test_http_error_status_is_named(service: str) -> None:
    FakeService.status = 503
    with pytest.raises(EndpointsError, match="HTTP 503"):
        EndpointsClient(service, "Worldwide", timeout=5).fetch_version()
    with pytest.raises(EndpointsError, match="HTTP 404"):
        EndpointsClient(service, "Nowhere", timeout=5).fetch_version()


@pytest.mark.parametrize(
    ("header", "until"),
    [
        ("120", NOW + 120),
        (
            email.utils.format_datetime(datetime.fromtimestamp(NOW + 300, UTC), usegmt=True),
            NOW + 300,
        ),
        (None, NOW + 3600),
    ],
    ids=["seconds", "http-date", "none"],
)
def test_client_429_gives_the_retry_time(service: str, header: str | None, until: float) -> None:
    FakeService.status = 429
    if header is not None:
        FakeService.extra_headers = {"Retry-After": header}
    client = EndpointsClient(service, "Worldwide", "id", timeout=5, clock=Clock())
    with pytest.raises(RateLimited) as caught:
        client.fetch_version()
    assert caught.value.until == until
    given = f"Retry-After: {header}" if header else "no Retry-After"
    assert str(caught.value) == (
        f"GET {service}/version/Worldwide?clientrequestid=id: HTTP 429 Too Many Requests "
        f"({given}): no request before {utc_iso(until)}"
    )


@pytest.mark.parametrize(
    ("body", "call", "message"),
    [
        (b"not json", "fetch_version", "not JSON"),
        (b'{"instance": "Worldwide"}', "fetch_version", "no 'latest' version"),
        (b'{"a": 1}', "fetch_endpoints", "expected a list of objects"),
    ],
)
def test_unusable_answers(service: str, body: bytes, call: str, message: str) -> None:
    FakeService.body_override = body
    with pytest.raises(EndpointsError, match=message):
        getattr(EndpointsClient(service, "Worldwide", timeout=5), call)()


def test_timeout_is_an_error_not_a_hang(service: str) -> None:
    FakeService.delay = 1.0
    started = time.monotonic()
    with pytest.raises(EndpointsError, match="timed out"):
        EndpointsClient(service, "Worldwide", timeout=0.2).fetch_version()
    assert time.monotonic() - started < 0.9


def test_connection_refused() -> None:
    with pytest.raises(EndpointsError, match=r"GET http://127\.0\.0\.1:9/version"):
        EndpointsClient("http://127.0.0.1:9", timeout=2).fetch_version()


def test_only_http_urls() -> None:
    with pytest.raises(EndpointsError, match="expected http"):
        EndpointsClient("file:///etc/passwd")


# --- the feed: version check, download, the kept copy, merge --------------------------------


def _cfg(url: str, tenant: str | None = None, poll_interval: int = 3600) -> PolicyConfig:
    endpoints = EndpointsConfig(
        url=url, categories=("Optimize", "Allow"), poll_interval=poll_interval
    )
    return PolicyConfig(endpoints=endpoints, tenant=tenant)


class Applied:
    """The daemon's side of an update: records the sets put in force, or fails."""

    def __init__(self) -> None:
        self.sets: list[EndpointSets] = []
        self.error: str | None = None

    async def __call__(self, sets: EndpointSets) -> None:
        if self.error is not None:
            raise UpdateFailed(self.error)
        self.sets.append(sets)


async def test_update_downloads_once_per_version_and_merge_adds_the_rules(
    service: str, tmp_path: Path
) -> None:
    feed = EndpointFeed(str(tmp_path))
    cfg, applied = _cfg(service), Applied()
    assert await feed.update(cfg, applied) == {"changed": True, "version": "2024103100"}
    assert await feed.update(cfg, applied) == {"changed": False, "version": "2024103100"}
    assert paths() == ["/version/Worldwide", "/endpoints/Worldwide", "/version/Worldwide"]
    assert [sets.version for sets in applied.sets] == ["2024103100"]
    client_ids = {urllib.parse.urlsplit(p).query for p in FakeService.requests}
    assert len(client_ids) == 1  # one stable client request id, kept in the state dir
    assert (tmp_path / "endpoints-client-id").read_text().strip() in client_ids.pop()

    merged = merge_endpoints(builtin_policy(), cfg, read_cache(str(tmp_path)))
    assert merged.source == "builtin:microsoft365+endpoints:Worldwide"
    assert len(merged.rules) == 16 + 4  # sets 1, 11, 31 (Optimize) and 46 (Allow); not 95
    match = Matcher(merged.rules).match("login.microsoftonline.com")
    assert match is not None and (match.rule.row, match.rule.category) == (46, "Allow")

    FakeService.version = "2024110100"
    assert await feed.update(cfg, applied) == {"changed": True, "version": "2024110100"}
    kept = read_cache(str(tmp_path))
    assert kept is not None and kept.version == "2024110100"


async def test_failed_update_keeps_the_cache(service: str, tmp_path: Path) -> None:
    feed = EndpointFeed(str(tmp_path))
    cfg = _cfg(service)
    await feed.update(cfg, Applied())
    before = (tmp_path / "endpoints.json").read_bytes()
    FakeService.version = "2025010100"
    FakeService.status = 500
    with pytest.raises(UpdateFailed, match="HTTP 500"):
        await feed.update(cfg, Applied())
    assert (tmp_path / "endpoints.json").read_bytes() == before


async def test_sets_that_cannot_be_applied_are_not_kept(service: str, tmp_path: Path) -> None:
    feed = EndpointFeed(str(tmp_path))
    cfg, applied = _cfg(service), Applied()
    applied.error = "the new endpoint sets were not applied: breakout said no"
    with pytest.raises(UpdateFailed, match="breakout said no"):
        await feed.update(cfg, applied)
    assert not (tmp_path / "endpoints.json").exists()
    assert feed.status(cfg.endpoints)["last_error"] == applied.error
    applied.error = None  # the same version is downloaded again: nothing was kept
    assert await feed.update(cfg, applied) == {"changed": True, "version": "2024103100"}
    assert paths().count("/endpoints/Worldwide") == 2


def test_merge_without_a_cache_is_the_policy_itself(tmp_path: Path) -> None:
    builtin = builtin_policy()
    cfg = _cfg("http://127.0.0.1:9")
    assert merge_endpoints(builtin, cfg, read_cache(str(tmp_path))) is builtin


# --- TenantName -----------------------------------------------------------------------------


async def test_tenant_is_sent_and_its_names_are_exact(service: str, tmp_path: Path) -> None:
    feed = EndpointFeed(str(tmp_path))
    cfg, applied = _cfg(service, tenant="contoso"), Applied()
    await feed.update(cfg, applied)
    assert FakeService.requests[1].endswith("&TenantName=contoso")
    (sets,) = applied.sets
    assert sets.tenant == "contoso"
    merged = merge_endpoints(builtin_policy(), cfg, sets)
    matcher = Matcher(merged.rules)
    for name in ("contoso-my.sharepoint.com", "contoso-files.sharepoint.com"):
        found = matcher.match(name)
        assert found is not None and (found.rule.row, found.pattern) == (31, name)

    # another tenant: the version is the same, but the sets are downloaded again for it
    other = _cfg(service, tenant="fabrikam")
    assert await feed.update(other, applied) == {"changed": True, "version": "2024103100"}
    assert FakeService.requests[-1].endswith("&TenantName=fabrikam")
    kept = read_cache(str(tmp_path))
    assert kept is not None and kept.tenant == "fabrikam"
    assert json.loads((tmp_path / "endpoints.json").read_text())["tenant"] == "fabrikam"


# --- 429 and Retry-After --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "wait"),
    [
        ("120", 120.0),
        (email.utils.format_datetime(datetime.fromtimestamp(NOW + 900, UTC), usegmt=True), 900.0),
        (None, 3600.0),
    ],
    ids=["seconds", "http-date", "none"],
)
async def test_429_stops_every_request_until_retry_after(
    service: str, tmp_path: Path, header: str | None, wait: float
) -> None:
    clock = Clock()
    feed = EndpointFeed(str(tmp_path), clock=clock)
    cfg, applied = _cfg(service, poll_interval=60), Applied()
    FakeService.status_for = {"/endpoints/Worldwide": 429}
    if header is not None:
        FakeService.extra_headers = {"Retry-After": header}
    with pytest.raises(UpdateFailed, match="HTTP 429") as caught:
        await feed.update(cfg, applied)
    until = utc_iso(NOW + wait)
    assert caught.value.message.endswith(f"no request before {until}")
    assert paths() == ["/version/Worldwide", "/endpoints/Worldwide"]
    assert feed.rate_limited()
    assert feed.status(cfg.endpoints) == {
        "last_check": utc_iso(NOW),
        "last_error": caught.value.message,
        "next_check": until,  # the Retry-After, later than the poll interval (60 s)
    }
    assert feed.seconds_to_next_check(cfg.endpoints) == wait

    # policy update before then: refused without a request, saying until when
    FakeService.status_for = {}
    clock.now = NOW + wait - 1
    with pytest.raises(UpdateFailed) as refused:
        await feed.update(cfg, applied)
    assert refused.value.message == (
        "the endpoint web service answered HTTP 429 (too many requests): "
        f"no request to it before {until}"
    )
    assert paths() == ["/version/Worldwide", "/endpoints/Worldwide"]
    assert feed.status(cfg.endpoints)["last_check"] == utc_iso(NOW)  # no check happened
    # a restart honours it too: the deadline is kept in the state directory
    assert (tmp_path / "endpoints-retry-after").read_text().strip() == until
    assert EndpointFeed(str(tmp_path), clock=clock).rate_limited()

    clock.now = NOW + wait
    assert await feed.update(cfg, applied) == {"changed": True, "version": "2024103100"}
    assert paths()[2:] == ["/version/Worldwide", "/endpoints/Worldwide"]
    assert not feed.rate_limited()
    assert not (tmp_path / "endpoints-retry-after").exists()
    assert feed.status(cfg.endpoints) == {
        "last_check": utc_iso(NOW + wait),
        "last_error": None,
        "next_check": utc_iso(NOW + wait + 60),
    }


async def test_429_on_version_too(service: str, tmp_path: Path) -> None:
    clock = Clock()
    feed = EndpointFeed(str(tmp_path), clock=clock)
    cfg = _cfg(service)
    FakeService.status = 429
    FakeService.extra_headers = {"Retry-After": "7200"}
    with pytest.raises(UpdateFailed, match="HTTP 429"):
        await feed.update(cfg, Applied())
    assert paths() == ["/version/Worldwide"]
    assert feed.next_check(cfg.endpoints) == NOW + 7200  # later than last check + 3600


async def test_status_before_and_after_checks(service: str, tmp_path: Path) -> None:
    clock = Clock()
    feed = EndpointFeed(str(tmp_path), clock=clock)
    cfg = _cfg(service, poll_interval=600)
    assert feed.status(None) == {"last_check": None, "last_error": None, "next_check": None}
    assert feed.status(cfg.endpoints) == {
        "last_check": None,
        "last_error": None,
        "next_check": utc_iso(NOW),  # due now: the check at start
    }
    FakeService.status = 503
    with pytest.raises(UpdateFailed) as caught:
        await feed.update(cfg, Applied())
    assert caught.value.message.startswith("endpoint web service: GET ")
    assert caught.value.message.endswith(": HTTP 503 Service Unavailable")
    assert feed.status(cfg.endpoints) == {
        "last_check": "2024-10-27T03:33:20Z",
        "last_error": caught.value.message,
        "next_check": "2024-10-27T03:43:20Z",
    }
    FakeService.status = 200
    clock.now += 600
    await feed.update(cfg, Applied())
    assert feed.status(cfg.endpoints)["last_error"] is None


async def test_update_without_endpoints_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UpdateFailed, match=r"^policy\.endpoints is not configured$"):
        await EndpointFeed(str(tmp_path)).update(PolicyConfig(), Applied())
