"""policy/microsoft365.yaml against the seed table it was transcribed from.

The seed (shared/seeds/000_*.txt, beside the repository) is parsed here on its own terms: each row
is a line holding just its number, then the "Required:/Optional: ... Destination: ..." text, then
the ExpressRoute Yes/No line, then the CIDR and port columns. Names, flags, prefixes and ports
are read from it and compared with the built-in policy, so the two cannot drift apart. The
seed's ``<tenant>.onmicrosoft.com`` is kept as written: the policy holds it the same way.
Without the seed directory every test here fails with one line saying where it looked.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from policy.loader import builtin_policy
from policy.model import Rule

pytestmark = pytest.mark.unit

SEEDS = Path(__file__).resolve().parents[2].parent / "shared" / "seeds"
HOSTNAME = re.compile(r"^(\*\.|<tenant>\.)?([a-z0-9-]+\.)+[a-z]{2,}$", re.IGNORECASE)
TRAILING = ".,;:()"


@dataclass
class SeedRow:
    row: int
    required: bool
    names: set[str]
    expressroute: bool | None
    cidrs: set[str]
    ports: set[str]


def seed_text(seeds: Path = SEEDS) -> str:
    found = sorted(seeds.glob("000_*.txt")) if seeds.is_dir() else []
    if not found:
        pytest.fail(
            f"seed table not found: no 000_*.txt in {seeds} (shared/seeds beside the checkout)",
            pytrace=False,
        )
    return found[0].read_text(encoding="utf-8")


def split_rows(text: str) -> dict[int, list[str]]:
    """Row number -> the row's non-empty lines, from the table header to 'Additional reading'."""
    lines = [line.strip() for line in text.splitlines()]
    start = lines.index("Port") + 1  # the last column header
    rows: dict[int, list[str]] = {}
    current: list[str] | None = None
    for line in lines[start:]:
        if line.startswith("Additional reading"):
            break
        if line == str(len(rows) + 1):
            current = rows[len(rows) + 1] = []
        elif line and current is not None:
            current.append(line)
    return rows


def parse_row(number: int, lines: list[str]) -> SeedRow:
    flags = [i for i, line in enumerate(lines) if line in ("Yes", "No")]
    flag_at = flags[0] if flags else len(lines)
    purpose = " ".join(lines[:flag_at])
    names: set[str] = set()
    if "Destination:" in purpose:
        for token in purpose.split("Destination:", 1)[1].split():
            token = token.rstrip(TRAILING).lower()
            if HOSTNAME.match(token):
                names.add(token)
    after = lines[flag_at + 1 :]
    cidrs = set()
    for token in " ".join(after).split():
        if "/" in token:
            try:
                cidrs.add(str(ipaddress.ip_network(token)))
            except ValueError:
                continue  # not a prefix, e.g. "and/or"
    ports = {f"tcp/{n}" for n in re.findall(r"\b\d+\b", after[-1])} if after else set()
    return SeedRow(
        row=number,
        required=purpose.startswith("Required:"),
        names=names,
        expressroute=(lines[flag_at] == "Yes") if flags else None,
        cidrs=cidrs,
        ports=ports,
    )


@pytest.fixture(scope="module")
def seed_rows() -> dict[int, SeedRow]:
    rows = split_rows(seed_text())
    return {number: parse_row(number, lines) for number, lines in rows.items()}


@pytest.fixture(scope="module")
def rules() -> dict[int, Rule]:
    return {rule.row: rule for rule in builtin_policy().rules}


def test_sixteen_rows_on_both_sides(seed_rows: dict[int, SeedRow], rules: dict[int, Rule]) -> None:
    assert sorted(seed_rows) == list(range(1, 17))
    assert len(builtin_policy().rules) == 16
    assert sorted(rules) == list(range(1, 17))


def test_the_parser_reads_the_seed(seed_rows: dict[int, SeedRow]) -> None:
    # spot checks that keep the seed parser itself honest
    assert "<tenant>.onmicrosoft.com" in seed_rows[3].names
    assert "*.onmicrosoft.com" in seed_rows[10].names
    assert "webshell.suite.office.com" in seed_rows[3].names
    assert len(seed_rows[3].names) == 26
    assert len(seed_rows[6].names) == 32  # learn.microsoft.com is listed twice
    assert seed_rows[12].names >= {"manage.office.com", "wu.client.hip.live.com"}
    assert seed_rows[1].names == seed_rows[13].names == set()
    assert seed_rows[15].names == seed_rows[16].names == set()
    assert seed_rows[13].expressroute is None
    assert len(seed_rows[14].cidrs) == 5
    assert seed_rows[15].ports == {f"tcp/{n}" for n in (80, 443, 25, 110, 995, 143, 993)}


@pytest.mark.parametrize("row", range(1, 17))
def test_row_matches_seed(row: int, seed_rows: dict[int, SeedRow], rules: dict[int, Rule]) -> None:
    seed, rule = seed_rows[row], rules[row]
    assert seed.names <= set(rule.patterns), "a seed name is missing from the policy"
    assert set(rule.patterns) == seed.names, "the policy has a name the seed does not"
    assert len(rule.patterns) == len(set(rule.patterns))
    assert rule.required is seed.required
    assert rule.expressroute is seed.expressroute
    assert set(rule.cidrs) == seed.cidrs
    assert set(rule.ports) == seed.ports
    assert rule.category is None


def test_a_missing_seed_directory_fails_with_one_line(tmp_path: Path) -> None:
    nowhere = tmp_path / "no-seeds"
    with pytest.raises(pytest.fail.Exception) as caught:
        seed_text(nowhere)
    assert str(caught.value) == (
        f"seed table not found: no 000_*.txt in {nowhere} (shared/seeds beside the checkout)"
    )
    assert not caught.value.pytrace  # the message alone, no traceback


def test_row_5_keeps_its_cidr_note(rules: dict[int, Rule]) -> None:
    assert rules[5].notes == "portal and shared IP ranges - Internet-only IPs."
