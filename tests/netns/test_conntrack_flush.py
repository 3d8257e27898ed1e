"""resolver.net.conntrack.flush against the kernel, in a NAT lab (tests/netns/natlab.py).

- exactly the entries whose original destination is a flushed address go, TCP and UDP, IPv4
  and IPv6; every other entry stays;
- the time to flush 1,000 entries out of a table of 10,000 (printed: pytest -s);
- a deadline that has passed deletes nothing and says so;
- the behaviour the flush is for: a TCP flow source-NATed (snat) through wan0 whose route
  moves to wan1 stalls (its packets leave wan1 with wan0's address) unless its entry is
  deleted, and then the client gets a reset within a second or so; with masquerade the kernel
  itself kills the entry when the output interface changes, flush or not.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.netns.natlab import PORT, SERVICE4, SERVICE6, NatLab

pytestmark = pytest.mark.netns

STALL = 3.0  # seconds a client waits for its echo before it calls the flow stalled


@pytest.fixture(scope="module")
def lab() -> Iterator[NatLab]:
    if shutil.which("conntrack") is None:
        pytest.fail("tests/netns/test_conntrack_flush.py needs conntrack: run make sysdeps")
    with NatLab("ct", nat="snat") as built:
        built.run(built.router, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=120")
        yield built


@pytest.fixture
def clean(lab: NatLab) -> Iterator[NatLab]:
    lab.run(lab.router, "conntrack", "-F", check=False)
    for address in SERVICE4 + SERVICE6:
        lab.route(address, "wan0")
    yield lab
    lab.run(lab.router, "conntrack", "-F", check=False)


def destinations(lab: NatLab) -> Counter[str]:
    """Original destination -> entries, from `conntrack -L` (the kernel's view, not ours)."""
    out = lab.run(lab.router, "conntrack", "-L", "-f", "ipv4").stdout
    out += lab.run(lab.router, "conntrack", "-L", "-f", "ipv6").stdout
    found: Counter[str] = Counter()
    for line in out.splitlines():
        dst = next((w[4:] for w in line.split() if w.startswith("dst=")), None)
        if dst is not None:
            found[dst] += 1
    return found


def flush(lab: NatLab, *addresses: str, seconds: float = 10.0) -> dict[str, object]:
    res = lab.run(
        lab.router, sys.executable, "-m", "tests.netns.ctagents", "flush", str(seconds),
        *addresses,
    )  # fmt: skip
    out: dict[str, object] = json.loads(res.stdout)
    return out


def udp(lab: NatLab, count: int, base: int, *hosts: str) -> None:
    lab.run(lab.client, sys.executable, "-m", "tests.netns.ctagents", "udp", str(count),
            str(base), *hosts)  # fmt: skip


def test_flush_deletes_exactly_the_moved_destinations(clean: NatLab) -> None:
    lab = clean
    moved = (SERVICE4[0], SERVICE6[0])
    kept = (SERVICE4[1], SERVICE4[2], SERVICE6[1])
    targets = [f"{a}:{PORT}" if ":" not in a else f"[{a}]:{PORT}" for a in moved + kept]
    holder = lab.agent(lab.client, "hold", "3", *targets, stdin=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        udp(lab, 20, 10000, *moved, *kept)
        before = destinations(lab)
        assert all(before[a] == 3 + 20 for a in moved + kept), before

        result = flush(lab, *moved)

        after = destinations(lab)
        assert result["complete"] is True and result["failed"] == 0
        assert result["deleted"] == sum(before[a] for a in moved) == 2 * 23
        assert all(after[a] == 0 for a in moved), after
        assert {a: after[a] for a in before if a not in moved} == {
            a: n for a, n in before.items() if a not in moved
        }
        # Flushing again finds nothing: deleted counts only what it deleted.
        assert flush(lab, *moved)["deleted"] == 0
    finally:
        holder.kill()


def test_flush_time_per_thousand_entries(clean: NatLab) -> None:
    """10,000 UDP entries, 1,000 of them to five moved addresses: one dump, 1,000 deletes."""
    lab = clean
    moved, others = SERVICE4[:5], SERVICE4[5:]
    udp(lab, 200, 10000, *moved)
    udp(lab, 1800, 20000, *others)
    before = destinations(lab)
    assert sum(before.values()) >= 10_000

    result = flush(lab, *moved)

    after = destinations(lab)
    assert result["deleted"] == 1000 and result["complete"] is True
    assert sum(after.values()) == sum(before.values()) - 1000
    print(f"\nconntrack flush: 1,000 of {sum(before.values())} entries in {result['ms']} ms")
    assert isinstance(result["ms"], float) and result["ms"] < 2000


def test_deadline_passed_deletes_nothing(clean: NatLab) -> None:
    lab = clean
    udp(lab, 50, 10000, SERVICE4[0])
    result = flush(lab, SERVICE4[0], seconds=0.0)
    assert result == {"deleted": 0, "failed": 0, "complete": False, "ms": result["ms"]}
    assert destinations(lab)[SERVICE4[0]] == 50


def stream_after_move(lab: NatLab, address: str, do_flush: bool) -> tuple[str, float, int]:
    """A TCP flow to `address` through wan0, its route moved to wan1, the client sending; the
    flow's outcome, seconds from its send to that outcome, and the entries flushed."""
    lab.route(address, "wan0")
    proc = lab.agent(lab.client, "stream", address, str(PORT), str(STALL), stdin=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "up"
        lab.route(address, "wan1")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        deleted = 0
        if do_flush:
            time.sleep(0.5)  # the client is retransmitting into the void by now
            result = flush(lab, address)
            assert isinstance(result["deleted"], int)
            deleted = result["deleted"]
        outcome = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
    return outcome["outcome"], outcome["seconds"], deleted


@pytest.mark.parametrize("address", [SERVICE4[3], SERVICE6[3]])
def test_snat_flow_stalls_after_a_move_unless_flushed(clean: NatLab, address: str) -> None:
    outcome, seconds, _ = stream_after_move(clean, address, do_flush=False)
    assert (outcome, seconds >= STALL) == ("timeout", True)  # stalled: nothing came back
    clean.run(clean.router, "conntrack", "-F")

    outcome, seconds, deleted = stream_after_move(clean, address, do_flush=True)
    assert deleted == 1
    assert outcome == "reset" and seconds < 2.0  # the server's reset, through wan1


def test_masquerade_needs_no_flush() -> None:
    """The kernel's own behaviour, for the record: a masqueraded flow whose output interface
    changes loses its entry at its next packet, so the client gets the reset at once."""
    with NatLab("ctm", nat="masquerade") as lab:
        outcome, seconds, _ = stream_after_move(lab, SERVICE4[4], do_flush=False)
    assert outcome == "reset" and seconds < 2.0
