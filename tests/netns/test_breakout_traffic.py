"""What broke out, and the flows a failover must cut, with the real daemon and real packets.

The lab has two breakout links (``Lab(links=2, nat="snat")``): wan0 to the server answering
"breakout", wan1 to the one answering "breakout2"; both own the service addresses, and the
router translates what leaves each link to that link's own address (`snat`, as
tests/netns/natlab.py does). resolverd probes PROBE4/PROBE6 through each link; an upstream
"dies" when its server drops the probe target's packets (as in tests/netns/test_failover.py).
The client resolves a Microsoft 365 name through resolverd and sends to the answered address.

- the counts (resolverd's nftables table `inet resolverd`, read by `resolverctl status`) match
  what the client sent: bytes are IP packet lengths (IP header included, no link layer), so
  1,000 UDP datagrams of 972 bytes are 1,000 packets and 1,000,000 bytes; a TCP upload is
  within 5% of its payload (its headers); `resolverctl routes --json` has the address's bytes,
  the metrics endpoint the row's; traffic to an address not held is counted nowhere; the counts
  and `traffic_since` survive a restart (SIGTERM, and kill -9), and `resolverd --cleanup`
  deletes the table;
- a TCP flow established through wan0 (so source-NATed to wan0's address) to a held address,
  when wan0's upstream dies and the routes move to wan1: with `flush_conntrack: true` the
  client's next send gets a reset within a few seconds (its entry was deleted, the packet
  NATed afresh on wan1, the server there resets it); with `flush_conntrack: false` it stalls
  (its packets leave wan1 with wan0's address, the answer has no way back) and its conntrack
  entry still carries wan0's NAT; the same when a reload turned the flush off.

The figures (bytes sent and counted, reset and stall times) are printed at the end (pytest -s).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.netns.lab import (
    BREAKOUT2_GW4,
    BREAKOUT2_GW6,
    BREAKOUT_GW4,
    BREAKOUT_GW6,
    PORT,
    PROBE4,
    PROBE6,
    ROUTER_LAN4,
    ROUTER_LAN6,
    ROUTER_WAN1_4,
    ROUTER_WAN4,
    SERVICE4,
    Lab,
    wait_for,
)
from tests.netns.scenario import PRIORITY, PROTOCOL, TABLE, Daemon, query

pytestmark = pytest.mark.netns

ECHO_PORT, SINK_PORT, DISCARD_PORT = 8081, 8082, 9
METRICS = "127.0.0.1:9365"
INTERVAL, FAILURES, SUCCESSES = 0.5, 2, 2
SWITCH = INTERVAL * FAILURES + 3.0  # the longest a move may take after the upstream died
BACK = INTERVAL * SUCCESSES + 3.0  # ... or after it came back
UDP_COUNT, UDP_PAYLOAD = 1000, 972  # 1,000 bytes each at the IP layer (20 + 8 + 972)
TCP_BYTES = 4 * 1024 * 1024
STALL = 4.0  # seconds a client waits for its echo before it calls the flow stalled
RESET_WITHIN = 3.0  # ... and the longest a reset may take with the flush
FIGURES: dict[str, str] = {}  # printed at the end (pytest -s)

# The names the tests resolve (the scenario's zone, answered by the default upstream).
COUNTED = "portal.office.com"  # SERVICE4[0]
FLOWS = {True: "kill.office365.com", False: "flush.office365.com"}  # SERVICE4[47], [48]
NOT_HELD = (SERVICE4[5], SERVICE4[6])  # never in an answer: via the tunnel, and via wan0

# A TCP server that reads and discards everything (v4 and v6): an upload has no answer but
# the server's ACKs, which go the other way and are not counted.
SINK = """
import socket, sys, threading
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
def drain(c):
    with c:
        while c.recv(1 << 16):
            pass
        c.sendall(b"done")
while True:
    threading.Thread(target=drain, args=(s.accept()[0],), daemon=True).start()
"""
# The client's upload: N bytes, then a half-close, then the server's "done" (all received).
UPLOAD = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
left, chunk = int(sys.argv[3]), b"x" * 65536
while left > 0:
    left -= c.send(chunk[: min(left, len(chunk))])
c.shutdown(socket.SHUT_WR)
assert c.recv(16) == b"done"
print("sent", flush=True)
"""


def config(tmp: str, flush_conntrack: bool = True, count_traffic: bool = True) -> str:
    wan0 = f"{{interface: wan0, gateway4: {BREAKOUT_GW4}, gateway6: '{BREAKOUT_GW6}'}}"
    wan1 = f"{{interface: wan1, gateway4: {BREAKOUT2_GW4}, gateway6: '{BREAKOUT2_GW6}'}}"
    return f"""
listen: ["{ROUTER_LAN4}:53", "[{ROUTER_LAN6}]:53"]
upstreams: ["127.0.0.1:5300"]
allow: ["192.0.2.128/25", "2001:db8:c::/64", "127.0.0.0/8"]
state_dir: {tmp}/state
control: {{socket: {tmp}/control.sock}}
metrics: {{listen: "{METRICS}"}}
breakout:
  mode: kernel
  links: [{wan0}, {wan1}]
  health:
    targets: ["{PROBE4}:{PORT}", "[{PROBE6}]:{PORT}"]
    interval: {INTERVAL}
    timeout: 0.4
    failures: {FAILURES}
    successes: {SUCCESSES}
  table: {TABLE}
  rule_priority: {PRIORITY}
  route_protocol: {PROTOCOL}
  ipset4: m365-v4
  ipset6: m365-v6
  min_hold: 300
  grace: 0
  ack_timeout: 5  # generous: other namespaces on this host may hold the rtnl lock
  count_traffic: {"true" if count_traffic else "false"}
  flush_conntrack: {"true" if flush_conntrack else "false"}
"""


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab2() -> Iterator[Lab]:
    if shutil.which("conntrack") is None:
        pytest.fail("tests/netns/test_breakout_traffic.py needs conntrack: run make sysdeps")
    with Lab("bt", links=2, nat="snat") as built:
        for ns in (built.breakout, built.breakout2, built.tunnel):
            for cmd in (
                ("-m", "tests.netns.ctagents", "echo", str(ECHO_PORT)),
                ("-c", SINK, str(SINK_PORT)),
            ):
                proc = built.spawn(ns, sys.executable, *cmd)
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield built
        if FIGURES:
            print("\nmeasured:\n  " + "\n  ".join(f"{k}: {v}" for k, v in FIGURES.items()))


@pytest.fixture(scope="module")
def daemon(lab2: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = str(tmp_path_factory.mktemp("traffic"))
    d = Daemon(lab2, tmp, text=config(tmp))
    try:
        start(d)
        yield d
    finally:
        d.stop()
        lab2.python(lab2.router, "-m", "resolver.daemon", "--cleanup", "--config", d.cfg,
                    check=False)  # fmt: skip


@pytest.fixture(autouse=True)
def _flows_end_with_their_test(lab2: Lab) -> Iterator[None]:
    """Every TCP flow a test made is ended at both ends before the next test, which reads
    exact counts of every row, starts. Left alone, a killed client's socket lives on in the
    kernel: a stalled stream's last line and FIN, retransmitted with backoff for minutes, and
    the RST that answers the echo once they get through, reached a held address seconds later
    and were counted in the next test (2 packets, 98 bytes, in another row)."""
    yield
    end_flows(lab2)


def start(d: Daemon, flush_conntrack: bool | None = None, count_traffic: bool = True) -> None:
    """Start `d` (with a new `flush_conntrack` or `count_traffic`, if given) and wait for both
    links healthy."""
    if flush_conntrack is not None or not count_traffic:
        write(d, True if flush_conntrack is None else flush_conntrack, count_traffic)
    d.start()
    healthy = wait_for(lambda: state(d) == ("wan0", [True, True]), BACK + 3)
    assert healthy, f"not healthy: {d.status()}\n{d.log()}"


def write(d: Daemon, flush_conntrack: bool = True, count_traffic: bool = True) -> None:
    with open(d.cfg, "w") as fh:
        fh.write(config(d.tmp, flush_conntrack, count_traffic))


def state(d: Daemon) -> tuple[Any, list[Any]]:
    s = d.status()
    return s["active"], [link["healthy"] for link in s["links"]]


def resolve(lab: Lab, name: str, qtype: str = "A", counted: bool = True) -> str:
    """Resolve `name` from the client through resolverd; the answer's address, once the
    router holds it: routed through the breakout table and in the counters' map (an element
    goes out within COUNT_DELAY of the route; packets before it are not counted)."""
    answer = query(lab, name, qtype)["answer"]
    address: str = next(value for _, rtype, value, _ in answer if rtype == qtype)
    family = 6 if qtype == "AAAA" else 4
    assert wait_for(lambda: route_dev(lab, address) is not None, 3), lab.table(TABLE, family)
    if counted:
        held = wait_for(lambda: address in held_elements(lab, family), 3)
        assert held, held_elements(lab, family)
    return address


def route_dev(lab: Lab, address: str) -> str | None:
    """The interface the breakout table routes `address` through, or None."""
    family = "-6" if ":" in address else "-4"
    out = lab.ip(lab.router, family, "route", "show", "table", str(TABLE), address, check=False)
    words = out.split()
    return words[words.index("dev") + 1] if "dev" in words else None


def held_elements(lab: Lab, family: int = 4) -> str:
    """The counters' map of `family` as nft lists it ("" without the table)."""
    res = lab.run(
        lab.router, "nft", "list", "map", "inet", "resolverd", f"held{family}", check=False
    )
    return res.stdout


def traffic(d: Daemon) -> dict[tuple[Any, str, str], tuple[int, int]]:
    """(row, category, link) -> (bytes, packets), from `resolverctl status --json`."""
    return {(t["row"], t["category"], t["link"]): (t["bytes"], t["packets"])
            for t in d.status()["traffic"]}  # fmt: skip


def row_key(d: Daemon, address: str, link: str = "wan0") -> tuple[Any, str, str]:
    """The traffic key (row, category, link) of the policy row that holds `address`."""
    row = d.routes()[address]["row"]
    keys = [k for k in traffic(d) if k[0] == row and k[2] == link]
    assert len(keys) == 1, traffic(d)  # one category per row
    return keys[0]


def metrics(lab: Lab) -> list[str]:
    res = lab.python(lab.router, "-c", "import urllib.request; print(urllib.request.urlopen("
                     f"'http://{METRICS}/metrics', timeout=5).read().decode())")  # fmt: skip
    return res.stdout.splitlines()


def udp(lab: Lab, address: str, count: int = UDP_COUNT, size: int = UDP_PAYLOAD) -> None:
    lab.python(lab.client, "-m", "tests.netns.ctagents", "burst", address, str(DISCARD_PORT),
               str(count), str(size))  # fmt: skip


def upload(lab: Lab, address: str, size: int = TCP_BYTES) -> None:
    """Upload `size` bytes to `address`, then wait for the sink's socket to go: it goes when
    the client's last ACK reaches it, so every packet of the flow has been counted."""
    res = lab.python(lab.client, "-c", UPLOAD, address, str(SINK_PORT), str(size), timeout=30)
    assert res.stdout.strip() == "sent", res.stderr
    assert wait_for(lambda: not open_ends(lab, (SINK_PORT,)), 5), open_ends(lab, (SINK_PORT,))


def ss_filter(side: str, ports: tuple[int, ...]) -> str:
    return "( " + " or ".join(f"{side} = :{port}" for port in ports) + " )"


def open_ends(lab: Lab, ports: tuple[int, ...] = (ECHO_PORT, SINK_PORT)) -> list[str]:
    """The ends of the client's flows to the servers' `ports` that may still send: a server's
    socket in any state but LISTEN, the client's in any but TIME-WAIT (which only answers a
    server's end, and sends nothing once that is gone)."""
    ends = [(ns, "sport", "LISTEN") for ns in (lab.breakout, lab.breakout2, lab.tunnel)]
    ends.append((lab.client, "dport", "TIME-WAIT"))
    found = []
    for ns, side, quiet in ends:
        out = lab.run(ns, "ss", "-Htan", ss_filter(side, ports)).stdout
        found += [f"[{ns}] {line}" for line in out.splitlines() if line.split()[:1] != [quiet]]
    return found


def end_flows(lab: Lab) -> None:
    """End every flow between the client and the servers' ECHO_PORT and SINK_PORT at both
    ends (`ss -K`), and wait until no end that may still send is left. The servers' ends go
    first: their RSTs go to the LAN (counted nowhere) and the client answers none."""
    for ns in (lab.breakout, lab.breakout2, lab.tunnel):
        lab.run(ns, "ss", "-K", "-tn", ss_filter("sport", (ECHO_PORT, SINK_PORT)))
    lab.run(lab.client, "ss", "-K", "-tn", ss_filter("dport", (ECHO_PORT, SINK_PORT)))
    assert wait_for(lambda: not open_ends(lab), 5), open_ends(lab)


class ServerCount:
    """An nftables counter in a server's input (the kernel's own oracle): the IP bytes it
    received from the router's wan0 address to `address`:`port`."""

    def __init__(self, lab: Lab, ns: str, address: str, port: int) -> None:
        self.lab, self.ns = lab, ns
        lab.run(ns, "nft", "-f", "-", input=(
            "table inet lab_count {\n  counter seen { }\n"
            "  chain input { type filter hook input priority 0; policy accept;\n"
            f"    ip saddr {ROUTER_WAN4} ip daddr {address} tcp dport {port} counter name seen\n"
            "  }\n}\n"
        ))  # fmt: skip

    def read(self) -> int:
        out = self.lab.run(self.ns, "nft", "list", "counter", "inet", "lab_count", "seen").stdout
        match = re.search(r"bytes (\d+)", out)
        assert match, out
        return int(match.group(1))

    def remove(self) -> None:
        self.lab.run(self.ns, "nft", "delete", "table", "inet", "lab_count", check=False)


# -- counting -------------------------------------------------------------------------------------


def test_bytes_counted_match_what_was_sent(lab2: Lab, daemon: Daemon) -> None:
    address = resolve(lab2, COUNTED)
    assert route_dev(lab2, address) == "wan0"
    hold = daemon.routes()[address]
    row = hold["row"]
    rows = [k for k in traffic(daemon) if k[0] == row and k[2] == "wan0"]
    assert len(rows) == 1, traffic(daemon)  # one category per row
    key = rows[0]
    before = traffic(daemon)
    assert daemon.status()["traffic_since"] is not None

    # 1,000 datagrams: counted exactly, IP header and UDP header included.
    udp(lab2, address)
    after_udp = traffic(daemon)
    sent_udp = UDP_COUNT * (20 + 8 + UDP_PAYLOAD)
    got = (after_udp[key][0] - before[key][0], after_udp[key][1] - before[key][1])
    FIGURES["UDP"] = (
        f"sent {UDP_COUNT} packets, {sent_udp} IP bytes; counted {got[1]} packets, {got[0]} bytes"
    )
    assert got == (sent_udp, UDP_COUNT)
    assert {k: v for k, v in after_udp.items() if k != key} == {
        k: v for k, v in before.items() if k != key
    }  # no other row or link counted them

    # A TCP upload: its payload and its headers (a GSO aggregate counts its headers once).
    oracle = ServerCount(lab2, lab2.breakout, address, SINK_PORT)
    try:
        upload(lab2, address)
        received = oracle.read()
    finally:
        oracle.remove()
    after_tcp = traffic(daemon)
    counted = after_tcp[key][0] - after_udp[key][0]
    FIGURES["TCP"] = (
        f"uploaded {TCP_BYTES} payload bytes; counted {counted} ({counted / TCP_BYTES - 1:+.2%})"
        f", the server's input counter {received}"
    )
    assert TCP_BYTES <= counted <= 1.05 * TCP_BYTES
    assert abs(counted - received) <= 0.01 * received

    # The same figures in routes --json, the metrics and the status text.
    total_bytes, total_packets = after_tcp[key]
    entry = daemon.routes()[address]
    sent_here = sent_udp + counted  # this address is the only one this test sent to
    assert entry["bytes"] - hold.get("bytes", 0) == sent_here
    assert entry["packets"] - hold.get("packets", 0) == after_tcp[key][1] - before[key][1]
    labels = f'row="{key[0]}",category="{key[1]}",link="wan0"'
    exported = metrics(lab2)
    assert f"resolverd_breakout_bytes_total{{{labels}}} {total_bytes}" in exported, [
        line for line in exported if "breakout_bytes" in line
    ]
    assert f"resolverd_breakout_packets_total{{{labels}}} {total_packets}" in exported
    text = daemon.ctl("status").stdout
    assert "Breakout traffic (counted since " in text
    cls = f"{key[0]} {key[1]}".rstrip()
    assert re.search(rf"\n +Row {re.escape(cls)} via wan0: .+, {total_packets} packets\n", text), (
        text
    )

    # IPv6 too: 100 datagrams of 52 bytes are 100 bytes each (40 + 8 + 52).
    address6 = resolve(lab2, COUNTED, "AAAA")
    udp(lab2, address6, 100, 52)
    assert traffic(daemon)[key] == (total_bytes + 100 * 100, total_packets + 100)
    entry6 = daemon.routes()[address6]
    assert (entry6["bytes"], entry6["packets"]) == (100 * 100, 100)
    settled = traffic(daemon)

    # Traffic to addresses not held: through the tunnel, and through wan0 by a route of the
    # router's own (not resolverd's): counted nowhere.
    lab2.ip(lab2.router, "route", "replace", NOT_HELD[1], "via", BREAKOUT_GW4, "dev", "wan0")
    oracle = ServerCount(lab2, lab2.breakout, NOT_HELD[1], SINK_PORT)
    try:
        for other in NOT_HELD:
            udp(lab2, other, 200, 500)
            upload(lab2, other, 256 * 1024)
        assert oracle.read() > 256 * 1024  # it did leave through wan0
    finally:
        oracle.remove()
        lab2.ip(lab2.router, "route", "del", NOT_HELD[1], check=False)
    assert traffic(daemon) == settled
    assert not set(NOT_HELD) & set(daemon.routes())
    elements = held_elements(lab2)
    assert not any(other in elements for other in NOT_HELD), elements


def test_counts_survive_restarts_and_cleanup_removes_the_table(lab2: Lab, daemon: Daemon) -> None:
    address = resolve(lab2, COUNTED)
    udp(lab2, address, 100, 472)  # 500 bytes each
    status = daemon.status()
    counts, since = traffic(daemon), status["traffic_since"]
    assert any(v != (0, 0) for v in counts.values())
    per_address = daemon.routes()[address]["bytes"]
    assert per_address > 0

    for how in ("SIGTERM", "SIGKILL"):
        if how == "SIGTERM":
            daemon.stop()
        else:
            daemon.kill()
        assert "table inet resolverd" in lab2.run(lab2.router, "nft", "list", "tables").stdout
        start(daemon)
        assert daemon.status()["traffic_since"] == since, how
        assert traffic(daemon) == counts, how
        assert daemon.routes()[address]["bytes"] == per_address, how  # the element survived
    key = row_key(daemon, address)
    udp(lab2, address, 10, 472)  # still counted after both restarts, in its row alone
    assert traffic(daemon) == {**counts, key: (counts[key][0] + 5000, counts[key][1] + 10)}
    assert daemon.routes()[address]["bytes"] == per_address + 5000
    FIGURES["restarts"] = f"counts and traffic_since ({since}) kept across SIGTERM and SIGKILL"

    daemon.stop()
    res = lab2.python(lab2.router, "-m", "resolver.daemon", "--cleanup", "--config", daemon.cfg,
                      check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    tables = lab2.run(lab2.router, "nft", "list", "tables").stdout
    assert "resolverd" not in tables, tables
    assert "table inet lab_nat" in tables  # the router's own tables are left alone
    start(daemon)  # a table made anew: counting from zero
    fresh = daemon.status()
    assert fresh["traffic_since"] >= since
    assert all(t["bytes"] == 0 and t["packets"] == 0 for t in fresh["traffic"])


# -- the flows of a failover ----------------------------------------------------------------------


def nat_of(lab: Lab, address: str) -> list[str]:
    """The reply destinations (the NAT) of the router's conntrack entries to `address`."""
    out = lab.run(lab.router, "conntrack", "-L", "-p", "tcp", "-d", address, check=False).stdout
    found = []
    for line in out.splitlines():
        dsts = [w[4:] for w in line.split() if w.startswith("dst=")]
        if len(dsts) == 2:
            found.append(dsts[1])
    return found


@pytest.mark.parametrize(
    ("flush", "by_reload"),
    [(True, False), (False, False), (False, True)],
    ids=["flush", "no-flush", "no-flush-by-reload"],
)
def test_a_flow_survives_the_failover_only_with_the_flush(
    lab2: Lab, daemon: Daemon, flush: bool, by_reload: bool
) -> None:
    """`by_reload`: started with the flush on, then a reload turns it off."""
    daemon.stop()
    start(daemon, flush_conntrack=not flush if by_reload else flush)
    if by_reload:
        write(daemon, flush)
        daemon.ctl("reload")
    lab2.run(lab2.router, "conntrack", "-F", check=False)
    address = resolve(lab2, FLOWS[flush])
    assert route_dev(lab2, address) == "wan0"
    stream = lab2.spawn(
        lab2.client, sys.executable, "-m", "tests.netns.ctagents", "stream", address,
        str(ECHO_PORT), str(STALL), stdin=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert stream.stdout is not None and stream.stdin is not None
        assert stream.stdout.readline().strip() == "up"  # one echo through wan0
        assert nat_of(lab2, address) == [ROUTER_WAN4]
        assert daemon.status()["conntrack_flushed"] == 0

        # wan0's upstream dies: the routes move to wan1.
        lab2.blackhole(lab2.breakout, True)
        died = time.monotonic()
        assert wait_for(lambda: route_dev(lab2, address) == "wan1", SWITCH, step=0.02)
        moved = time.monotonic() - died
        stream.stdin.write("go\n")  # the client's next send, right after the move
        stream.stdin.flush()
        outcome = json.loads(stream.stdout.readline())
    finally:
        stream.kill()
        stream.wait(timeout=5)
    s = daemon.status()
    label = (
        "flush_conntrack: " + ("true" if flush else "false") + (" (reload)" if by_reload else "")
    )
    FIGURES[label] = (
        f"moved {moved:.2f} s after the upstream died; the next send: {outcome['outcome']} "
        f"after {outcome['seconds']} s; conntrack_flushed {s['conntrack_flushed']}"
    )
    try:
        assert s["active"] == "wan1"
        if flush:
            assert outcome["outcome"] == "reset", outcome
            assert outcome["seconds"] < RESET_WITHIN, outcome
            assert s["conntrack_flushed"] >= 1
            assert ROUTER_WAN4 not in nat_of(lab2, address)
            exported = metrics(lab2)
            flushed = [x for x in exported if x.startswith("resolverd_breakout_conntrack_flushed")]
            assert flushed == [
                f"resolverd_breakout_conntrack_flushed_total {s['conntrack_flushed']}"
            ]
        else:
            assert outcome["outcome"] == "timeout" and outcome["seconds"] >= STALL, outcome
            assert s["conntrack_flushed"] == 0
            assert nat_of(lab2, address) == [ROUTER_WAN4]  # still wan0's NAT, through wan1
            assert ROUTER_WAN1_4 not in nat_of(lab2, address)
    finally:
        lab2.blackhole(lab2.breakout, False)
        back = wait_for(lambda: route_dev(lab2, address) == "wan0", BACK + 3)
        assert back, daemon.status()
        lab2.run(lab2.router, "conntrack", "-F", check=False)


# -- counting turned on and off -----------------------------------------------------------------


def tables(lab: Lab) -> str:
    return lab.run(lab.router, "nft", "list", "tables").stdout


def test_a_reload_turns_counting_on_and_off_and_a_restart_with_it_off_leaves_no_table(
    lab2: Lab, daemon: Daemon
) -> None:
    daemon.stop()
    assert "table inet resolverd" in tables(lab2)  # an earlier run's counters, kept
    start(daemon, count_traffic=False)
    assert "resolverd" not in tables(lab2)  # off: no table, nothing counted for nobody
    address = resolve(lab2, COUNTED, counted=False)
    assert daemon.status()["traffic"] == []

    # On by a reload: the table is made, and what is already held is counted at once.
    write(daemon, count_traffic=True)
    daemon.ctl("reload")
    assert wait_for(lambda: address in held_elements(lab2), 3), held_elements(lab2)
    before = traffic(daemon)
    udp(lab2, address, 100, 472)  # 100 packets of 500 IP bytes
    after = traffic(daemon)
    grew = {k: (after[k][0] - before.get(k, (0, 0))[0], after[k][1] - before.get(k, (0, 0))[1])
            for k in after if after[k] != before.get(k, (0, 0))}  # fmt: skip
    assert grew == {row_key(daemon, address): (50_000, 100)}, grew
    FIGURES["reload on"] = "count_traffic turned on by a reload: an address held before counted"

    # Off by a reload: the table goes, the status says nothing is counted.
    write(daemon, count_traffic=False)
    daemon.ctl("reload")
    assert "resolverd" not in tables(lab2)
    assert daemon.status()["traffic"] == []
    write(daemon)
    daemon.ctl("reload")
    assert "table inet resolverd" in tables(lab2)
