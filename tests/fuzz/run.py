"""Runs one fuzz target under atheris (libFuzzer, coverage-guided):

    python -m tests.fuzz.run TARGET [libFuzzer flags] [CORPUS_DIR ...]

e.g. `python -m tests.fuzz.run handler -max_total_time=600 /tmp/corpus tests/fuzz/corpus/handler`
(new inputs go to the first directory). resolverd's own modules (resolver.*, policy.*) are
instrumented for coverage; dnslib and the standard library are not. test_fuzz.py drives this
for a bounded time in `make test`.
"""

from __future__ import annotations

import sys

import atheris


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    name = sys.argv.pop(1)
    with atheris.instrument_imports(include=["resolver", "policy"]):
        from tests.fuzz import scenario, targets
    _ = scenario  # imported inside the block so that what it imports is instrumented too
    target = targets.TARGETS[name]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
