"""systemd/: the unit passes systemd-analyze verify and security; the example config is complete;
the unit's header recipes are the README's, and its Documentation= is a file the package ships.

`systemd-analyze verify` needs the ExecStart= and ExecReload= binaries to exist, so the test
points a copy of the unit at stub executables in a temporary directory.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from resolver.config import Config, load_config
from tests.memorycaps import AT_THE_CAPS, AT_THE_CAPS_HOSTILE, MiB

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO / "systemd"
UNIT = SYSTEMD_DIR / "resolverd.service"
# Where the Debian package (make deb, debian/) puts the commands: links into its virtualenv.
BINDIR = "/usr/bin"
EXAMPLE = SYSTEMD_DIR / "resolverd.yaml"
ANALYZE = shutil.which("systemd-analyze")
# No skip when it is missing: `make test` installs it (Debian package systemd), so its absence
# is a broken set-up that must show.


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.fixture
def stub_unit(tmp_path: Path) -> Path:
    """The unit with /usr/bin/resolverd and /usr/bin/resolverctl rewritten to stub executables
    (the package's binaries need not be installed here)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    text = UNIT.read_text()
    for name in ("resolverd", "resolverctl"):
        stub = bindir / name
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
        text = text.replace(f"{BINDIR}/{name} ", f"{stub} ")
    unit = tmp_path / "resolverd.service"
    unit.write_text(text)
    return unit


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None, "systemd-analyze is missing: run make sysdeps (package systemd)"
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        [ANALYZE, *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def test_unit_has_the_required_settings() -> None:
    d = directives(UNIT.read_text())
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert d["ExecStart"] == [f"{BINDIR}/resolverd --config /etc/resolverd/resolverd.yaml"]
    assert d["ExecReload"][0].startswith(f"{BINDIR}/resolverctl ")
    assert d["ExecReload"][0].endswith(" reload")
    assert d["Restart"] == ["on-failure"]
    assert d["WatchdogSec"] == ["30s"]
    assert d["RuntimeDirectory"] == ["resolverd"] and d["RuntimeDirectoryMode"] == ["0750"]
    assert d["StateDirectory"] == ["resolverd"]
    assert d["ConfigurationDirectory"] == ["resolverd"]
    caps = {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"}
    assert set(d["CapabilityBoundingSet"][0].split()) == caps
    assert set(d["AmbientCapabilities"][0].split()) == caps
    assert set(d["RestrictAddressFamilies"][0].split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
    }
    assert d["User"] == ["resolverd"]
    assert d["UMask"] == ["0027"]


def test_sysusers_file_creates_the_units_user() -> None:
    d = directives(UNIT.read_text())
    entries = [
        line.split()
        for line in (SYSTEMD_DIR / "resolverd.sysusers").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert [e[:2] for e in entries] == [["u", d["User"][0]]]


def test_documentation_is_a_file_the_package_installs() -> None:
    # debian/resolverd.docs ships README.md and debian/rules keeps it uncompressed.
    d = directives(UNIT.read_text())
    assert d["Documentation"] == ["file:///usr/share/doc/resolverd/README.md"]
    debian = REPO / "debian"
    assert "README.md" in (debian / "resolverd.docs").read_text().split()
    assert re.search(r"(?m)^\tdh_compress .*-X README\.md", (debian / "rules").read_text())


def _commands(lines: list[str]) -> list[str]:
    """Shell commands, without trailing comments, one per && part."""
    found = []
    for line in lines:
        for part in re.sub(r"\s{2,}#.*$", "", line).split(" && "):
            if part.strip():
                found.append(part.strip())
    return found


def test_header_recipes_are_the_readmes() -> None:
    header = []
    for line in UNIT.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    # Commands are indented by three spaces; explanations under them by more.
    recipe = [line[4:] for line in header if re.match(r"#   \S", line)]
    readme = _commands((REPO / "README.md").read_text().splitlines())
    missing = [c for c in _commands(recipe) if c not in readme]
    assert not missing, f"commands in the unit's header but not in README.md: {missing}"
    # The checkout recipe installs the fast extra and makes the config directory a directory.
    assert "/opt/resolverd/bin/pip install '.[fast]'" in _commands(recipe)
    assert "install -d -m 0750 -g resolverd /etc/resolverd" in _commands(recipe)


def test_systemd_analyze_verify_passes(stub_unit: Path) -> None:
    result = analyze("verify", str(stub_unit))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "resolverd" not in output, output


def test_systemd_analyze_verify_catches_a_broken_unit(stub_unit: Path) -> None:
    # The check above is only worth something if verify does complain about a bad unit.
    stub_unit.write_text(stub_unit.read_text().replace("UMask=0027", "UMaks=0027"))
    output = analyze("verify", str(stub_unit))
    assert "UMaks" in output.stdout + output.stderr


def test_security_exposure_is_at_most_1_7(stub_unit: Path) -> None:
    result = analyze("security", "--offline=true", "--no-pager", str(stub_unit))
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for resolverd\.service: (\d+\.\d+) (\w+)", output)
    assert match is not None, output
    assert float(match.group(1)) <= 1.7, output
    assert match.group(2) == "OK", output


# Tasks on the largest machine: the loop, 3 netlink threads, asyncio's default executor
# (min(32, CPUs + 4)), the ipset helper with its threads and waiter (4), ExecReload's resolverctl.
MOST_TASKS = 1 + 3 + 32 + 4 + 1


def size(value: str) -> int:
    """A systemd size (``256M``, ``1G``, bytes without a suffix) in bytes; base 1024."""
    match = re.fullmatch(r"(\d+)([KMGT]?)", value)
    assert match is not None, f"not a plain size: {value!r}"
    scale: int = 1024 ** " KMGT".index(match.group(2) or " ")
    return int(match.group(1)) * scale


def test_memory_is_capped_above_what_the_caps_need() -> None:
    d = directives(UNIT.read_text())
    [high], [most] = d["MemoryHigh"], d["MemoryMax"]
    # Throttling starts only past the defaults filled to their caps; the kill only past the
    # largest answers with 16 long names on every hold, and well past the throttle. (The
    # figures: tests/memorycaps.py, measured by tests/bench/test_memory_caps.py.)
    assert AT_THE_CAPS < size(high) < AT_THE_CAPS_HOSTILE < size(most)
    assert size(most) >= size(high) * 5 // 4
    assert size(most) <= 512 * MiB  # a branch router has other work to do


def test_tasks_are_capped_above_the_threads_the_daemon_uses() -> None:
    d = directives(UNIT.read_text())
    [tasks] = d["TasksMax"]
    assert tasks.isdigit(), tasks  # a number, not a share of the system's limit
    assert MOST_TASKS < int(tasks) <= 128


def _denied(words: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    named = {
        "multicast": ["224.0.0.0/4", "ff00::/8"],
        "link-local": ["169.254.0.0/16", "fe80::/64"],
    }
    named |= {"localhost": ["127.0.0.0/8", "::1/128"], "any": ["0.0.0.0/0", "::/0"]}
    return [ipaddress.ip_network(n) for w in words for n in named.get(w, [w])]


def test_ip_filter_denies_only_what_resolverd_never_uses() -> None:
    d = directives(UNIT.read_text())
    assert "IPAddressAllow" not in d
    [words] = [value.split() for value in d["IPAddressDeny"]]
    assert "multicast" in words and "any" not in words
    denied = _denied(words)
    # What it must reach or answer, wherever it is: LAN clients (private, CGNAT, ULA and
    # global IPv6 prefixes), upstreams, resolvers and health targets on the internet, the
    # endpoint web service, and loopback (the example listens there).
    needed = [
        "10.1.0.23", "100.64.0.7", "172.16.5.5", "192.168.1.10", "fd00::23", "2001:db8:a::23",
        "8.8.8.8", "203.0.113.53", "52.96.1.2", "2620:1ec:8f8::10", "127.0.0.1", "::1",
        "169.254.1.1", "fe80::1",
    ]  # fmt: skip
    for text in needed:
        address = ipaddress.ip_address(text)
        assert not any(address in net for net in denied if net.version == address.version), text
    config = load_config(str(EXAMPLE))
    for host, _port in [*config.upstreams, *config.listen]:
        address = ipaddress.ip_address(host)
        assert not any(address in net for net in denied if net.version == address.version), host


def test_example_config_is_valid() -> None:
    config = load_config(str(EXAMPLE))
    assert config.breakout.mode == "kernel"
    assert config.metrics.listen is None  # off by default, shown commented out
    assert config.control.socket == "/run/resolverd/control.sock"


def test_example_upstreams_are_placeholders_not_resolverd_itself() -> None:
    # The package installs the example as /etc/resolverd/resolverd.yaml and will not start
    # resolverd on it unchanged; its upstreams are documentation addresses, never loopback
    # (where resolverd itself listens) and never taken from /etc/resolv.conf.
    documentation = [
        ipaddress.ip_network(n)
        for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
    ]
    config = load_config(str(EXAMPLE))
    assert config.upstreams
    for host, _port in config.upstreams:
        address = ipaddress.ip_address(host)
        assert not address.is_loopback, host
        assert any(address in net for net in documentation), host


def _keys(cls: type) -> set[str]:
    """Every config key, as "section" or "section.key", from the dataclasses."""
    keys: set[str] = set()
    for f in dataclasses.fields(cls):
        if not f.metadata:  # not a key (the file's path, values derived from others)
            continue
        keys.add(f.name)
        sub = f.metadata.get("section") or f.metadata.get("sections")
        if sub is not None:
            keys |= {f"{f.name}.{k}" for k in _keys(sub)}
    return keys


def test_example_config_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    missing = sorted(
        key
        for key in _keys(Config)
        if not re.search(rf"^\s*#?\s*{key.split('.')[-1]}:", text, re.M)
    )
    assert not missing, f"keys not shown in {EXAMPLE.name}: {missing}"
    # Every key line is explained: a comment above it, at its indentation, or at its end.
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*[a-z_0-9]+:", line) and not line.rstrip().endswith(":"):
            above = lines[i - 1].strip()
            assert (
                above.startswith("#") or "#" in line or re.match(r"^\s*[a-z_0-9]+:", lines[i - 1])
            ), f"line {i + 1} has no comment: {line!r}"
