"""What the endpoint feed takes from the service and from its own files in state_dir, when that
is hostile or damaged: an endpoint set id the hold journal could not read back, a kept copy
(``endpoints.json``) cut short, nested past the recursion limit, too large or refused as a
download would be, and a Retry-After deadline on disk years away or without a time zone.
(The daemon started on such a copy: tests/integration/test_feed_hostile_start.py.)"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policy import endpoints
from policy.endpoints import policy_from_endpoints_json
from policy.loader import PolicyError
from resolver.config import load_config
from resolver.daemon import load_everything
from resolver.endpointcache import effective_policy
from resolver.endpointerrors import utc_iso
from resolver.feed import RETRY_FILE, EndpointFeed
from resolver.net import records
from tests.fakeendpoints import SAMPLE

pytestmark = pytest.mark.unit

NOW = 1_730_000_000.0  # Sun, 27 Oct 2024 03:33:20 GMT
DAY = 86_400  # RETRY_AFTER_MAX
LARGEST_ID = 2**31 - 1


def endpoint_set(set_id: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": set_id,
        "serviceArea": "Exchange",
        "category": "Optimize",
        "required": True,
        "expressRoute": True,
        "urls": ["outlook.office.com"],
        "tcpPorts": "443",
        **extra,
    }


# -- endpoint set ids: a row the hold journal reads back ---------------------------------------


def test_an_id_the_journal_cannot_read_back_is_refused_naming_the_entry() -> None:
    feed = [endpoint_set(1), endpoint_set(10**11)]
    with pytest.raises(PolicyError) as caught:
        policy_from_endpoints_json(feed, "v", {"Optimize"}, source="ws", warnings=[])
    assert caught.value.errors == [
        f"ws: /1/id: 100000000000 is out of range 1-{LARGEST_ID} (an id becomes the row the "
        "hold journal keeps for its routes)"
    ]


def test_the_largest_id_taken_is_a_row_the_journal_reads_back() -> None:
    policy = policy_from_endpoints_json([endpoint_set(LARGEST_ID)], "v", {"Optimize"})
    row = policy.rules[0].row
    line = records.format_hold(socket.inet_aton("52.96.0.1"), "outlook.office.com", 1000.0, row,
                               NOW, 30)  # fmt: skip
    loaded = records.parse(b"resolverd-holds 1 365 245\n" + line)
    assert (loaded.ok, loaded.problems) == (True, [])
    assert loaded.holds["52.96.0.1"].row == LARGEST_ID
    with pytest.raises(PolicyError, match=r"/0/id: 2147483648 is out of range"):
        policy_from_endpoints_json([endpoint_set(LARGEST_ID + 1)], "v", {"Optimize"})


# -- what the sets in use carry together, and the warnings of what is skipped ------------------


def test_sets_prefixes_and_names_past_their_bounds_refuse_the_download() -> None:
    def prefixes(first: int, n: int) -> list[str]:
        return [f"10.{i >> 8}.{i & 255}.0/24" for i in range(first, first + n)]

    def names(n: int) -> list[str]:
        return [f"n{i}.office.com" for i in range(n)]

    half = endpoints.MAX_PREFIXES // 2
    at_the_bounds = [
        [endpoint_set(i + 1) for i in range(endpoints.MAX_SETS)],
        [endpoint_set(1, ips=prefixes(0, endpoints.MAX_PREFIXES))],
        [endpoint_set(1, urls=names(endpoints.MAX_NAMES))],
        # Listed by two sets, a prefix is one route: counted once.
        [endpoint_set(1, ips=prefixes(0, half + 1)), endpoint_set(2, ips=prefixes(0, half + 1))],
    ]
    for feed in at_the_bounds:
        policy_from_endpoints_json(feed, "v", {"Optimize"}, source="ws")  # taken
    past = {
        "endpoint sets": [endpoint_set(i + 1) for i in range(endpoints.MAX_SETS + 1)],
        "prefixes": [endpoint_set(1, ips=prefixes(0, half + 1)),
                     endpoint_set(2, ips=prefixes(half + 1, half))],
        "names": [endpoint_set(1, urls=names(endpoints.MAX_NAMES + 1))],
    }  # fmt: skip
    bound = {"endpoint sets": endpoints.MAX_SETS, "prefixes": endpoints.MAX_PREFIXES,
             "names": endpoints.MAX_NAMES}  # fmt: skip
    for what, feed in past.items():
        warnings: list[str] = []
        with pytest.raises(PolicyError) as caught:
            policy_from_endpoints_json(feed, "v", {"Optimize"}, source="ws", warnings=warnings)
        assert caught.value.errors == [
            f"ws: {bound[what] + 1} {what} in the configured categories, more than the "
            f"{bound[what]} taken from the service (Microsoft publishes far fewer): refused"
        ]
    # Sets in a category not configured are not counted: they are not used.
    others = [endpoint_set(i + 1, category="Default") for i in range(endpoints.MAX_SETS + 1)]
    assert policy_from_endpoints_json(others, "v", {"Optimize"}).rules == ()


def test_a_download_of_skipped_entries_gives_a_few_warnings_and_a_count() -> None:
    feed = [endpoint_set(1, urls=["outlook.office.com", *(f"*.x{i}" for i in range(5000))])]
    warnings: list[str] = []
    policy = policy_from_endpoints_json(feed, "v", {"Optimize"}, source="ws", warnings=warnings)
    assert policy.rules[0].patterns == ("outlook.office.com",)
    assert len(warnings) == endpoints.SHOWN_SKIPPED + 1
    assert warnings[0].startswith("ws: /0/urls/1: '*.x0': ")
    assert warnings[-1] == f"ws: {5000 - endpoints.SHOWN_SKIPPED} more entries skipped"
    # A download refused for another reason still gives its warnings, as before.
    warnings = []
    with pytest.raises(PolicyError):
        policy_from_endpoints_json([*feed, endpoint_set(1)], "v", {"Optimize"}, warnings=warnings)
    assert len(warnings) == endpoints.SHOWN_SKIPPED + 1


# -- the kept copy: state_dir/endpoints.json ---------------------------------------------------


def kept(sets: object, version: str = "2024103100") -> str:
    return json.dumps({"instance": "Worldwide", "tenant": None, "version": version,
                       "endpoints": sets})  # fmt: skip


UNUSABLE = {
    "cut short": ('{"instance": "Worldwide", "endpoints": [{"id": 1', "not JSON: "),
    "nested 100000 deep": (
        '{"instance":"Worldwide","endpoints":' + "[" * 100_000 + "]" * 100_000 + "}",
        "refused unparsed",
    ),
    "nested 20 deep": (
        '{"instance":"Worldwide","endpoints":' + "[" * 20 + "]" * 20 + "}",
        "nested deeper than 16 levels: refused unparsed",
    ),
    "larger than 8 MiB": (
        kept([endpoint_set(7, notes="x" * (9 * 1024 * 1024))]),
        f"larger than {8 * 1024 * 1024} bytes",
    ),
    "an id out of range": (
        kept([*SAMPLE, endpoint_set(10**11)]),
        "endpoints:Worldwide: /5/id: 100000000000 is out of range 1-2147483647",
    ),
    "a version that could end a line": (
        kept(SAMPLE, version="2024103100\nFindProxyForURL = 1; //"),
        "/version: '2024103100\\nFindProxyForURL = 1; //' is no version",
    ),
    "not an object": ("[]", "expected a JSON object"),
    "no list of sets": (
        '{"instance": "Worldwide", "endpoints": {}}',
        "/endpoints: expected a list",
    ),
}


def write_config(tmp_path: Path) -> str:
    config = tmp_path / "resolverd.yaml"
    config.write_text(
        f"upstreams: ['192.0.2.53']\nstate_dir: {tmp_path / 'state'}\n"
        "policy: {endpoints: {url: 'https://127.0.0.1:9'}}\n"
    )
    (tmp_path / "state").mkdir()
    return str(config)


@pytest.fixture
def config(tmp_path: Path) -> str:
    return write_config(tmp_path)


def rows(config: str) -> list[int]:
    return sorted(rule.row for rule in load_everything(config).policy.rules)


@pytest.mark.parametrize("case", UNUSABLE)
def test_an_unusable_kept_copy_is_left_out_and_the_start_goes_on(
    case: str, config: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """load_everything is what both the daemon's start and ``--cleanup`` run first."""
    without = rows(config)
    path = tmp_path / "state" / "endpoints.json"
    path.write_text(kept(SAMPLE))
    assert rows(config) == sorted([*without, 1, 11, 31])  # a usable copy is merged
    body, reason = UNUSABLE[case]
    path.write_text(body)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "resolverd.policy"):
        assert rows(config) == without
    [message] = caplog.messages
    assert message.startswith(f"{path}: unusable endpoint cache: ")
    assert reason in message
    assert message.endswith("; left out until the next version check downloads it again")


def test_a_directory_in_place_of_the_kept_copy_is_left_out(
    config: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    without = rows(config)
    (tmp_path / "state" / "endpoints.json").mkdir()
    with caplog.at_level(logging.WARNING, "resolverd.policy"):
        assert rows(config) == without
    [message] = caplog.messages
    assert message.startswith(f"{tmp_path / 'state' / 'endpoints.json'}: unusable endpoint cache")


def test_resolverctl_is_warned_of_an_unusable_kept_copy(
    config: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """resolverctl explain and policy export pass ``warnings``: shown on stderr, not logged."""
    without = rows(config)
    path = tmp_path / "state" / "endpoints.json"
    path.write_text(UNUSABLE["cut short"][0])
    warnings: list[str] = []
    with caplog.at_level(logging.DEBUG, "resolverd.policy"):
        policy = effective_policy(load_config(config), warnings=warnings)
    assert sorted(rule.row for rule in policy.rules) == without
    assert caplog.messages == []
    [warning] = warnings
    assert warning.startswith(f"{path}: unusable endpoint cache: not JSON: ")


def test_many_refused_sets_make_one_line_naming_three(
    config: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state" / "endpoints.json"
    path.write_text(kept([endpoint_set(10**11 + i) for i in range(50)]))
    with caplog.at_level(logging.WARNING, "resolverd.policy"):
        load_everything(config)
    [message] = caplog.messages
    assert message.count("is out of range") == 3
    assert "/2/id: 100000000002 is out of range" in message
    assert "(and 47 more)" in message


# -- the kept Retry-After deadline: state_dir/endpoints-retry-after ----------------------------


def test_a_deadline_years_away_is_cut_to_a_day_and_kept_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / RETRY_FILE
    path.write_text("9999-12-31T00:00:00+00:00\n")
    with caplog.at_level(logging.WARNING, "resolverd.policy"):
        feed = EndpointFeed(str(tmp_path), clock=lambda: NOW)
    assert feed.retry_at == NOW + DAY
    assert caplog.messages == [
        f"{path}: 9999-12-31T00:00:00+00:00 is more than 86400 s away: cut to 2024-10-28T03:33:20Z"
    ]
    # kept cut: a restart a day later may ask again, whatever the file said
    assert path.read_text() == "2024-10-28T03:33:20Z\n"
    assert EndpointFeed(str(tmp_path), clock=lambda: NOW + 3600).retry_at == NOW + DAY
    assert not EndpointFeed(str(tmp_path), clock=lambda: NOW + DAY).rate_limited()


def test_a_deadline_within_a_day_is_kept_as_written(tmp_path: Path) -> None:
    path = tmp_path / RETRY_FILE
    for text, when in [
        (utc_iso(NOW + DAY), NOW + DAY),
        ("2024-10-27T06:33:20+02:00", NOW + 3600),
        ("2024-10-27T03:00:00Z", NOW - 2000),  # past: no wait
    ]:
        path.write_text(text + "\n")
        assert EndpointFeed(str(tmp_path), clock=lambda: NOW).retry_at == when


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time 14 hours ahead of UTC (a POSIX TZ string: no zone files needed)."""
    monkeypatch.setenv("TZ", "KIR-14")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("far_from_utc")
def test_a_deadline_without_a_time_zone_is_utc(tmp_path: Path) -> None:
    assert time.localtime(NOW).tm_hour == 17  # the fixture is in force: 03:33 UTC is 17:33
    (tmp_path / RETRY_FILE).write_text("2024-10-27T04:33:20\n")
    feed = EndpointFeed(str(tmp_path), clock=lambda: NOW)
    assert feed.retry_at == NOW + 3600


@pytest.mark.parametrize(
    "text",
    ["", "tomorrow", "2024-10-27T04:33:20+25:00", "2024-10-27T04:33:20\u00a0", "inf", "1e400"],
)
def test_an_unreadable_deadline_is_ignored_and_logged(
    text: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / RETRY_FILE
    path.write_bytes(text.encode() + b"\n")
    with caplog.at_level(logging.WARNING, "resolverd.policy"):
        feed = EndpointFeed(str(tmp_path), clock=lambda: NOW)
    assert (feed.retry_at, feed.rate_limited()) == (None, False)
    [message] = caplog.messages
    assert message.startswith(f"{path}: unusable, ignored: ")
