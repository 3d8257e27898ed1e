"""resolver.feed without a network: Retry-After parsing, the schedule, the kept deadline, and
``policy update`` refused while a 429 runs (no request made: the URL leads nowhere)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from resolver.config import EndpointsConfig, PolicyConfig
from resolver.control.protocol import UpdateFailed
from resolver.endpointcache import EndpointSets
from resolver.endpointclient import retry_after
from resolver.endpointerrors import utc_iso
from resolver.feed import EndpointFeed

pytestmark = pytest.mark.unit

NOW = 1_730_000_000.0  # Sun, 27 Oct 2024 03:33:20 GMT


@pytest.mark.parametrize(
    ("header", "wait"),
    [
        ("120", 120),
        (" 0 ", 0),
        ("Sun, 27 Oct 2024 04:33:20 GMT", 3600),
        ("Sun, 27 Oct 2024 03:38:20 -0000", 300),  # no zone given: UTC
        ("Sun, 27 Oct 2024 03:30:00 GMT", 0),  # already past: no wait
        ("Sunday, 27-Oct-24 03:43:20 GMT", 600),  # the obsolete RFC 850 form
        (None, 3600),
        ("", 3600),
        ("soon", 3600),  # not understood: an hour
        ("1.5", 3600),
        ("31536000", 86_400),  # a year: cut to a day
    ],
)
def test_retry_after(header: str | None, wait: int) -> None:
    assert retry_after(header, NOW) == NOW + wait


def test_retry_after_rounds_up_to_a_second() -> None:
    assert retry_after("10", NOW + 0.25) == NOW + 11


def test_utc_iso() -> None:
    assert utc_iso(NOW) == "2024-10-27T03:33:20Z"
    assert utc_iso(NOW + 0.9) == "2024-10-27T03:33:20Z"


def test_unknown_retry_after_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "resolverd.policy"):
        retry_after("soon", NOW)
    assert caplog.messages == ["endpoint web service: Retry-After 'soon' not understood: one hour"]


def _cfg(poll_interval: int = 3600) -> PolicyConfig:
    return PolicyConfig(
        endpoints=EndpointsConfig(url="http://127.0.0.1:9", poll_interval=poll_interval)
    )


async def _never(sets: EndpointSets) -> None:
    raise AssertionError("nothing may be applied")


def test_update_is_refused_while_rate_limited(tmp_path: Path) -> None:
    (tmp_path / "endpoints-retry-after").write_text("2024-10-27T04:00:00Z\n")
    clock = [NOW]
    feed = EndpointFeed(str(tmp_path), clock=lambda: clock[0])
    cfg = _cfg()
    assert feed.rate_limited()
    assert feed.next_check(cfg.endpoints) == NOW + 1600  # not now: the kept deadline
    assert feed.seconds_to_next_check(cfg.endpoints) == 1600
    with pytest.raises(UpdateFailed) as caught:
        asyncio.run(feed.update(cfg, _never))
    assert caught.value.message == (
        "the endpoint web service answered HTTP 429 (too many requests): "
        "no request to it before 2024-10-27T04:00:00Z"
    )
    assert feed.status(cfg.endpoints) == {
        "last_check": None,
        "last_error": None,
        "next_check": "2024-10-27T04:00:00Z",
    }
    clock[0] = NOW + 1600
    assert not feed.rate_limited()
    assert feed.seconds_to_next_check(cfg.endpoints) == 0


def test_a_bad_deadline_file_is_reported_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "endpoints-retry-after"
    path.write_text("tomorrow\n")
    with caplog.at_level(logging.WARNING, "resolverd.policy"):
        feed = EndpointFeed(str(tmp_path), clock=lambda: NOW)
    assert not feed.rate_limited()
    assert caplog.messages == [f"{path}: unusable, ignored: Invalid isoformat string: 'tomorrow'"]


def test_next_check_follows_the_poll_interval(tmp_path: Path) -> None:
    feed = EndpointFeed(str(tmp_path), clock=lambda: NOW)
    assert feed.next_check(None) is None
    assert feed.seconds_to_next_check(None) is None
    assert feed.next_check(_cfg().endpoints) == NOW  # never checked: due now
    feed.last_check = NOW - 100
    assert feed.next_check(_cfg(600).endpoints) == NOW + 500
    assert feed.next_check(_cfg(60).endpoints) == NOW - 40
    assert feed.seconds_to_next_check(_cfg(60).endpoints) == 0


def test_an_unexpected_error_is_shown_logged_once_and_checked_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug (here the RecursionError a deep body used to raise) ends the check, not the feed:
    it is the last_error, logged with its traceback once, and the next check comes on time."""
    clock = [NOW]
    feed = EndpointFeed(str(tmp_path), clock=lambda: clock[0])
    cfg = _cfg(poll_interval=600)

    def check(cfg: PolicyConfig) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(feed, "check", check)
    message = (
        "endpoint web service: unexpected error: RecursionError: maximum recursion depth exceeded"
    )
    with caplog.at_level(logging.ERROR, "resolverd.policy"):
        with pytest.raises(UpdateFailed) as caught:
            asyncio.run(feed.update(cfg, _never))
        assert caught.value.message == message
        assert feed.status(cfg.endpoints) == {
            "last_check": utc_iso(NOW),
            "last_error": message,
            "next_check": utc_iso(NOW + 600),
        }
        clock[0] = NOW + 600
        with pytest.raises(UpdateFailed):
            asyncio.run(feed.update(cfg, _never))
    assert caplog.messages == [message, f"{message} (again)"]
    assert [record.exc_info is not None for record in caplog.records] == [True, False]
    assert feed.status(cfg.endpoints)["next_check"] == utc_iso(NOW + 1200)
