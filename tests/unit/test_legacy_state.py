"""resolverd 0.1's state file (records.LEGACY_FILE), read by a start that finds no hold journal,
is held to the journal's rules record by record: a hostile file forges no hold, gives none that
outlives the longest hold the config allows, fails no start, and costs only its bad records,
each reported as a bad journal line is (the file is then not trusted)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from resolver.net import records
from resolver.net.breakout import Breakout
from tests.unit.breakout_fakes import WALL, Clock, FakeKernel, make_breakout, make_cfg, run

pytestmark = pytest.mark.unit

NOW = 1000.0  # the monotonic clock at start; the wall clock is WALL ahead
EXPIRES = WALL + NOW + 500  # wall clock: 500 s after the start
GOOD = {"expires": EXPIRES, "row": 1, "names": {"outlook.office.com": EXPIRES}}
BAD = "203.0.113.2"
LONGEST = make_cfg().max_hold  # the longest hold an answer can give


def with_good(address: str, hold: object) -> bytes:
    """A legacy file: GOOD at 203.0.113.1, and `hold` at `address`."""
    return json.dumps({"holds": {"203.0.113.1": GOOD, address: hold}}).encode()


async def start(tmp_path: Any, kernel: FakeKernel) -> Breakout:
    b = make_breakout(tmp_path, kernel=kernel, clock=Clock(NOW))
    await b.start()
    return b


Routes = dict[str, dict[str, Any]]


def routes(b: Breakout) -> Routes:
    """What `resolverctl routes` lists, by address."""
    return {r["address"]: r for r in b.routes()}


def problems(b: Breakout) -> list[str]:
    """What `resolverctl status` shows under breakout.journal.problems."""
    found: list[str] = b.status()["journal"]["problems"]
    return found


def started_with(tmp_path: Any, data: bytes, address: str = BAD) -> tuple[list[str], Routes]:
    """Start on the legacy file `data`, check what every hostile file must leave (no hold for
    `address`, none beyond the longest, the file reported), then restart on the journal that
    start wrote: trusted, and holding the same. The first start's problems and routes."""
    (tmp_path / records.LEGACY_FILE).write_bytes(data)
    seen: list[str] = []
    held: Routes = {}

    async def body() -> None:
        kernel = FakeKernel()
        b = await start(tmp_path, kernel)
        held.update(routes(b))
        assert address not in held
        assert all(r["hold_s"] <= LONGEST for r in held.values())
        seen.extend(problems(b))
        assert seen, "the hostile record was not reported"
        await b.stop()
        again = await start(tmp_path, kernel)
        assert problems(again) == []
        assert routes(again).keys() == held.keys()
        await again.stop()

    run(body)
    return seen, held


def only_bad_reported(seen: list[str], address: str = BAD, reason: str = "") -> None:
    assert len(seen) == 1, seen
    assert f"{records.LEGACY_FILE}: hold {address!r}" in seen[0] and reason in seen[0], seen


def good_kept(held: Routes) -> bool:
    good = held.get("203.0.113.1")
    return good is not None and good["names"] == ["outlook.office.com"] and good["hold_s"] == 500


def test_a_newline_in_a_name_forges_no_hold(tmp_path: Any) -> None:
    forged = f"x.office.com\n+ 198.51.100.66 {WALL + NOW + 600:.0f} 1 evil.office.com"
    data = with_good(BAD, {"expires": EXPIRES, "row": 1, "names": {forged: EXPIRES}})
    seen, held = started_with(tmp_path, data)  # the restart reads the journal written from it
    only_bad_reported(seen, reason="not a name resolverd writes")
    assert "\n" not in seen[0]  # the name is quoted in the log and in status
    assert good_kept(held), held
    assert "198.51.100.66" not in held
    assert "198.51.100.66" not in records.load(str(tmp_path)).holds


@pytest.mark.parametrize(
    "name",
    ["x\udcff.office.com", "x\x00.office.com", "X.Office.com", "x office.com"],
    ids=["not-text", "nul", "upper-case", "space"],
)
def test_a_name_resolverd_would_not_write_is_refused(tmp_path: Any, name: str) -> None:
    data = with_good(BAD, {"expires": EXPIRES, "row": 1, "names": {name: EXPIRES}})
    seen, held = started_with(tmp_path, data)
    only_bad_reported(seen, reason="not a name resolverd writes")
    assert good_kept(held), held


@pytest.mark.parametrize(
    "expires",
    [1e18, 1e308, 10**4000, WALL + NOW + 7 * 86400],
    ids=["1e18", "1e308", "4001-digits", "a-week-away"],
)
def test_an_expiry_beyond_the_longest_hold_is_refused(tmp_path: Any, expires: float) -> None:
    data = with_good(BAD, {"expires": expires, "row": 1, "names": {"x.office.com": expires}})
    seen, held = started_with(tmp_path, data)
    only_bad_reported(seen, reason="expiry")
    assert good_kept(held), held


@pytest.mark.parametrize("expires", [float("inf"), float("-inf"), float("nan")])
def test_a_non_finite_expiry_is_refused(tmp_path: Any, expires: float) -> None:
    data = with_good(BAD, {"expires": expires, "row": 1, "names": {"x.office.com": expires}})
    seen, held = started_with(tmp_path, data)
    only_bad_reported(seen, reason="expiry")
    assert good_kept(held), held


@pytest.mark.parametrize("expires", [float("inf"), float("nan"), 1e18])
def test_a_holds_own_expires_cannot_stretch_it(tmp_path: Any, expires: float) -> None:
    """0.1 wrote the latest of the names' expiries there: the hold lasts as its names do."""
    hold = {"expires": expires, "row": 1, "names": {"outlook.office.com": EXPIRES}}
    (tmp_path / records.LEGACY_FILE).write_bytes(json.dumps({"holds": {BAD: hold}}).encode())

    async def body() -> None:
        b = await start(tmp_path, FakeKernel())
        assert routes(b)[BAD]["hold_s"] == 500
        assert problems(b) == []
        await b.stop()

    run(body)


@pytest.mark.parametrize(
    ("address", "canonical"),
    [("2001:DB8:365::5", "2001:db8:365::5"), ("2001:db8:365:0:0:0:0:5", "2001:db8:365::5"),
     ("203.0.113.2 ", "203.0.113.2")],
    ids=["upper-case", "not-compressed", "space"],
)  # fmt: skip
def test_an_address_not_in_its_canonical_form_is_refused(
    tmp_path: Any, address: str, canonical: str
) -> None:
    seen, held = started_with(tmp_path, with_good(address, GOOD), canonical)
    only_bad_reported(seen, address)
    assert "not an address" in seen[0] or "not in its canonical form" in seen[0]
    assert good_kept(held), held


@pytest.mark.parametrize(
    "hold",
    [
        5,
        [],
        {"expires": EXPIRES, "row": 1, "names": ["x.office.com"]},
        {"expires": EXPIRES, "row": 1},
        {"expires": EXPIRES, "row": 1, "names": {}},
        {"expires": EXPIRES, "row": "1", "names": {"x.office.com": EXPIRES}},
        {"expires": EXPIRES, "row": True, "names": {"x.office.com": EXPIRES}},
        {"expires": EXPIRES, "row": None, "names": {"x.office.com": EXPIRES}},
        {"expires": EXPIRES, "row": -1, "names": {"x.office.com": EXPIRES}},
        {"expires": EXPIRES, "row": 1.5, "names": {"x.office.com": EXPIRES}},
        {"expires": str(EXPIRES), "row": 1, "names": {"x.office.com": str(EXPIRES)}},
        {"expires": EXPIRES, "row": 1, "names": {"x.office.com": True}},
        {"expires": EXPIRES, "row": 1, "names": {"x.office.com": {}}},
    ],
    ids=[
        "hold-number", "hold-list", "names-list", "no-names", "names-empty", "row-text", "row-true",
        "row-null", "row-negative", "row-fraction", "expiry-text", "expiry-true",
        "expiry-object",
    ],
)  # fmt: skip
def test_a_wrong_type_costs_only_its_own_hold(tmp_path: Any, hold: object) -> None:
    seen, held = started_with(tmp_path, with_good(BAD, hold))
    only_bad_reported(seen)
    assert good_kept(held), held


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000,
        b'{"holds": {"203.0.113.2": {"names": {"x.office.com": ' + b"[" * 100_000 + b"}}}",
        b"\xc3\x28\x00\xff garbage \x80\xfe",
        b"null",
        b'{"holds": []}',
    ],
    ids=["deep-nesting", "deep-in-a-hold", "not-utf8", "null", "holds-list"],
)
def test_garbage_fails_no_start(tmp_path: Any, data: bytes) -> None:
    """Deep nesting failed the start before; the other files were already refused whole and
    keep that behaviour through the new shape checks."""
    seen, held = started_with(tmp_path, data)
    assert held == {}
    assert len(seen) == 1 and f"{records.LEGACY_FILE}: unreadable: " in seen[0], seen
