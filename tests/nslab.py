"""What the namespace labs share (tests/netns/lab.py, tests/bench/harness.py,
tests/package/lab.py): a lab is built on entry and removed on exit, and a build that fails
halfway removes what it had made before the error goes on."""

from __future__ import annotations

from typing import Self


class NamespaceLab:
    """Subclasses give `_build` and a `close` that copes with a half-built lab."""

    def _build(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
