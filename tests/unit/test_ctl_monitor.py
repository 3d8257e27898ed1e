"""resolverctl monitor's text form: one aligned line per query, the tagged details after it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from resolver.ctl.monitor import Table, clock, details
from resolver.ctl.status import render_status

pytestmark = pytest.mark.unit

T = 1_700_000_000.25


def event(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "time": T, "client": "10.1.0.23", "name": "www.example.test", "type": "A",
        "rcode": "NOERROR", "source": "198.51.100.53:53", "row": None, "via": None,
        "pattern": None, "addresses": [], "installed": [], "waited_ms": 0.0,
    }  # fmt: skip
    return {**base, **over}


TEAMS = event(
    name="teams.microsoft.com",
    source="cache",
    row=10,
    via="teams.microsoft.com",
    pattern="*.microsoft.com",
    addresses=["52.112.0.10", "52.112.0.11"],
    installed=["52.112.0.11"],
    waited_ms=1.234,
)


def test_clock_is_local_time_with_milliseconds() -> None:
    assert clock(T) == time.strftime("%H:%M:%S", time.localtime(T)) + ".250"
    assert clock(None) == "-" and clock(True) == "-"


def test_details_only_for_tagged_answers() -> None:
    assert details(event()) == ""
    assert details(TEAMS) == (
        "row=10 via=teams.microsoft.com pattern=*.microsoft.com "
        "addresses=52.112.0.10,52.112.0.11 installed=52.112.0.11 waited=1.23ms"
    )
    bare = details(event(row=3, via="outlook.office365.com", waited_ms=None))
    assert "pattern=- addresses=- installed=- waited=-" in bare


def test_lines_are_aligned_under_one_header() -> None:
    table = Table()
    first = table.render(event())
    header, line = first.splitlines()
    assert header.split() == ["TIME", "CLIENT", "NAME", "TYPE", "RCODE", "SOURCE"]
    second = table.render(TEAMS)
    assert second.count("\n") == 1  # no new header: nothing grew
    canary = table.render(event(name="use-application-dns.net", rcode="NXDOMAIN", source="local"))
    for column in ("CLIENT", "NAME", "TYPE", "RCODE", "SOURCE"):
        at = header.index(column)
        assert line[at - 2 : at] == "  " and line[at] != " "
        assert second[at - 2 : at] == "  " and canary[at] != " "
    assert second.rstrip().endswith("waited=1.23ms")
    assert not line.endswith(" \n") and line == line.rstrip()


def test_a_wider_value_widens_its_column_and_repeats_the_header() -> None:
    table = Table()
    table.render(event())
    wide = table.render(event(client="2001:db8:aaaa:bbbb:cccc:dddd:eeee:1"))
    header, line = wide.splitlines()
    assert header.startswith("TIME")
    assert header.index("NAME") == line.index("www.example.test")
    assert table.render(event(client="10.1.0.1")).count("\n") == 1  # the width stays
    # A name beyond the column's limit widens it to the limit; the rest shifts only its line.
    long_name = "x" * 70 + ".example"
    assert table.render(event(name=long_name)).count("\n") == 2
    line = table.render(event(name=long_name + ".more"))
    assert long_name in line and line.count("\n") == 1
    assert table.widths[2] == 60


def test_odd_events_do_not_break_the_table() -> None:
    table = Table()
    line = table.render({"name": ""})
    assert "." in line and "-" in line


def test_status_shows_the_monitor_block_when_the_daemon_reports_it() -> None:
    text = render_status({"monitor": {"watchers": 1, "events": 5000, "dropped": 12}})
    assert "\nMonitor\n  Watchers: 1\n    Events: 5000\n   Dropped: 12\n" in text
    assert "Monitor" not in render_status({})  # an older daemon: no block
