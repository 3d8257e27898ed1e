"""The unit marker means what it says: no sockets, no sleeps, no real timers.

Every module under tests/unit is read (its syntax tree, not run) and must not call what opens a
socket or waits on the clock; such a test belongs to tests/integration. Fakes in memory (a
fake kernel, a fake netlink socket handed to `netlink.Channel(..., sock=...)`) are fine.
`asyncio.sleep(0)` (one turn of the loop) is fine too. The same modules must carry the `unit`
marker and only it, and no module elsewhere may claim it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

TESTS = Path(__file__).resolve().parents[1]
UNIT = TESTS / "unit"

# module -> functions of it that open a socket or wait on the clock
FORBIDDEN_FUNCTIONS: dict[str, frozenset[str]] = {
    "time": frozenset({"sleep"}),
    "socket": frozenset(
        {"socket", "socketpair", "create_connection", "create_server", "fromfd", "getaddrinfo"}
    ),
    "asyncio": frozenset(
        {"open_connection", "open_unix_connection", "start_server", "start_unix_server"}
    ),
    "threading": frozenset({"Timer"}),
}
# methods of an event loop (or a server) that open a socket or arm a real timer
FORBIDDEN_METHODS = frozenset({
    "create_datagram_endpoint", "create_connection", "create_server", "create_unix_connection",
    "create_unix_server", "connect_accepted_socket", "sock_connect", "sock_accept",
    "sock_recv", "sock_sendall", "call_later", "call_at", "serve_forever",
})  # fmt: skip
# helpers that open sockets on the test's behalf (their data, SAMPLE and the like, is fine)
FORBIDDEN_MODULES = ("tests.fakeupstream", "tests.integration", "tests.netns")
FORBIDDEN_NAMES = {"tests.fakeendpoints": frozenset({"serving", "FakeService"})}


@dataclass(frozen=True)
class Finding:
    line: int
    what: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.what}"


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base is not None else None
    return None


def _is_zero(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value in (0, 0.0) and node.value is not False


def scan(source: str) -> list[Finding]:
    """What in `source` a unit test must not do."""
    tree = ast.parse(source)
    found: list[Finding] = []
    aliases: dict[str, str] = {}  # local name -> "module.function" imported by name
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module.startswith(FORBIDDEN_MODULES):
                found.append(Finding(node.lineno, f"imports {node.module}"))
            for alias in node.names:
                if alias.name in FORBIDDEN_NAMES.get(node.module, ()):
                    found.append(Finding(node.lineno, f"imports {node.module}.{alias.name}"))
                if alias.name in FORBIDDEN_FUNCTIONS.get(node.module, ()) or (
                    node.module == "asyncio" and alias.name == "sleep"
                ):
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            found += [
                Finding(node.lineno, f"imports {alias.name}")
                for alias in node.names
                if alias.name.startswith(FORBIDDEN_MODULES)
            ]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name is None:
            continue
        name = aliases.get(name, name)
        module, _, function = name.rpartition(".")
        if module.rpartition(".")[2] == "asyncio" and function == "sleep":
            if not (len(node.args) == 1 and _is_zero(node.args[0])):
                found.append(Finding(node.lineno, f"{name}() with a delay"))
        elif function in FORBIDDEN_FUNCTIONS.get(module.rpartition(".")[2], ()) or (
            isinstance(node.func, ast.Attribute) and function in FORBIDDEN_METHODS
        ):
            found.append(Finding(node.lineno, f"{name}()"))
        elif function == "Channel" and not any(k.arg == "sock" for k in node.keywords):
            found.append(Finding(node.lineno, f"{name}() without a fake sock= (a netlink socket)"))
    return sorted(found, key=lambda f: f.line)


def _marks(source: str) -> set[str]:
    """The markers a module's `pytestmark` gives it (pytest.mark.NAME, alone or in a list)."""
    marks: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            value = node.value
            values = value.elts if isinstance(value, ast.List | ast.Tuple) else [value]
            for mark in values:
                name = _dotted(mark.func if isinstance(mark, ast.Call) else mark) or ""
                if name.startswith("pytest.mark."):
                    marks.add(name.removeprefix("pytest.mark."))
    return marks


UNIT_MODULES = sorted(UNIT.glob("*.py"))
TIERS = ("unit", "integration", "netns", "bench", "package", "soak", "fuzz")


@pytest.mark.parametrize("path", UNIT_MODULES, ids=[p.name for p in UNIT_MODULES])
def test_unit_modules_open_no_socket_and_do_not_sleep(path: Path) -> None:
    findings = scan(path.read_text())
    assert not findings, (
        f"{path.relative_to(TESTS.parent)} is in the unit tier but "
        + "; ".join(map(str, findings))
        + ": move the test to tests/integration"
    )


def test_every_unit_test_module_is_marked_unit_and_nothing_else_is() -> None:
    wrong = []
    for path in sorted(TESTS.rglob("test_*.py")):
        tiers = _marks(path.read_text()) & set(TIERS)
        in_unit = path.parent == UNIT
        if (in_unit and tiers != {"unit"}) or (not in_unit and "unit" in tiers):
            wrong.append(f"{path.relative_to(TESTS)}: {sorted(tiers)}")
    assert not wrong


# -- the checker catches what it says it catches --------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import time\ntime.sleep(0.1)\n", "time.sleep()"),
        ("from time import sleep\nsleep(1)\n", "time.sleep()"),
        ("import asyncio\nasync def f():\n    await asyncio.sleep(0.01)\n", "with a delay"),
        ("import asyncio\nasync def f(d):\n    await asyncio.sleep(d)\n", "with a delay"),
        ("from asyncio import sleep as nap\nasync def f():\n    await nap(1)\n", "with a delay"),
        ("import socket\ns = socket.socket()\n", "socket.socket()"),
        ("import socket\na, b = socket.socketpair()\n", "socket.socketpair()"),
        ("import asyncio\nasync def f():\n    await asyncio.open_connection('h', 1)\n",
         "asyncio.open_connection()"),
        ("async def f(loop):\n    await loop.create_datagram_endpoint(object)\n",
         "loop.create_datagram_endpoint()"),
        ("def f(loop):\n    loop.call_later(1, print)\n", "loop.call_later()"),
        ("import threading\nthreading.Timer(1, print).start()\n", "threading.Timer()"),
        ("from resolver.net import netlink\nch = netlink.Channel(0)\n", "netlink socket"),
        ("from tests.fakeupstream import FakeUpstream\n", "imports tests.fakeupstream"),
        ("from tests.integration.conftest import DnsEnv\n", "imports tests.integration"),
        ("from tests.fakeendpoints import SAMPLE, serving\n", "fakeendpoints.serving"),
    ],
)  # fmt: skip
def test_the_checker_finds_sockets_and_sleeps(source: str, expected: str) -> None:
    findings = scan(source)
    assert len(findings) == 1 and expected in str(findings[0]), findings


def test_the_checker_allows_a_turn_of_the_loop_and_fakes_in_memory() -> None:
    source = (
        "import asyncio\nfrom resolver.net import netlink\n"
        "async def f(fake):\n"
        "    await asyncio.sleep(0)\n"
        "    ch = netlink.Channel(netlink.NETLINK_ROUTE, sock=fake)\n"
        "    await asyncio.wait_for(ch.request(b''), 3)\n"
    )
    assert scan(source) == []


def test_the_marker_reader_sees_lists_and_calls() -> None:
    assert _marks("import pytest\npytestmark = pytest.mark.unit\n") == {"unit"}
    assert _marks("pytestmark = [pytest.mark.integration, pytest.mark.timeout(5)]\n") == {
        "integration",
        "timeout",
    }
