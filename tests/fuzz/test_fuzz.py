"""The fuzz tier: the corpus replayed, then each target fuzzed for a bounded time.

- Replay: every file under corpus/TARGET (the seeds, and every crash ever found, kept as a
  regression case) goes through its target in this process. Fast and deterministic.
- Fuzzing: each target runs under atheris (libFuzzer, coverage-guided over resolverd's own
  modules) in a child process, for its share of FUZZ_SECONDS (default 25 s in all; `make test`
  runs it; `FUZZ_SECONDS=600 make fuzz` for a longer run; 0 skips it). New inputs go to a
  scratch directory (or FUZZ_CORPUS/TARGET when set, to keep them between runs). A crash, a
  hang (10 s for one input) or a run over 1.5 GB fails the test, and the input that did it is
  copied into corpus/TARGET/, where the replay test keeps checking it once fixed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

pytestmark = pytest.mark.fuzz

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"
DEFAULT_SECONDS = 25.0
SHARE = {
    "query": 0.10, "reply": 0.13, "splice": 0.10, "cache": 0.13, "handler": 0.38,
    "chain": 0.08, "journal": 0.08,
}  # fmt: skip
ARTIFACTS = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")


def corpus_files(target: str) -> list[Path]:
    return sorted(p for p in (CORPUS / target).iterdir() if p.is_file())


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_the_corpus_replays_cleanly(target: str) -> None:
    files = corpus_files(target)
    assert files, f"no seeds in {CORPUS / target}: run python -m tests.fuzz.seeds"
    failures = []
    for path in files:
        try:
            TARGETS[target](path.read_bytes())
        except Exception as err:  # noqa: BLE001 - every failure is reported, with its file
            failures.append(f"{path.name}: {err!r}")
    assert not failures, "\n".join(failures)


def fuzz_seconds() -> float:
    text = os.environ.get("FUZZ_SECONDS", "")
    try:
        return float(text) if text else DEFAULT_SECONDS
    except ValueError:
        pytest.fail(f"FUZZ_SECONDS={text!r} is no number")


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_coverage_guided_fuzzing_finds_nothing(target: str, tmp_path: Path) -> None:
    seconds = max(1, round(fuzz_seconds() * SHARE[target]))
    if fuzz_seconds() <= 0:
        pytest.skip("FUZZ_SECONDS=0")
    kept = os.environ.get("FUZZ_CORPUS")
    scratch = Path(kept) / target if kept else tmp_path / "corpus"
    scratch.mkdir(parents=True, exist_ok=True)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    argv = [
        sys.executable, "-m", "tests.fuzz.run", target,
        f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=1536",
        f"-artifact_prefix={artifacts}/", "-print_final_stats=1",
        str(scratch), str(CORPUS / target),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        run = subprocess.run(
            argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=seconds + 120
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the {target} fuzzer did not stop after {seconds} s: {err}")
    output = run.stderr + run.stdout
    found = sorted(p for p in artifacts.iterdir() if p.name.startswith(ARTIFACTS))
    kept_cases = []
    for path in found:
        case = CORPUS / target / path.name
        shutil.copyfile(path, case)
        kept_cases.append(str(case.relative_to(REPO)))
    done = [
        line for line in output.splitlines() if "DONE" in line or "stat::number_of_execut" in line
    ]
    print(f"\n{target}: {seconds} s; " + "; ".join(done))
    if run.returncode != 0 or found:
        tail = "\n".join(output.splitlines()[-60:])
        pytest.fail(
            f"the {target} fuzzer failed (exit {run.returncode}); the input is kept as "
            f"{', '.join(kept_cases) or '(none written)'}\n{tail}"
        )
