"""resolverd (a process, as in test_feed_daemon.py) started on a kept copy of the endpoint sets
(``state_dir/endpoints.json``) that cannot be used: it starts without them, says once which
file and why, and its first version check downloads them again, even when the service's version
is the one the copy claims. A download with an endpoint set id the hold journal could not read
back is refused, naming the entry."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakeendpoints import SAMPLE, FakeService, serving
from tests.integration.test_daemon import BUILTIN_RULES, Resolverd, UpstreamThread

pytestmark = pytest.mark.integration

SAMPLE_RULES = 3  # the sample's required sets in Optimize and Allow: 1, 11, 31
HUGE_ID = {**SAMPLE[0], "id": 10**11}


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
