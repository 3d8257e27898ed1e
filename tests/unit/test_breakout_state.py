"""The state file: atomic writes, round trip, and tolerance of bad files."""

from __future__ import annotations

import os
from typing import Any

import pytest

from resolver.net import state

pytestmark = pytest.mark.unit


def test_round_trip(tmp_path: Any) -> None:
    saved = [state.SavedHold("203.0.113.1", 1000.5, {"x.office.com": 1000.5}, 1)]
    state.write(str(tmp_path), state.encode(saved, 365, 245, 900.0))
    assert state.load(str(tmp_path)) == saved
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


def test_missing_and_corrupt_files_are_empty(tmp_path: Any) -> None:
    assert state.load(str(tmp_path)) == []
    (tmp_path / state.FILE_NAME).write_text("{not json")
    assert state.load(str(tmp_path)) == []
    (tmp_path / state.FILE_NAME).write_text('{"version": 1, "holds": {"x": {"names": 3}}}')
    assert state.load(str(tmp_path)) == []
    assert state.remove(str(tmp_path))
    assert not state.remove(str(tmp_path))


def test_write_creates_the_directory(tmp_path: Any) -> None:
    d = str(tmp_path / "a" / "b")
    state.write(d, state.encode([], 365, 245, 1.0))
    assert state.load(d) == []
