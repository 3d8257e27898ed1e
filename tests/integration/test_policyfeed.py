"""The endpoint web service client and the policy feed, against an HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.server
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from policy.endpoints import EndpointsClient, EndpointsError, new_client_request_id
from policy.loader import builtin_policy
from policy.matcher import Matcher
from resolver.config import EndpointsConfig, PolicyConfig
from resolver.control.protocol import UpdateFailed
from resolver.policyfeed import PolicyFeed
from tests.fakeendpoints import SAMPLE, FakeService

pytestmark = pytest.mark.integration


@pytest.fixture
def service() -> Iterator[str]:
    FakeService.requests = []
    FakeService.body_override = None
    FakeService.status = 200
    FakeService.delay = 0.0
    FakeService.version = "2024103100"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeService)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- the client --------------------------------------------------------------------------


def test_client_fetches_version_and_endpoints(service: str) -> None:
    client = EndpointsClient(service + "/", "Worldwide", "a b&c", timeout=5)
    assert client.fetch_version() == "2024103100"
    assert client.fetch_endpoints() == SAMPLE
    assert FakeService.requests == [
        "/version/Worldwide?clientrequestid=a+b%26c",
        "/endpoints/Worldwide?clientrequestid=a+b%26c",
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


# --- the feed: version check, download, cache, merge ---------------------------------------


def _cfgs(url: str) -> tuple[EndpointsConfig, PolicyConfig]:
    endpoints = EndpointsConfig(url=url, categories=("Optimize", "Allow"))
    return endpoints, PolicyConfig(endpoints=endpoints)


def test_update_downloads_once_per_version_and_merge_adds_the_rules(
    service: str, tmp_path: Path
) -> None:
    feed = PolicyFeed(str(tmp_path))
    endpoints, policy_cfg = _cfgs(service)
    assert feed.update(endpoints) == (True, "2024103100")
    assert feed.update(endpoints) == (False, "2024103100")
    paths = [urllib.parse.urlsplit(p).path for p in FakeService.requests]
    assert paths == ["/version/Worldwide", "/endpoints/Worldwide", "/version/Worldwide"]
    client_ids = {urllib.parse.urlsplit(p).query for p in FakeService.requests}
    assert len(client_ids) == 1  # one stable client request id, kept in the state dir
    assert (tmp_path / "endpoints-client-id").read_text().strip() in client_ids.pop()

    merged = feed.merge(builtin_policy(), policy_cfg)
    assert merged.source == "builtin:microsoft365+endpoints:Worldwide"
    assert len(merged.rules) == 16 + 4  # sets 1, 11, 31 (Optimize) and 46 (Allow); not 95
    match = Matcher(merged.rules).match("login.microsoftonline.com")
    assert match is not None and (match.rule.row, match.rule.category) == (46, "Allow")

    FakeService.version = "2024110100"
    assert feed.update(endpoints) == (True, "2024110100")
    assert feed.cached_version() == "2024110100"


def test_failed_update_keeps_the_cache(service: str, tmp_path: Path) -> None:
    feed = PolicyFeed(str(tmp_path))
    endpoints, _ = _cfgs(service)
    feed.update(endpoints)
    before = (tmp_path / "endpoints.json").read_bytes()
    FakeService.version = "2025010100"
    FakeService.status = 500
    with pytest.raises(UpdateFailed, match="HTTP 500"):
        feed.update(endpoints)
    assert (tmp_path / "endpoints.json").read_bytes() == before


def test_merge_without_a_cache_is_the_policy_itself(tmp_path: Path) -> None:
    builtin = builtin_policy()
    _, policy_cfg = _cfgs("http://127.0.0.1:9")
    assert PolicyFeed(str(tmp_path)).merge(builtin, policy_cfg) is builtin
