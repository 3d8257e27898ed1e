"""The field names of `resolverctl status --json`, pinned: every key path a running resolverd
sends, against the lists below. DESIGN.md's "Interface contract" says extend, never rename:
adding a field is a change of these lists, renaming one fails the test. The model
(resolver.statusmodel) must name exactly what is sent, too.

resolverd runs as a process (test_daemon.py's harness), with breakout in dry-run on `lo` (every
breakout field, the dry-run decisions included, without root), a monitor connected (always, in
the daemon) and one control connection refused (`control` appears then); and with breakout off.
A path is `a.b` for field b of object a, and `a[].b` for field b of the objects in list a.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints, is_typeddict

import pytest

from resolver.statusmodel import Status
from tests.integration.test_control import request_line
from tests.integration.test_daemon import CountingUpstream, Resolverd, UpstreamThread, addresses

pytestmark = pytest.mark.integration

ZONE: dict[str, list[dict[str, Any]]] = {
    "outlook.office365.com": [{"type": "A", "value": "52.96.1.2", "ttl": 60}],
}
DRY_RUN = "breakout: {mode: dry-run, interface: lo}\n"
OFF = "breakout: {mode: off, interface: wan0}\n"  # a link, so that `links` has one
CONTROL_CONNECTIONS = 32  # ControlServer's max_connections: one more is refused

# DESIGN.md's contract: at least these, under these names.
CONTRACT = [
    "uptime_s", "listen", "upstreams", "upstreams[].address", "upstreams[].healthy",
    "upstreams[].rtt_ms", "upstreams[].role",
    "cache", "cache.entries", "cache.hits", "cache.misses",
    "queries", "queries.total", "queries.tagged", "queries.refused", "queries.servfail",
    "policy", "policy.source", "policy.version", "policy.rules",
    "breakout", "breakout.interface", "breakout.link_up", "breakout.table", "breakout.routes_v4",
    "breakout.routes_v6", "breakout.cidr_routes", "breakout.ipset_v4", "breakout.ipset_v6",
    "breakout.errors", "breakout.active", "breakout.links", "breakout.links[].interface",
    "breakout.links[].link_up", "breakout.links[].healthy",
]  # fmt: skip

# Every key path, breakout in dry-run, a control connection refused; one line per object, in
# the order the daemon sends them.
PINNED = [
    "version", "build", "uptime_s", "config", "listen",
    "upstreams", "upstreams[].address", "upstreams[].healthy", "upstreams[].rtt_ms",
    "upstreams[].role",
    "cache", "cache.entries", "cache.hits", "cache.misses", "cache.evicted", "cache.bytes",
    "cache.client_evicted",
    "queries", "queries.total", "queries.tagged", "queries.refused", "queries.servfail",
    "queries.noerror", "queries.nxdomain", "queries.formerr", "queries.notimp", "queries.other",
    "queries.dropped", "queries.ratelimited", "queries.pending_full",
    "forwarding", "forwarding.breakout_fallbacks", "forwarding.spliced",
    "forwarding.routes_deferred", "forwarding.canaries", "forwarding.addresses_capped",
    "udp", "udp.send_dropped", "udp.errors",
    "tcp", "tcp.connections", "tcp.rejected", "tcp.evicted", "tcp.client_evicted",
    "tcp.slow_closed", "tcp.idle_closed", "tcp.stalled_closed", "tcp.oversized",
    "tcp.backlog_closed", "tcp.errors",
    "policy", "policy.source", "policy.version", "policy.rules", "policy.last_check",
    "policy.last_error", "policy.next_check",
    "breakout", "breakout.interface", "breakout.link_up", "breakout.table", "breakout.routes_v4",
    "breakout.routes_v6", "breakout.cidr_routes", "breakout.ipset_v4", "breakout.ipset_v6",
    "breakout.errors", "breakout.active",
    "breakout.links", "breakout.links[].interface", "breakout.links[].link_up",
    "breakout.links[].healthy", "breakout.links[].ready_v4", "breakout.links[].ready_v6",
    "breakout.links[].probe_rtt_ms",
    "breakout.mode", "breakout.active_v4", "breakout.active_v6", "breakout.ready_v4",
    "breakout.ready_v6", "breakout.holds", "breakout.resolver_routes", "breakout.nftset_v4",
    "breakout.nftset_v6", "breakout.skipped", "breakout.ack_timeouts", "breakout.capped",
    "breakout.failovers",
    "breakout.journal", "breakout.journal.file", "breakout.journal.writable",
    "breakout.journal.errors", "breakout.journal.last_error", "breakout.journal.problems",
    "breakout.counters", "breakout.counters.installed", "breakout.counters.removed",
    "breakout.counters.refreshed", "breakout.counters.skipped", "breakout.counters.netlink_errors",
    "breakout.counters.ack_timeouts", "breakout.counters.capped", "breakout.counters.withdrawn",
    "breakout.counters.restored", "breakout.counters.adopted", "breakout.counters.route_lost",
    "breakout.counters.repaired", "breakout.counters.failovers",
    "breakout.counters.journal_errors", "breakout.counters.client_capped",
    "breakout.netlink_latency", "breakout.netlink_latency.samples",
    "breakout.netlink_latency.p50_ms", "breakout.netlink_latency.p99_ms",
    "breakout.netlink_latency.max_ms",
    "breakout.connected_networks",
    "breakout.traffic", "breakout.traffic_since", "breakout.conntrack_flushed",
    "breakout.dry_run_decisions", "breakout.dry_run_decisions[].time",
    "breakout.dry_run_decisions[].action", "breakout.dry_run_decisions[].address",
    "breakout.dry_run_decisions[].names", "breakout.dry_run_decisions[].reason",
    "breakout.dry_run_decisions_total",
    "monitor", "monitor.watchers", "monitor.events", "monitor.dropped",
    "control", "control.connections", "control.refused",
]  # fmt: skip

# The breakout object while breakout is off: the contract's fields and the mode (the rest of the
# object is as above, less `control` while nothing was refused).
PINNED_OFF = [
    "breakout", "breakout.mode", "breakout.interface", "breakout.link_up", "breakout.table",
    "breakout.routes_v4", "breakout.routes_v6", "breakout.cidr_routes", "breakout.ipset_v4",
    "breakout.ipset_v6", "breakout.errors", "breakout.active",
    "breakout.links", "breakout.links[].interface", "breakout.links[].link_up",
    "breakout.links[].healthy",
]  # fmt: skip


def changes(paths: set[str], pinned: list[str]) -> tuple[list[str], list[str]]:
    """(paths sent but not pinned, paths pinned but not sent); a pinned path is listed once."""
    assert len(set(pinned)) == len(pinned), "a path is pinned twice"
    return sorted(paths - set(pinned)), sorted(set(pinned) - paths)


def key_paths(value: object, prefix: str = "") -> set[str]:
    """Every key path in a JSON value."""
    paths: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.add(path)
            paths |= key_paths(item, path)
    elif isinstance(value, list):
        for item in value:
            paths |= key_paths(item, prefix + "[]")
    return paths


def model_paths(kind: object, prefix: str = "") -> set[str]:
    """Every key path resolver.statusmodel declares under `kind` (a TypedDict, a list of them,
    or a leaf); a dict[str, ...] (the breakout's counters) has no fixed keys: none below it."""
    if get_origin(kind) is list:
        (item,) = get_args(kind)
        return model_paths(item, prefix + "[]")
    if not is_typeddict(kind):
        return set()
    paths: set[str] = set()
    for key, hint in get_type_hints(kind).items():
        path = f"{prefix}.{key}" if prefix else key
        paths.add(path)
        paths |= model_paths(hint, path)
    return paths


class Upstream(UpstreamThread):
    def __init__(self) -> None:
        super().__init__()
        self.fake = CountingUpstream(ZONE)


@pytest.fixture
def rd(tmp: Path) -> Iterator[Resolverd]:
    with Upstream() as upstream:
        daemon = Resolverd(tmp, upstream.fake)
        try:
            yield daemon
        finally:
            daemon.close()


def refuse_one_control_connection(path: str) -> None:
    """Take every control connection, then one more: the daemon answers it Busy."""
    with contextlib.ExitStack() as stack:
        for _ in range(CONTROL_CONNECTIONS):
            sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(request_line("ping"))
            assert json.loads(sock.makefile("rb").readline())["ok"] is True
        extra = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        extra.settimeout(5)
        extra.connect(path)
        extra.sendall(request_line("ping"))
        assert json.loads(extra.makefile("rb").readline())["error"]["name"] == "Busy"


# Only from a kernel-mode daemon that counts traffic (tests/netns/test_breakout_traffic.py sees
# them): a dry run has no counter rows and no counting error.
COUNTING = {
    "breakout.traffic[].row", "breakout.traffic[].category", "breakout.traffic[].link",
    "breakout.traffic[].bytes", "breakout.traffic[].packets", "breakout.traffic_error",
}  # fmt: skip


def test_every_field_name_of_status_json_is_pinned(rd: Resolverd) -> None:
    rd.write_config(DRY_RUN)
    rd.start()
    assert addresses(rd.ask("outlook.office365.com")) == ["52.96.1.2"]  # a dry-run decision
    refuse_one_control_connection(str(rd.socket))
    status = rd.status()
    paths = key_paths(status)
    assert changes(paths, PINNED) == ([], []), "status --json: fields (added, lost or renamed)"
    assert set(CONTRACT) <= paths
    counters = {p for p in paths if p.startswith("breakout.counters.")}
    model = model_paths(Status)
    assert model >= COUNTING, "the traffic rows' fields (kernel mode only) were renamed"
    assert model - COUNTING == paths - counters, "resolver.statusmodel names other fields"
    assert status["control"]["refused"] == 1 and status["monitor"]["watchers"] == 0
    assert [d["action"] for d in status["breakout"]["dry_run_decisions"]] == ["install"]
    # What an operator reads: the control block in the text form too.
    text = rd.ctl("status").stdout
    assert "\nControl\n  Connections: " in text and "\n      Refused: 1\n" in text


def test_the_breakout_fields_while_breakout_is_off(rd: Resolverd) -> None:
    rd.write_config(OFF)
    rd.start()
    status = rd.status()
    paths = key_paths(status)
    breakout = {p for p in paths if p == "breakout" or p.startswith("breakout.")}
    assert changes(breakout, PINNED_OFF) == ([], [])
    assert set(CONTRACT) <= paths
    rest = {p for p in PINNED if not p.startswith(("breakout", "control"))}
    assert paths - breakout == rest  # the same, less `control` (nothing refused)
    assert "Control" not in rd.ctl("status").stdout  # nothing refused: no block
