"""No source module over 16 KiB: a module that grows past it holds more than one thing."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 16 * 1024


def test_no_module_is_over_16_kib() -> None:
    sizes = {
        str(path.relative_to(ROOT)): path.stat().st_size
        for package in ("resolver", "policy")
        for path in (ROOT / package).rglob("*.py")
    }
    assert len(sizes) > 50  # the tree was found
    assert {name: size for name, size in sizes.items() if size > LIMIT} == {}
