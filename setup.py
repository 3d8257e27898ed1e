"""The build's one decision: compile the hot modules with mypyc, or ship them as Python.

pyproject.toml holds everything else (metadata, dependencies, entry points); setuptools reads it
and then this file for `ext_modules`. The modules in COMPILED are compiled to C extension
modules with mypyc (from these same sources: there is no second copy) when

- `RESOLVERD_PURE` is not set to 1 in the build's environment, and
- a C compiler and Python's headers (Python.h) are there.

Otherwise the build is the interpreted one, from the same files, and says so on stderr. The
running daemon reports which build it is (`resolverctl status`: Build; resolver.buildinfo).
An editable install (`pip install -e`, `make venv`) is always interpreted: its modules are
these files, imported in place. Compiling there would put extension modules beside the sources
(build_ext --inplace), and Python would import them ahead of the .py files being edited.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig

from setuptools import setup

# The DNS core, the hooks, the matcher, the client keys, the hold ledger and holds, the netlink
# encoders, and the breakout's side of an answer (breakout, kernel, journal, links, the traffic
# counters): the code every query or route runs through. resolver/dns/tcp.py and server.py
# (socket set-up, asyncio.Protocol subclasses) and everything that runs once or on request stay
# interpreted.
COMPILED = [
    "policy/matcher.py",
    "resolver/clients.py",
    "resolver/dns/cache.py",
    "resolver/dns/chains.py",
    "resolver/dns/counts.py",
    "resolver/dns/events.py",
    "resolver/dns/exchange.py",
    "resolver/dns/forwarder.py",
    "resolver/dns/handler.py",
    "resolver/dns/messages.py",
    "resolver/dns/misses.py",
    "resolver/dns/mmsg.py",
    "resolver/dns/query.py",
    "resolver/dns/ratelimit.py",
    "resolver/dns/replies.py",
    "resolver/dns/resolution.py",
    "resolver/dns/sockets.py",
    "resolver/dns/store.py",
    "resolver/dns/tagging.py",
    "resolver/dns/udp.py",
    "resolver/dns/upstream.py",
    "resolver/dns/wire.py",
    "resolver/dns/zones.py",
    "resolver/fdwatch.py",
    "resolver/hooks.py",
    "resolver/net/accounting.py",
    "resolver/net/accountingapi.py",
    "resolver/net/batches.py",
    "resolver/net/breakout.py",
    "resolver/net/errors.py",
    "resolver/net/handoff.py",
    "resolver/net/holds.py",
    "resolver/net/installs.py",
    "resolver/net/ipsets.py",
    "resolver/net/journal.py",
    "resolver/net/journalapi.py",
    "resolver/net/kernel.py",
    "resolver/net/kernelapi.py",
    "resolver/net/latency.py",
    "resolver/net/ledger.py",
    "resolver/net/linkchoice.py",
    "resolver/net/links.py",
    "resolver/net/linkwatch.py",
    "resolver/net/netlink.py",
    "resolver/net/neverroute.py",
    "resolver/net/nftables.py",
    "resolver/net/nftsets.py",
    "resolver/net/nlsocket.py",
    "resolver/net/prefixes.py",
    "resolver/net/quickcalls.py",
    "resolver/net/records.py",
    "resolver/net/routes.py",
    "resolver/net/traffic.py",
    "resolver/net/trafficprune.py",
]


def why_interpreted() -> str | None:
    """None when the build can compile; else the reason it cannot, for the build log."""
    if os.environ.get("RESOLVERD_PURE", "") == "1":
        return "RESOLVERD_PURE=1"
    # setuptools' PEP 660 backend runs this file as `setup.py editable_wheel ...`
    # (`develop` for the legacy `setup.py develop`).
    if {"editable_wheel", "develop"} & set(sys.argv[1:]):
        return "editable install"
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    if shutil.which(compiler.split()[0]) is None:
        return f"no C compiler ({compiler.split()[0]} is not on PATH)"
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        return f"no Python headers ({include}/Python.h is missing: install python3-dev)"
    return None


def ext_modules() -> list[object]:
    reason = why_interpreted()
    if reason is not None:
        print(f"resolverd: interpreted build: {reason}", file=sys.stderr)
        return []
    from mypyc.build import mypycify

    print(f"resolverd: compiling {len(COMPILED)} modules with mypyc", file=sys.stderr)
    # opt_level 3 is mypyc's default; debug level 0 keeps the extension small.
    return list(mypycify(COMPILED, opt_level="3", debug_level="0"))


setup(ext_modules=ext_modules())
