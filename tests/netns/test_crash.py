"""Crash consistency: SIGKILL at any moment under load never loses a live route (netns, root).

Two daemons run side by side in the lab's router, each with its own table, rule, route
protocol, port and address pools: "a" with ipsets, "b" without. Each gets a client load of
fresh Microsoft 365 names (crashagents `load`: resolve, connect at once, and keep connecting
to the addresses whose hold is live). They are SIGKILLed in turn, at random moments and right
after an answer, and restarted. Evidence, all of it from the kernel or the wire:

- a netlink listener in the router (crashagents `watch`) records every route deleted from the
  two tables as it happens: no route may go while a client's answer still holds it, not even
  for an instant (the hold of an answer runs at least HOLD seconds from when its query was
  sent);
- right after each restart every address whose hold is still live is in the table (and in the
  set), and every route of ours in the table is a hold of the restarted daemon (none leaked);
- the last address answered before a kill is routed after the restart, whatever the timing;
- the prober's connections to live addresses always reached the breakout server;
- finally both are killed and left down until every hold has lapsed, journal slack included:
  a restart then removes every route and set entry at once.

A second test damages the journal (a bad line in the middle) while the daemon is down: the
restart keeps every route in the kernel and says why in status.
"""

from __future__ import annotations

import os
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from resolver.net.journal import AHEAD
from resolver.net.records import UNACCOUNTED
from tests.netns.crashkit import (
    HOLD_MARGIN,
    Lines,
    Resolverd,
    Upstream,
    agent,
    anyip,
    ask,
    v4_name,
    zone,
)
from tests.netns.lab import BREAKOUT_GW4, ROUTER_LAN4, Lab

pytestmark = pytest.mark.netns

HOLD = 3  # min_hold, grace 0; the zone's TTL is 1 s: every answer holds for 3 s
N4, N6 = 60, 3000
POOLS = {
    "a": ([f"203.0.113.{64 + i}" for i in range(N4)], "2001:db8:365:a::"),
    "b": ([f"203.0.113.{128 + i}" for i in range(N4)], "2001:db8:365:b::"),
}
PORTS = {"a": 53, "b": 5353}


@pytest.fixture(scope="module")
def env(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, str]]:
    tmp = str(tmp_path_factory.mktemp("crash"))
    anyip(lab, ["203.0.113.64/26", "203.0.113.128/26", "2001:db8:365:a::/64",
                "2001:db8:365:b::/64"])  # fmt: skip
    records: dict[str, Any] = {}
    for label, (v4, v6) in POOLS.items():
        records.update(zone(label, v4, v6, N6))
    Upstream(lab, tmp, records)
    yield lab, tmp


def load(lab: Lab, label: str) -> Lines:
    args = (ROUTER_LAN4, str(PORTS[label]), label, str(HOLD), str(N4), str(N6))
    return agent(lab, lab.client, "load", *args)


def pool(label: str, address: str) -> bool:
    v4, v6 = POOLS[label]
    return address.startswith(v6) if ":" in address else address in v4


class Record:
    """What one daemon's load saw: the latest answer per address, in order of arrival."""

    def __init__(self, lines: Lines) -> None:
        self.lines = lines

    def answers(self, until: float = float("inf")) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for item in list(self.lines.items):
            if item.get("k") == "ans" and item["got"] <= until:
                out[item["addr"]] = item
        return out

    def next_answer(self, timeout: float = 10.0) -> dict[str, Any]:
        item = self.lines.wait(lambda i: i.get("k") == "ans", len(self.lines.items), timeout)
        assert item is not None, "the load got no answer"
        return item


def removed_while_held(
    events: list[dict[str, Any]], items: dict[str, list[dict[str, Any]]]
) -> tuple[list[Any], int]:
    """Route deletions (of the pools' addresses) that came before the end of the hold of the
    latest answer the client had received for that address; and how many deletions there were."""
    label = {365: "a", 366: "b"}
    sent: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for lab_name, lines in items.items():
        for i in lines:
            if i.get("k") == "ans":
                sent[(lab_name, i["addr"])].append((i["got"], i["sent"]))
    violations, deletions = [], 0
    for e in events:
        if e.get("op") != "del" or not pool(label[e["table"]], e["dst"]):
            continue
        deletions += 1
        before = [s for got, s in sent[(label[e["table"]], e["dst"])] if got <= e["t"]]
        if before and max(before) + HOLD > e["t"] + 0.01:
            violations.append((e, max(before)))
    return violations, deletions


def check_restart(d: Resolverd, rec: Record, killed: float, last: dict[str, Any] | None,
                  figures: dict[str, Any]) -> None:  # fmt: skip
    """Right after a restart: live holds routed (and in the sets), nothing unaccounted."""
    now = time.monotonic()
    hosts = d.hosts(4) | d.hosts(6)
    entries = d.set_entries(4) | d.set_entries(6)
    held = set(d.routes())
    answered = rec.answers(until=killed)
    live = {a for a, item in answered.items() if item["sent"] + HOLD > now + 0.2}
    figures["live_checked"] += len(live)
    missing = live - hosts
    assert not missing, f"{d.name}: live holds lost their routes in the restart: {missing}"
    assert live <= held, f"{d.name}: live holds not restored: {live - held}"
    if d.ipset4 is not None:
        assert live <= entries, f"{d.name}: live holds lost their set entries: {live - entries}"
    if last is not None:  # answered an instant before the kill: whatever the timing, kept
        assert last["addr"] in hosts and last["addr"] in held, (d.name, last)
        figures["last_answer_kept"] += 1
    ours = {a for a in hosts if pool(d.name, a)}
    assert ours <= held, f"{d.name}: routes nothing holds after the restart: {ours - held}"


def test_sigkill_under_load_never_loses_a_live_route(env: tuple[Lab, str]) -> None:
    lab, tmp = env
    seed = int(os.environ.get("CRASH_SEED") or time.time())
    rng = random.Random(seed)
    daemons = {
        "a": Resolverd(lab, tmp, "a", hold=(HOLD, 0)),
        "b": Resolverd(
            lab,
            tmp,
            "b",
            port=5353,
            table=366,
            priority=1001,
            protocol=246,
            ipsets=False,
            hold=(HOLD, 0),
        ),
    }
    watcher = agent(lab, lab.router, "watch", "365", "366")
    assert watcher.wait(lambda i: i.get("op") == "ready") is not None
    for d in daemons.values():
        d.start()
    loads = {label: Record(load(lab, label)) for label in daemons}
    figures: dict[str, Any] = defaultdict(int)
    restarts: list[float] = []
    try:
        for rec in loads.values():
            for _ in range(5):
                rec.next_answer()
        plan = [("a", "answer"), ("b", "random"), ("a", "random"), ("b", "answer"),
                ("a", "answer"), ("b", "random")]  # fmt: skip
        for label, when in plan:
            d, rec = daemons[label], loads[label]
            last = None
            if when == "answer":
                last = rec.next_answer()
            else:
                time.sleep(rng.uniform(0.1, 1.2))
            killed = d.kill()
            if last is not None:
                figures["kill_after_answer_ms"] = max(
                    figures["kill_after_answer_ms"], round((killed - last["got"]) * 1000, 1)
                )
            restarts.append(d.start())
            check_restart(d, rec, killed, last, figures)
            rec.next_answer()  # the load goes on against the new process
        # Last crash: both down until every hold has lapsed, the journal's slack included.
        for d in daemons.values():
            d.kill()
        items = {label: rec.lines.finish() for label, rec in loads.items()}
        answered = [item for rec in loads.values() for item in rec.answers().values()]
        lapse = max(item["sent"] for item in answered) + HOLD + AHEAD + 2.0
        time.sleep(max(0.0, lapse - time.monotonic()))
        for d in daemons.values():
            d.start()
            ours = {a for a in d.hosts(4) | d.hosts(6) if pool(d.name, a)}
            assert ours == set(), f"{d.name}: lapsed while down, still routed: {ours}"
            assert not {a for a in d.routes() if pool(d.name, a)}
            assert d.set_entries(4) | d.set_entries(6) == set()
            assert len(d.hosts(4)) == 5  # the policy's own prefixes (row 14) stay
    finally:
        items = {label: rec.lines.finish() for label, rec in loads.items()}  # (again: no-op)
        for d in daemons.values():
            d.stop()
        events = watcher.finish()

    assert not [e for e in events if e.get("op") == "overrun"], "route events were lost"
    violations, deletions = removed_while_held(events, items)
    assert not violations, f"routes removed while held: {violations[:5]}"
    for label, lines in items.items():
        wrong = [i for i in lines if i.get("k") == "ans" and i["id"] != "breakout"]
        assert not wrong, f"{label}: first connections that missed the breakout: {wrong[:5]}"
        bad = [i for i in lines if i.get("k") == "bad"]
        assert not bad, f"{label}: connections to live holds that missed it: {bad[:5]}"
        summary = lines[-1]
        assert summary["k"] == "summary" and summary["probes"] > 100
        figures[f"{label}_answers"] = summary["answers"]
        figures[f"{label}_probes"] = summary["probes"]
    assert figures["live_checked"] > 0 and figures["last_answer_kept"] == 3
    assert deletions > 0  # the listener saw the sweeper and the last restart at work
    figures["deletions"] = deletions
    figures["restart_s_max"] = round(max(restarts), 2)
    print(f"\ncrash: seed {seed}, {dict(figures)}, margin {HOLD_MARGIN} s")


def test_a_corrupt_journal_keeps_the_kernels_routes(env: tuple[Lab, str]) -> None:
    lab, tmp = env
    d = Resolverd(lab, tmp, "c", table=367, priority=1002, protocol=247, hold=(60, 0))
    d.start()
    try:
        answered = ask(lab, d.port, [v4_name("a", i) for i in range(4)])
        assert len(answered) == 4 and answered <= d.hosts(4)
        d.kill()
        path = os.path.join(d.state_dir, "holds.journal")
        with open(path, "rb") as fh:
            lines = fh.read().splitlines(keepends=True)
        lines.insert(2, b"this is not a record\n")
        with open(path, "wb") as fh:
            fh.write(b"".join(lines))
        # A route of ours the journal has no record of (its record was lost with the damage).
        stray = "203.0.113.120"
        lab.ip(lab.router, "route", "add", f"{stray}/32", "via", BREAKOUT_GW4, "table", "367",
               "proto", "247")  # fmt: skip
        before = d.hosts(4) | d.hosts(6)
        d.start()
        assert d.hosts(4) | d.hosts(6) == before  # nothing of ours removed
        s = d.status()
        assert s["journal"]["problems"] == [
            f"{path}:3: cannot read b'this is not a record' (unknown record)"
        ]
        routes = d.routes()
        assert answered | {stray} <= set(routes)
        assert routes[stray]["names"] == [UNACCOUNTED] and 55 <= routes[stray]["hold_s"] <= 60
        log = d.log(2)
        assert "cannot be trusted: keeping every route of ours in table 367" in log
    finally:
        d.stop()
