"""Instructions per miss: the daemon's user-space work on the miss path, counted by callgrind.

    make instructions                # the compiled build (root)

(`make` runs it from a copy of the tree without resolver/; run from the checkout, the checkout's
interpreted sources come first on the path, and the printed build says so.)

The miss bench's figures move by 10-20% from one run to the next on a shared two-core VM, so a
change of a few per cent to the miss path cannot be seen in them. Callgrind counts the
instructions the daemon executes (both of its threads, user space only: no kernel, no waiting),
and the count barely moves between runs: it is the figure to compare, before and after a change
to the hot path, with `make instructions` in two checkouts.

The real daemon at the shipped config of harness.py runs under callgrind in the benchmark lab,
with the miss bench's load at a rate callgrind keeps up with: WARM names first (not counted),
then MISSES unique names, half tagged (each a new AAAA address: a route, a set entry and a
counter each), half not. Counting is on only while those are asked. Printed: instructions per
miss, the dnsperf figures (no query may be lost), and the functions with the most instructions,
inclusive, from callgrind_annotate. INSTR_OUT=/absolute/file keeps the dump there (for
callgrind_annotate --tree=calling, or kcachegrind).

At this rate little is batched: a miss mostly has a wake-up, a netlink round, a counters'
transaction and a good part of an upstream socket to itself, which the saturated miss bench
shares among many. Costs per round weigh more here than there; costs per miss are the same.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench import harness as h

WARM = 200
MISSES = 2_000
RATE = "100"  # queries a second: well within what the daemon does under callgrind
TOP = 40


def _ctl(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def _total(dump: Path) -> int:
    """The instructions in a callgrind dump (its `totals:` line)."""
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise h.BenchError(f"no totals in {dump}")


def main() -> int:
    h.require_tools("dnsperf", "dnsmasq", "valgrind", "callgrind_control", "callgrind_annotate")
    with tempfile.TemporaryDirectory(prefix="resolverd-instr-") as tmpdir:
        tmp = Path(tmpdir)
        names = h.Names()
        warm = h.write_queries(
            tmp / "warm.txt",
            h.interleave(names.tagged_v6("w", WARM // 2), names.untagged("w", WARM // 2)),
        )
        miss = h.write_queries(
            tmp / "miss.txt",
            h.interleave(names.tagged_v6("m", MISSES // 2), names.untagged("m", MISSES // 2)),
        )
        names.write(tmp / "hosts")
        out = tmp / "callgrind.out"
        with h.Lab(tmp, "instr") as lab:
            h.start_upstream(lab, tmp / "hosts")
            config = h.shipped_config(tmp)
            argv = [
                "valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={out}", sys.executable, "-m", "resolver.daemon",
                "--config", str(config),
            ]  # fmt: skip
            proc = lab.spawn(lab.router, argv, "resolverd.log")
            sock = tmp / "control.sock"
            daemon = h.Resolverd(proc, config, sock, "resolverd.log")
            deadline = time.monotonic() + 300
            up = False
            while not up:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise h.BenchError(f"resolverd did not start:\n{lab.log_tail('resolverd.log')}")
                time.sleep(1)
                up = sock.exists() and daemon.ctl("status", "--json", timeout=30).returncode == 0
            build = daemon.status()["build"]
            opts = ("-n", "1", "-c", "1", "-Q", RATE, "-t", "30")
            h.dnsperf(lab, h.ROUTER_LAN4, h.RESOLVERD_PORT, warm, *opts)
            time.sleep(2)
            _ctl(proc.pid, "-i", "on")
            run = h.dnsperf(lab, h.ROUTER_LAN4, h.RESOLVERD_PORT, miss, *opts)
            _ctl(proc.pid, "-i", "off")
            _ctl(proc.pid, "-d")
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        dumps = sorted(tmp.glob("callgrind.out*"), key=os.path.getmtime)
        totals = {d: _total(d) for d in dumps}
        counted = [d for d in dumps if totals[d] > 0]
        if not counted:
            raise h.BenchError(f"callgrind counted nothing: {[str(d) for d in dumps]}")
        if os.environ.get("INSTR_OUT"):
            shutil.copyfile(counted[0], os.environ["INSTR_OUT"])
        total = sum(totals[d] for d in counted)
        print(f"\ninstructions per miss ({h.now_utc()}), {build} build, {MISSES} unique names "
              f"(half tagged), dnsperf {' '.join(opts)}")  # fmt: skip
        print(f"  dnsperf: {run['completed']:.0f} completed, {run['lost']:.0f} lost")
        print(f"  {total / MISSES:,.0f} instructions per miss (user space, both threads)")
        if run["lost"]:
            print("  queries were lost: the figure is not comparable")
            return 1
        report = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", str(counted[0])],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        rows = [
            re.sub(r"\S*/", "", re.sub(r"\s*\[.*\]$", "", row))  # no object file, no directories
            for row in report.splitlines()
            if re.match(r"^\s*[\d,]+ \(", row) and "???:0x" not in row
        ]
        print(f"  top {TOP}, inclusive:")
        for row in rows[:TOP]:
            print("   ", row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
