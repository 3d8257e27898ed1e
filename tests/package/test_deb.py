"""The Debian package (make deb): lintian finds no errors, the build refuses a changelog that
disagrees with pyproject.toml, apt-get install gives a working daemon, an upgrade keeps an
edited config, apt-get remove cleans up the kernel state but keeps the config, and apt-get
purge leaves no file, directory, route, rule or set entry, even when the config does not load.

No service is started through systemd, even on a machine booted with it: the lab denies the
maintainer scripts' service actions (policy-rc.d), and each step checks that no resolverd
runs outside the namespace. So "a working daemon" is /usr/bin/resolverd started by the test
as the unit would start it: user resolverd, CAP_NET_ADMIN and CAP_NET_BIND_SERVICE only,
the installed config; inside the lab's namespace, where it must answer a query, install the
route and set entry, and answer `resolverctl status --json`.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import stat
import subprocess
from pathlib import Path

import pytest

from tests.package.lab import (
    ADDRESS,
    CONF,
    CREATED,
    NAME,
    PACKAGE,
    PRISTINE,
    REPO,
    TABLE,
    TEST_CONFIG,
    UNIT,
    USER,
    WAN_GW,
    WAN_IF,
    WANTS,
    Debs,
    PackageLab,
    copy_tree,
    package_state,
    run,
)

pytestmark = pytest.mark.package

VENV = Path("/opt/venvs/resolverd")
DSH_STATE = Path("/var/lib/systemd/deb-systemd-helper-enabled/resolverd.service.dsh-also")


def test_lintian_finds_no_errors_and_no_warnings_left_unexplained(debs: Debs) -> None:
    # Every warning that stays is overridden, with its reason, in
    # debian/resolverd.lintian-overrides; an error fails `make deb` already.
    res = run("lintian", "--fail-on", "error", str(debs.v1), check=False, timeout=300)
    output = res.stdout + res.stderr
    tags = [line for line in output.splitlines() if line.startswith(("E:", "W:"))]
    assert res.returncode == 0 and not tags, output


def test_the_build_stops_when_changelog_and_pyproject_disagree(scratch: Path) -> None:
    tree = scratch / "tree"
    copy_tree(tree)
    pyproject = tree / "pyproject.toml"
    text, n = re.subn(r'(?m)^version = ".*"$', 'version = "9.9.9"', pyproject.read_text(), count=1)
    assert n == 1
    pyproject.write_text(text)
    res = run(str(tree / "debian" / "build-deb"), str(scratch / "out"), check=False)
    assert res.returncode != 0
    assert "pyproject.toml says 9.9.9" in res.stderr, res.stdout + res.stderr
    assert not (scratch / "out").exists()
    # debian/rules refuses too, for a build that does not go through make deb.
    res = run("make", "-f", "debian/rules", "clean", cwd=tree, check=False)
    assert res.returncode != 0
    assert "pyproject.toml says version 9.9.9" in res.stderr, res.stdout + res.stderr


def test_install_run_upgrade_and_purge(debs: Debs, lab: PackageLab) -> None:
    # --- First install: everything in place, and the example config not put to use.
    out = lab.apt_ok("install", str(debs.v1))
    assert package_state() == ("installed", debs.v1_version)
    assert lab.daemons_outside() == [], out
    assert "neither enabled nor started" in out, out
    assert f"resolverctl explain --config {CONF} outlook.office365.com" in out, out
    assert "systemctl enable --now resolverd" in out, out
    assert not WANTS.is_symlink(), "the first install enabled the unit"

    for path in ("/usr/bin/resolverd", "/usr/bin/resolverctl", UNIT, CONF, PRISTINE):
        assert os.path.exists(path), path
    sysusers = Path("/usr/lib/sysusers.d/resolverd.conf").read_text()
    assert sysusers == (REPO / "systemd" / "resolverd.sysusers").read_text()
    example = (REPO / "systemd" / "resolverd.yaml").read_text()
    assert CONF.read_text() == PRISTINE.read_text() == example
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", PACKAGE).stdout
    assert str(CONF) in conffiles.split()

    # The venv runs on Debian's python3, with the fast extra, and byte code compiled by the
    # postinst (the package ships none; the prerm removes it).
    assert os.readlink(VENV / "bin" / "python3") == "/usr/bin/python3"
    shipped = run("dpkg-query", "-L", PACKAGE).stdout.split()
    assert not [p for p in shipped if p.endswith(".pyc") or "__pycache__" in p]
    assert any(VENV.glob("lib/python3.*/site-packages/resolver/__pycache__/*.pyc"))
    # uvloop (the fast extra) is there; pyroute2 is not: nothing at run time needs it.
    probe = "import uvloop, importlib.util as u; print(u.find_spec('pyroute2'))"
    assert run(str(VENV / "bin" / "python"), "-c", probe).stdout.strip() == "None"
    version = run("/usr/bin/resolverd", "--version").stdout.strip()
    assert version == f"resolverd {debs.v1_version.split('-')[0]}"

    # The unit: the /usr/bin links, documentation that exists, and systemd accepts it.
    unit = UNIT.read_text()
    assert "\nExecStart=/usr/bin/resolverd --config /etc/resolverd/resolverd.yaml\n" in unit
    assert "\nExecReload=/usr/bin/resolverctl " in unit
    docs = re.findall(r"(?m)^Documentation=file://(\S+)$", unit)
    assert docs and all(os.path.exists(d) for d in docs), docs
    res = run("systemd-analyze", "verify", str(UNIT), check=False)
    assert res.returncode == 0 and "resolverd" not in res.stdout + res.stderr, (
        res.stdout + res.stderr
    )

    # The user, and a config directory it may read but not write.
    user = pwd.getpwnam(USER)
    assert user.pw_shell == "/usr/sbin/nologin"
    for path, mode in ((CONF.parent, 0o750), (CONF, 0o640)):
        st = os.stat(path)
        assert (st.st_uid, grp.getgrgid(st.st_gid).gr_name) == (0, USER), path
        assert stat.S_IMODE(st.st_mode) == mode, (path, oct(st.st_mode))

    # The postinst's check, on the example as shipped.
    res = run("/usr/bin/resolverctl", "explain", "--config", str(CONF), NAME, "--json")
    assert json.loads(res.stdout)[0]["match"] is not None, res.stdout

    # --- The administrator edits the config, checks it and enables the unit (systemctl
    # works on the files without a running systemd; --now would need one).
    CONF.write_text(TEST_CONFIG)
    run("/usr/bin/resolverctl", "explain", "--config", str(CONF), NAME)
    run("systemctl", "enable", "resolverd.service")
    assert WANTS.is_symlink()

    # --- A working daemon in the namespace.
    lab.start_upstream()
    daemon = lab.start_daemon()
    assert_running_as_the_unit_would(daemon.proc.pid)
    assert lab.dig(NAME) == [ADDRESS], daemon.output()
    route = f"{ADDRESS} via {WAN_GW} dev {WAN_IF} proto 245"
    assert route in lab.owned_routes(), (lab.owned_routes(), daemon.output())
    assert lab.owned_rules(), daemon.output()
    assert ADDRESS in lab.set_members(), daemon.output()
    status = lab.status()
    assert status["queries"]["tagged"] >= 1, status
    assert status["build"] == "compiled", status  # the package holds the mypyc build
    assert status["breakout"]["table"] == TABLE and status["breakout"]["routes_v4"] == 1, status
    assert lab.stop(daemon) == 0, daemon.output()
    # Stopping leaves the routes in place (a restart has no gap): the purge must remove them.
    assert route in lab.owned_routes()

    # --- Upgrade to a newer build: the edited conffile stays, without a prompt.
    out = lab.apt_ok("install", str(debs.v2))
    assert package_state() == ("installed", debs.v2_version)
    assert lab.daemons_outside() == [], out  # the edited config and enabled unit: no start
    assert CONF.read_text() == TEST_CONFIG, out
    leftovers = [p.name for p in CONF.parent.iterdir() if p.name != CONF.name]
    assert leftovers == [], leftovers  # no .dpkg-dist, .dpkg-new or .dpkg-old
    assert "Configuration file" not in out, out
    assert "neither enabled nor started" not in out, out
    assert WANTS.is_symlink(), "the upgrade disabled the unit"
    assert route in lab.owned_routes(), "the upgrade removed the routes"
    daemon = lab.start_daemon()  # the upgraded daemon adopts the routes it finds
    assert lab.dig(NAME) == [ADDRESS], daemon.output()
    assert lab.status()["breakout"]["routes_v4"] == 1
    assert lab.stop(daemon) == 0, daemon.output()

    # --- Purge, inside the namespace: its prerm's `resolverd --cleanup` acts on it.
    files = run("dpkg-query", "-L", PACKAGE).stdout.splitlines()
    out = lab.apt_ok("purge", PACKAGE)
    assert package_state()[0] == "not-installed", out
    assert lab.owned_routes() == [], out
    assert lab.owned_rules() == [], out
    assert lab.set_members() == [], out
    left = [p for p in files if os.path.lexists(p) and not shared_directory(p)]
    assert left == [], left
    for path in (*CREATED, "/usr/share/resolverd", "/usr/share/doc/resolverd", WANTS, DSH_STATE):
        assert not os.path.lexists(path), path
    overrides = run("dpkg-statoverride", "--list").stdout
    assert "/etc/resolverd" not in overrides, overrides
    # The system user stays, as Debian packages leave theirs (files owned by its uid may
    # remain); the lab removes it afterwards when it created it.
    pwd.getpwnam(USER)


def test_remove_keeps_the_config_and_purge_survives_one_that_does_not_load(
    debs: Debs, lab: PackageLab
) -> None:
    lab.apt_ok("install", str(debs.v1))
    CONF.write_text(TEST_CONFIG)
    # What a stopped daemon leaves behind, next to a route in the same table that is not
    # resolverd's (another protocol) and must stay.
    ours = f"198.51.100.20 via {WAN_GW} dev {WAN_IF} proto 245"
    other = f"198.51.100.30 via {WAN_GW} dev {WAN_IF} proto static"
    for route in (ours, other):
        lab.ip("route", "add", *route.split(), "table", str(TABLE))
    lab.ip("rule", "add", "from", "all", "lookup", str(TABLE), "priority", "1000", "proto", "245")

    # remove: the cleanup runs with the edited config; the config stays, the program goes.
    out = lab.apt_ok("remove", PACKAGE)
    assert package_state()[0] == "config-files", out
    assert lab.owned_routes() == [other], out
    assert lab.owned_rules() == [], out
    assert CONF.read_text() == TEST_CONFIG
    assert not os.path.lexists("/usr/bin/resolverd") and not VENV.exists(), out

    # Installing again keeps the edited config and says nothing about the example.
    out = lab.apt_ok("install", str(debs.v1))
    assert lab.daemons_outside() == [], out
    assert CONF.read_text() == TEST_CONFIG
    assert "neither enabled nor started" not in out, out

    # purge with a config that no longer loads: it says so, cleans up with the defaults
    # (table 365, protocol 245), and the purge goes through.
    CONF.write_text("upstreams: 53\nbreakout: [not, a, mapping]\n")
    lab.ip("route", "add", *ours.split(), "table", str(TABLE))
    lab.ip("rule", "add", "from", "all", "lookup", str(TABLE), "priority", "1000", "proto", "245")
    out = lab.apt_ok("purge", PACKAGE)
    assert package_state()[0] == "not-installed", out
    assert f"cleanup with {CONF} failed" in out, out
    assert lab.owned_routes() == [other], out
    assert lab.owned_rules() == [], out
    for path in CREATED:
        assert not os.path.lexists(path), path


def assert_running_as_the_unit_would(pid: int) -> None:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    uid = pwd.getpwnam(USER).pw_uid
    assert fields["Uid"].split() == [str(uid)] * 4, fields["Uid"]
    cap_net_bind_service, cap_net_admin = 10, 12
    assert int(fields["CapEff"], 16) == (1 << cap_net_bind_service) | (1 << cap_net_admin)


def shared_directory(path: str) -> bool:
    """A directory the package only shared: another package's (merged-/usr links such as /lib
    included), or /opt (which no package owns and dpkg leaves while anything is in it)."""
    if not os.path.isdir(path):
        return False
    if path in ("/.", "/opt"):
        return True
    res = subprocess.run(["dpkg-query", "-S", path], capture_output=True, text=True, check=False)
    return any(line.endswith(f": {path}") for line in res.stdout.splitlines())
