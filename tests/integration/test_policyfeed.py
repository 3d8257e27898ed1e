"""The endpoint web service client and the feed (resolver.feed), against an HTTP server on
127.0.0.1: version check, download once per version, the kept copy, 429 and Retry-After,
TenantName, the status fields, and what a hostile service can do: plain http:// (refused unless
allowed; the fake service is plain http, so the tests allow it), bodies too large, too costly,
too deep or too slow, and entries too broad."""

from __future__ import annotations

import email.utils
import json
import logging
import time
import tracemalloc
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
from resolver.endpointclient import EndpointsClient
from resolver.endpointerrors import (
    EndpointsError,
    RateLimited,
    new_client_request_id,
    utc_iso,
)
from resolver.feed import EndpointFeed
from tests.fakeendpoints import SAMPLE, FakeService, realistic_endpoints, serving

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
    client = EndpointsClient(service + "/", "Worldwide", "a b&c", timeout=5, allow_http=True)
    assert client.fetch_version() == "2024103100"
    assert client.fetch_endpoints() == SAMPLE
    assert FakeService.requests == [
        "/version/Worldwide?clientrequestid=a+b%26c",
        "/endpoints/Worldwide?clientrequestid=a+b%26c",
    ]


@pytest.mark.parametrize(
    "latest", ["2024103100\nFindProxyForURL = 1; //", "2024103100\u2028x", "x" * 65, "1 2"]
)
def test_a_version_that_is_no_version_is_refused(service: str, latest: str) -> None:
    """It is shown, logged, kept and written into the PAC export's comments: letters, digits,
    '.', '_' and '-' only, 64 at most."""
    FakeService.version = latest
    client = EndpointsClient(service, "Worldwide", timeout=5, allow_http=True)
    with pytest.raises(EndpointsError, match="is no version"):
        client.fetch_version()


def test_client_sends_the_tenant_name_to_endpoints(service: str) -> None:
    client = EndpointsClient(
        service, "Worldwide", "id-1", timeout=5, tenant="contoso", allow_http=True
    )
    client.fetch_version()
    client.fetch_endpoints()
    assert FakeService.requests == [
        "/version/Worldwide?clientrequestid=id-1",  # /version takes no TenantName
        "/endpoints/Worldwide?clientrequestid=id-1&TenantName=contoso",
    ]


def test_client_request_id_defaults_to_a_guid() -> None:
    client_id = EndpointsClient("https://127.0.0.1:9").client_request_id
    assert len(client_id) == 36 and client_id.count("-") == 4
    assert new_client_request_id() != new_client_request_id()


def test_http_error_status_is_named(service: str) -> None:
    FakeService.status = 503
    with pytest.raises(EndpointsError, match="HTTP 503"):
        EndpointsClient(service, "Worldwide", timeout=5, allow_http=True).fetch_version()
    with pytest.raises(EndpointsError, match="HTTP 404"):
        EndpointsClient(service, "Nowhere", timeout=5, allow_http=True).fetch_version()


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
    client = EndpointsClient(service, "Worldwide", "id", timeout=5, clock=Clock(), allow_http=True)
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
        (b'{"latest": ' + b"[" * 1100 + b"]" * 1100 + b"}", "fetch_version", r": nested deeper "
         r"than 16 levels: refused unparsed$"),
        (b'{"latest": "' + b"x" * 65536 + b'"}', "fetch_version", r": larger than 65536 bytes$"),
        (b"[" + b"{}," * 500_000 + b"{}]", "fetch_endpoints", "times their size: refused"),
        (b"[" + b"1" * 5000 + b"]", "fetch_endpoints", r"not JSON: Exceeds the limit \(4300"),
    ],
    ids=["not json", "no latest", "not a list", "too deep", "too large", "too costly", "int"],
)  # fmt: skip
def test_unusable_answers(service: str, body: bytes, call: str, message: str) -> None:
    FakeService.body_override = body
    with pytest.raises(EndpointsError, match=message) as caught:
        getattr(EndpointsClient(service, "Worldwide", timeout=5, allow_http=True), call)()
    assert str(caught.value).startswith(f"GET {service}/") or "/Worldwide: " in str(caught.value)


def test_a_hostile_body_costs_about_its_size(service: str) -> None:
    """32 MiB of [{},{},...] took 845 MB in json.loads: now at most 4 MiB is read, and it is
    priced, and refused, before it is parsed."""
    body = b"[" + b"{}," * (4 * 1024 * 1024 // 3 - 1) + b"{}]"
    FakeService.body_override = body
    client = EndpointsClient(service, "Worldwide", timeout=5, allow_http=True)
    tracemalloc.start()
    try:
        with pytest.raises(EndpointsError, match="refused unparsed"):
            client.fetch_endpoints()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(body) == 4 * 1024 * 1024
    assert peak < 3 * len(body)  # read in chunks, joined, one copy to count in
    FakeService.body_override = body + b" "  # a byte too many: not even priced
    with pytest.raises(EndpointsError, match=r"larger than 4194304 bytes$"):
        client.fetch_endpoints()


def test_timeout_is_an_error_not_a_hang(service: str) -> None:
    FakeService.delay = 1.0
    started = time.monotonic()
    with pytest.raises(EndpointsError, match="timed out"):
        EndpointsClient(service, "Worldwide", timeout=0.2, allow_http=True).fetch_version()
    assert time.monotonic() - started < 0.9


def test_a_body_sent_a_byte_at_a_time_cannot_hold_the_feed(service: str) -> None:
    FakeService.drip = 0.02  # 50 bytes a second: each read is quick, the whole is not
    started = time.monotonic()
    with pytest.raises(EndpointsError) as caught:
        EndpointsClient(service, "Worldwide", "id", timeout=0.2, allow_http=True).fetch_version()
    assert str(caught.value) == (
        f"GET {service}/version/Worldwide?clientrequestid=id: the answer took longer than 0.8 s"
    )
    assert time.monotonic() - started < 1.5


def test_connection_refused() -> None:
    with pytest.raises(EndpointsError, match=r"GET http://127\.0\.0\.1:9/version"):
        EndpointsClient("http://127.0.0.1:9", timeout=2, allow_http=True).fetch_version()


def test_only_https_urls_unless_http_is_allowed() -> None:
    with pytest.raises(EndpointsError) as caught:
        EndpointsClient("file:///etc/passwd", allow_http=True)
    assert str(caught.value) == "endpoint service URL 'file:///etc/passwd': expected https://"
    with pytest.raises(EndpointsError) as caught:
        EndpointsClient("http://endpoints.example")
    assert str(caught.value) == (
        "endpoint service URL 'http://endpoints.example': plain http:// can be forged on the "
        "way: use https://, or set policy.endpoints.allow_http: true for a mirror you trust"
    )
    assert EndpointsClient("HTTP://endpoints.example", allow_http=True).url.startswith("HTTP:")
    assert EndpointsClient("https://endpoints.example").url == "https://endpoints.example"


def test_redirects_only_to_what_the_url_could_be(service: str) -> None:
    FakeService.redirect_to = "ftp://127.0.0.1/version"
    with pytest.raises(EndpointsError) as caught:
        EndpointsClient(service, "Worldwide", "id", timeout=5, allow_http=True).fetch_version()
    assert str(caught.value) == (
        f"GET {service}/version/Worldwide?clientrequestid=id: HTTP 302 redirect to "
        "'ftp://127.0.0.1/version' refused: expected https://"
    )


# --- the feed: version check, download, the kept copy, merge --------------------------------


def _cfg(
    url: str,
    tenant: str | None = None,
    poll_interval: int = 3600,
    include_optional: bool = False,
    allow_http: bool = True,  # the fake service is plain http
) -> PolicyConfig:
    endpoints = EndpointsConfig(
        url=url,
        categories=("Optimize", "Allow"),
        poll_interval=poll_interval,
        allow_http=allow_http,
    )
    return PolicyConfig(endpoints=endpoints, tenant=tenant, include_optional=include_optional)


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
    # include_optional is false by default: the 7 required rows, the required sets 1, 11, 31
    assert len(merged.rules) == 7 + 3
    assert all(rule.required for rule in merged.rules)
    match = Matcher(merged.rules).match("login.microsoftonline.com")
    assert match is None or match.rule.row != 46  # 46 is optional
    optional = _cfg(service, include_optional=True)
    merged = merge_endpoints(builtin_policy(), optional, read_cache(str(tmp_path)))
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


async def test_plain_http_is_refused_unless_allowed(service: str, tmp_path: Path) -> None:
    feed = EndpointFeed(str(tmp_path))
    cfg = _cfg(service, allow_http=False)
    with pytest.raises(UpdateFailed) as caught:
        await feed.update(cfg, Applied())
    assert caught.value.message == (
        f"endpoint web service: endpoint service URL {service!r}: plain http:// can be forged on "
        "the way: use https://, or set policy.endpoints.allow_http: true for a mirror you trust"
    )
    assert feed.status(cfg.endpoints)["last_error"] == caught.value.message
    assert FakeService.requests == []  # not a byte sent
    assert await feed.update(_cfg(service), Applied()) == {
        "changed": True,
        "version": "2024103100",
    }


async def test_entries_broader_than_the_bounds_are_skipped(
    service: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broad = {
        "id": 900,
        "serviceArea": "Common",
        "urls": ["*.com", "*.co.uk", "<tenant>.com", "*.contoso.co.uk"],
        "ips": ["1.0.0.0/8", "0.0.0.0/0", "2603::/16", "52.96.0.0/12"],
        "expressRoute": False,
        "category": "Optimize",
        "required": True,
    }
    FakeService.body_for = {"/endpoints/Worldwide": json.dumps([*SAMPLE, broad]).encode()}
    feed, cfg, applied = EndpointFeed(str(tmp_path)), _cfg(service), Applied()
    assert await feed.update(cfg, applied) == {"changed": True, "version": "2024103100"}
    with caplog.at_level(logging.WARNING, "resolverd.policy"):
        merged = merge_endpoints(builtin_policy(), cfg, read_cache(str(tmp_path)))
    (rule,) = [rule for rule in merged.rules if rule.row == 900]
    assert (rule.patterns, rule.cidrs) == (("*.contoso.co.uk",), ("52.96.0.0/12",))
    matcher = Matcher(merged.rules)
    assert matcher.match("www.example.com") is None
    assert matcher.match("bank.co.uk") is None
    assert matcher.match("www.contoso.co.uk") is not None
    where = "endpoint web service: endpoints:Worldwide: /5"
    broader = "broader than a registrable domain; skipped"
    assert [m for m in caplog.messages if "/5/" in m] == [
        f"{where}/urls/0: '*.com': a wildcard over every name in 'com' (a top-level domain): "
        + broader,
        f"{where}/urls/1: '*.co.uk': a wildcard over every name in 'co.uk' (a public suffix): "
        + broader,
        f"{where}/urls/2: '<tenant>.com': a wildcard over every name in 'com' (a top-level "
        "domain): " + broader,
        f"{where}/ips/0: '1.0.0.0/8': broader than /10: an IPv4 prefix from the service must be "
        "/10 or longer; skipped",
        f"{where}/ips/1: '0.0.0.0/0': broader than /10: an IPv4 prefix from the service must be "
        "/10 or longer; skipped",
        f"{where}/ips/2: '2603::/16': broader than /32: an IPv6 prefix from the service must be "
        "/32 or longer; skipped",
    ]


async def test_the_real_answer_is_taken_and_a_hostile_one_of_its_size_is_not(
    service: str, tmp_path: Path
) -> None:
    sets = realistic_endpoints()
    body = json.dumps(sets, indent=2).encode()
    FakeService.body_for = {"/endpoints/Worldwide": body}
    feed, cfg, applied = EndpointFeed(str(tmp_path)), _cfg(service), Applied()
    assert await feed.update(cfg, applied) == {"changed": True, "version": "2024103100"}
    assert applied.sets[0].endpoints == sets

    hostile = b"[" + b"{}," * (len(body) // 3 - 1) + b"{}]"
    FakeService.body_for = {"/endpoints/Worldwide": hostile}
    FakeService.version = "2024110100"
    with pytest.raises(UpdateFailed) as caught:
        await feed.update(cfg, applied)
    assert caught.value.message.endswith("more than 10 times their size: refused unparsed"), (
        caught.value.message
    )
    kept = read_cache(str(tmp_path))
    assert kept is not None and (kept.version, kept.endpoints) == ("2024103100", sets)
