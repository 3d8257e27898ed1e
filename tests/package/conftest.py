"""Fixtures for the package tests: root or a loud failure, the .deb built once per session, and
a namespace lab per test that purges the package and removes itself, failures included.

These tests install the package on this machine, as an administrator would (CI runs them as
root on a fresh machine). Nothing that touches routes, rules or sets runs outside the
namespaces they build: see tests/package/lab.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.package.lab import Debs, LabError, PackageLab, build_debs, package_state

TOOLS = (
    "apt-get", "dpkg", "dpkg-query", "ip", "ipset", "dig", "setpriv", "make", "git",
    "systemd-analyze",
)  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def _root_tools_and_no_package() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "tests/package install, upgrade and purge the .deb and build network namespaces: "
            "run them as root (sudo make test-package); routes are only touched in namespaces",
            pytrace=False,
        )
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"tests/package need {', '.join(missing)}: run make sysdeps", pytrace=False)
    state = package_state()
    if state[0] != "not-installed":
        pytest.fail(
            f"resolverd is already installed here ({' '.join(state)}); these tests install and "
            "purge it: remove it first (apt-get purge resolverd)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def debs() -> Iterator[Debs]:
    tmp = Path(tempfile.mkdtemp(prefix="rsvpkg-debs-"))
    try:
        try:
            built = build_debs(tmp)
        except LabError as err:
            pytest.fail(str(err), pytrace=False)
        yield built
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temporary directory removed afterwards (pytest keeps its tmp_path directories)."""
    tmp = Path(tempfile.mkdtemp(prefix="rsvpkg-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def lab() -> Iterator[PackageLab]:
    tmp = Path(tempfile.mkdtemp(prefix="rsvpkg-lab-"))
    try:
        with PackageLab(tmp) as built:
            yield built
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
