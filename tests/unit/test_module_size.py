"""No source module over 16 KiB: a module that grows past it holds more than one thing."""

from __future__ import annotations

from pathlib import Path

import pytest

import policy
import resolver

pytestmark = pytest.mark.unit

LIMIT = 16 * 1024


def test_no_module_is_over_16_kib() -> None:
    """The sources beside the imported packages: the checkout, or the installed copy that the
    compiled build's tests run against (pip installs the .py files beside the extensions)."""
    sizes = {
        str(path.relative_to(root.parent)): path.stat().st_size
        for root in (Path(resolver.__file__).parent, Path(policy.__file__).parent)
        for path in root.rglob("*.py")
    }
    assert len(sizes) > 50  # the tree was found
    assert {name: size for name, size in sizes.items() if size > LIMIT} == {}
