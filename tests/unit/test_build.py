"""The build under test is the one the run meant to test.

`make test` runs the unit and integration tiers twice: in .venv (an editable install, so the
modules are the checkout's Python files) and in .venv-compiled (a non-editable install whose
hot modules setup.py compiled with mypyc), from a copy of the tests that cannot import the
checkout's sources. Each run says which build it expects in RESOLVERD_EXPECT_BUILD; without it
(a developer running pytest by hand) only the report's consistency is checked.
"""

from __future__ import annotations

import os

import pytest

from resolver import buildinfo
from resolver.dns import wire

pytestmark = pytest.mark.unit


def test_the_reported_build_matches_the_modules_imported() -> None:
    compiled = wire.__file__.endswith(".so")
    assert buildinfo.build() == (buildinfo.COMPILED if compiled else buildinfo.INTERPRETED)


def test_the_build_imported_is_the_one_the_run_expects() -> None:
    expected = os.environ.get("RESOLVERD_EXPECT_BUILD")
    if not expected:
        pytest.skip("RESOLVERD_EXPECT_BUILD is not set (make test sets it)")
    assert expected in (buildinfo.COMPILED, buildinfo.INTERPRETED), expected
    assert buildinfo.build() == expected, (
        f"expected the {expected} build, but resolver.dns.wire is {wire.__file__}"
    )
