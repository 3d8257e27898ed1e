"""Fakes for the breakout's unit tests: a kernel that records, a clock, a network view."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from policy.matcher import Matcher
from policy.model import Policy, Rule
from resolver.config import BreakoutConfig, LinkConfig, Mode
from resolver.hooks import Tagged, pack_addresses, wait
from resolver.net.breakout import Breakout
from resolver.net.links import Addr, Link, NetView
from resolver.net.routes import AF, HOST_LEN, NextHop, Route

Settled = Callable[[list[int]], None]

RULES = (
    Rule(row=1, purpose="Exchange", required=True, patterns=("outlook.office.com", "*.office.com")),
    Rule(row=2, purpose="SharePoint", required=True, patterns=("*.sharepoint.com",)),
    Rule(
        row=14,
        purpose="Connectivity analyzer",
        required=False,
        patterns=("testconnectivity.microsoft.com",),
        cidrs=("13.67.59.89/32", "40.69.150.142/32"),
    ),
)
POLICY = Policy(rules=RULES)
MATCHER = Matcher(RULES)
WAN, LAN, TUN = 2, 3, 4


class Clock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class FakeKernel:
    """Records every batch; settles at once unless `defer` (then `settle_all()` does)."""

    def __init__(self, has_sets: bool = True) -> None:
        self._has_sets = has_sets
        self.calls: list[tuple[str, list[Any]]] = []
        self.routes: dict[tuple[int, bytes, int], bool] = {}
        self.entries: dict[tuple[int, bytes], int] = {}
        self.fail: dict[bytes, int] = {}
        self.defer = False
        self.deferred: list[tuple[Settled, list[int]]] = []
        self.rules_present: set[tuple[int, int, int | None]] = set()  # (priority, table, mark)
        self.extra_routes: list[Route] = []
        self.paths: dict[int, NextHop | None] = {4: None, 6: None}
        self.started = False
        self.check_error: Exception | None = None  # open() raises it
        self.dump_error: Exception | None = None  # dump_routes() raises it
        self.rules_error: Exception | None = None  # rules() raises it
        self.sets_created = 0
        self.sets_missing: list[str] = []
        self.closed = False
        self.notes: list[tuple[str, str, str]] = []
        self.probes: dict[tuple[int, int], NextHop | None] = {}

    @property
    def rules(self) -> int:
        return len(self.rules_present)

    @property
    def has_sets(self) -> bool:
        return self._has_sets

    can_probe = True

    async def open(
        self, loop: asyncio.AbstractEventLoop, create: bool = True, strict: bool = True
    ) -> None:
        if self.check_error is not None:
            raise self.check_error
        self.started = True
        if create:
            await self.create_sets()

    async def create_sets(self) -> None:
        self.sets_created += 1

    async def missing_sets(self) -> list[str]:
        gone, self.sets_missing = self.sets_missing, []
        return gone

    def close(self) -> None:
        self.closed = True

    def set_next_hops(self, hops: dict[int, NextHop | None]) -> None:
        self.paths = dict(hops)

    @property
    def oif(self) -> int | None:
        path = self.paths.get(4) or self.paths.get(6)
        return path.oif if path is not None else None

    def _settle(self, settled: Settled, errors: list[int]) -> None:
        if self.defer:
            self.deferred.append((settled, errors))
        else:
            settled(errors)

    def settle_all(self) -> None:
        deferred, self.deferred = self.deferred, []
        for settled, errors in deferred:
            settled(errors)

    def add_routes(self, items: Sequence[tuple[int, bytes, int]], settled: Settled) -> None:
        self.calls.append(("add_routes", list(items)))
        errors = []
        for item in items:
            code = self.fail.get(item[1], 0)
            if not code and self.paths.get(item[0]) is None:
                code = 101  # ENETUNREACH: no path for the family
            if not code:
                self.routes[item] = True
            errors.append(code)
        self._settle(settled, errors)

    def del_routes(self, items: Sequence[tuple[int, bytes, int]], settled: Settled) -> None:
        self.calls.append(("del_routes", list(items)))
        errors = []
        for item in items:
            errors.append(0 if self.routes.pop(item, None) else 3)  # ESRCH
        self._settle(settled, errors)

    def del_table_routes(self, found: Sequence[Route], settled: Settled) -> None:
        items = [(r.family, socket.inet_pton(AF[r.family], r.dst), r.dst_len) for r in found]
        self.del_routes(items, settled)

    def add_entries(self, items: Sequence[tuple[int, bytes, int]], settled: Settled) -> None:
        self.calls.append(("add_entries", list(items)))
        for fam, packed, timeout in items:
            self.entries[(fam, packed)] = timeout
        self._settle(settled, [0] * len(items))

    def del_entries(self, items: Sequence[tuple[int, bytes, int]], settled: Settled) -> None:
        self.calls.append(("del_entries", list(items)))
        for fam, packed, _ in items:
            self.entries.pop((fam, packed), None)
        self._settle(settled, [0] * len(items))

    def probe_table(self, table: int, family: int, hop: NextHop | None, settled: Settled) -> None:
        self.probes[(table, family)] = hop
        settled([0])

    async def dump_routes(self, table: int | None = None) -> list[Route]:
        if self.dump_error is not None:
            raise self.dump_error
        if table is not None and table != 365:
            return []
        out = list(self.extra_routes)
        for fam, packed, plen in self.routes:
            path = self.paths.get(fam)
            out.append(
                Route(fam, socket.inet_ntop(AF[fam], packed), plen, 365, 245, 0, 1,
                      path.oif if path else WAN, path.gateway if path else None)
            )  # fmt: skip
        return out

    async def dump_rules(self) -> list[Any]:
        return []

    async def change_rules(self, add: Any, remove: Any) -> int:
        if self.rules_error is not None:
            raise self.rules_error
        changed = 0
        for spec in add:
            key = (spec.priority, spec.table, spec.fwmark)
            if key not in self.rules_present:
                self.rules_present.add(key)
                changed += 1
        for spec in remove:
            key = (spec.priority, spec.table, spec.fwmark)
            if key in self.rules_present:
                self.rules_present.discard(key)
                changed += 1
        return changed

    def note(self, action: str, packed: bytes, names: Any, reason: str, *args: object) -> None:
        address = socket.inet_ntop(AF[4 if len(packed) == 4 else 6], packed)
        self.notes.append((action, address, reason % args if args else reason))

    def report(self) -> dict[str, Any]:
        return {}

    def ops(self, name: str) -> list[list[Any]]:
        return [items for op, items in self.calls if op == name]

    def has_route(self, address: str) -> bool:
        fam = 6 if ":" in address else 4
        return (fam, socket.inet_pton(AF[fam], address), HOST_LEN[fam]) in self.routes


def make_view(wan_up: bool = True) -> NetView:
    view = NetView()
    view.apply_link(True, Link(1, "lo", True))
    view.apply_link(True, Link(WAN, "wan0", wan_up))
    view.apply_link(True, Link(LAN, "lan0", True))
    view.apply_link(True, Link(TUN, "tun0", True))  # the tunnel: no address needed here
    view.apply_addr(
        True,
        [
            Addr(WAN, 4, "192.0.2.2", "192.0.2.0/25", False),
            Addr(WAN, 6, "2001:db8:b::2", "2001:db8:b::/64", False),
            Addr(LAN, 4, "192.0.2.129", "192.0.2.128/25", False),
            Addr(LAN, 6, "2001:db8:c::1", "2001:db8:c::/64", False),
        ],
    )
    return view


def make_cfg(**kw: Any) -> BreakoutConfig:
    base: dict[str, Any] = {
        "mode": "kernel",
        "interface": "wan0",
        "gateway4": "192.0.2.1",
        "gateway6": "2001:db8:b::1",
        "ipset4": "m365-v4",
        "ipset6": "m365-v6",
        "min_hold": 300,
        "grace": 30,
        "ack_timeout": 0.05,
        # Real accounting opens netfilter sockets: as root it would make table inet resolverd
        # in the host's namespace. Counting and the flush are tested in tests/netns.
        "count_traffic": False,
        "flush_conntrack": False,
    }
    base.update(kw)
    base["mode"] = Mode(base["mode"])
    if "links" not in kw:  # the single-link form means a list of one, as the config says
        base["links"] = (LinkConfig(base["interface"], base.get("gateway4"), base.get("gateway6")),)
    else:
        first = base["links"][0]
        base.update(interface=first.interface, gateway4=first.gateway4, gateway6=first.gateway6)
    return BreakoutConfig(**base)


WALL = 1_700_000_000.0  # wall clock = monotonic clock + WALL in these tests


def make_breakout(
    tmp_path: Any, cfg: BreakoutConfig | None = None, *, kernel: Any = None,
    clock: Clock | None = None, new_kernel: FakeKernel | None = None, **kw: Any,
) -> Breakout:  # fmt: skip
    """A whole Breakout, the one way the tests build it: for what its composition does (the
    hook end to end, reload, dry run, restarts). Its owners alone are tested over
    tests/owners.py. In kernel mode the kernel is `kernel` (a new FakeKernel when None), and
    a reload's verification gets `new_kernel` (the same one when None). No periodic sweep or
    audit runs by itself; the tests call them."""
    cfg = cfg if cfg is not None else make_cfg()
    test_clock = clock or Clock()
    if cfg.mode is Mode.KERNEL:
        kernel = kernel or FakeKernel()
        now = kernel

        def factory(_cfg: BreakoutConfig) -> Any:
            return new_kernel or now

        kw.setdefault("kernel_factory", factory)
    kw.setdefault("view", make_view())
    kw.setdefault("sweep_interval", 3600)
    kw.setdefault("audit_interval", 3600)
    return Breakout(
        cfg, str(tmp_path), MATCHER, POLICY, clock=test_clock,
        wall=lambda: test_clock.now + WALL, kernel=kernel, **kw,
    )  # fmt: skip


async def started(
    tmp_path: Any, kernel: FakeKernel | None = None, clock: Clock | None = None, **cfg: Any
) -> tuple[Breakout, FakeKernel, Clock]:
    """A started kernel-mode breakout on `make_cfg(**cfg)`, its fake kernel's calls cleared."""
    kernel = kernel or FakeKernel()
    clock = clock or Clock()
    b = make_breakout(tmp_path, make_cfg(**cfg), kernel=kernel, clock=clock)
    await b.start()
    kernel.calls.clear()
    return b, kernel, clock


def tagged(name: str, *addresses: str, qname: str | None = None) -> Tagged:
    match = MATCHER.match(name)
    assert match is not None, name
    return Tagged(qname or name, name, match, pack_addresses(addresses))


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())  # type: ignore[arg-type]


async def answer(b: Any, t: Tagged, ttl: int, client: str = "") -> None:
    """An answer through the breakout's hook, awaited as the DNS side would wait to reply."""
    await wait(b.on_answer(t, ttl, client))


def device_route(cidr: str, oif: int, proto: int = 3) -> Route:
    """A main-table route without a gateway (`ip route add CIDR dev IF`; proto 3 is boot)."""
    dst, _, plen = cidr.partition("/")
    fam = 6 if ":" in dst else 4
    scope = 253 if fam == 4 else 0  # link for IPv4; IPv6 routes are always universe
    return Route(fam, dst, int(plen), 254, proto, scope, 1, oif, None)


def by_address(b: Any) -> dict[str, Any]:
    """The breakout's holds by address text (they are keyed by packed address)."""
    return {h.address: h for h in b.holds.values()}
