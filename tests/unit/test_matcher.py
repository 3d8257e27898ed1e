"""The matcher: label-wise wildcards and the precedence rules, on the built-in table and on
small hand-made rule sets, plus a brute-force cross-check."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.loader import builtin_policy, load_policy
from policy.matcher import Matcher
from policy.model import Match, Rule

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def seed() -> Matcher:
    return Matcher(builtin_policy().rules)


def won(matcher: Matcher, name: str) -> tuple[int, str] | None:
    found = matcher.match(name)
    return None if found is None else (found.rule.row, found.pattern)


def rule(row: int, *patterns: str, required: bool = True) -> Rule:
    return Rule(row=row, purpose=f"row {row}", required=required, patterns=patterns)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # exact in a required row beats the same exact name in an optional row
        ("manage.office.com", (7, "manage.office.com")),
        # an exact name beats every wildcard (row 10's *.office.com)
        ("forms.office.com", (12, "forms.office.com")),
        ("office.com", (3, "office.com")),
        # row 3's <tenant>.onmicrosoft.com is one label: narrower than row 10's *.onmicrosoft.com
        ("contoso.onmicrosoft.com", (3, "<tenant>.onmicrosoft.com")),
        ("a.b.onmicrosoft.com", (10, "*.onmicrosoft.com")),
        # the longer wildcard wins over the shorter one
        ("tenant.manage.office.com", (7, "*.manage.office.com")),
        ("x.y.portal.cloudappsecurity.com", (3, "*.portal.cloudappsecurity.com")),
        ("x.eu.portal.cloudappsecurity.com", (3, "*.eu.portal.cloudappsecurity.com")),
        ("team.staffhub.office.com", (12, "*.staffhub.office.com")),
        # an exact name that is also the apex of a longer wildcard
        ("staffhub.office.com", (12, "staffhub.office.com")),
        # more than one label under a wildcard
        ("a.b.c.onmicrosoft.com", (10, "*.onmicrosoft.com")),
        ("deep.er.blob.core.windows.net", (8, "*.blob.core.windows.net")),
        # the same wildcard in two optional rows: the lower row wins
        ("acct.blob.core.windows.net", (8, "*.blob.core.windows.net")),
        # row 14 keeps its name next to its prefixes
        ("testconnectivity.microsoft.com", (14, "testconnectivity.microsoft.com")),
        ("learn.microsoft.com", (6, "learn.microsoft.com")),
        ("unlisted.microsoft.com", (10, "*.microsoft.com")),
    ],
)
def test_seed_precedence(seed: Matcher, name: str, expected: tuple[int, str]) -> None:
    assert won(seed, name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "onmicrosoft.com",  # the apex of a wildcard is not covered by it
        "office365.com",
        "blob.core.windows.net",
        "office.com.evil.example",
        "notoffice.com",
        "evilonmicrosoft.com",
        "example.com",
        "com",
        "",
        ".",
    ],
)
def test_seed_misses(seed: Matcher, name: str) -> None:
    assert seed.match(name) is None


def test_lookalike_labels_fall_back_to_the_shorter_wildcard(seed: Matcher) -> None:
    # "evilmanage" is not "manage": only row 10's *.office.com covers it
    assert won(seed, "evilmanage.office.com") == (10, "*.office.com")
    assert won(seed, "manage.office.com.evil.example") is None


def test_case_and_trailing_dot(seed: Matcher) -> None:
    assert won(seed, "MANAGE.Office.COM.") == (7, "manage.office.com")
    assert won(seed, "Contoso.OnMicrosoft.com.") == (3, "<tenant>.onmicrosoft.com")


def test_rows_without_names_match_nothing(seed: Matcher) -> None:
    assert len(seed) == 16
    nameless = {r.row for r in builtin_policy().rules if not r.patterns}
    assert nameless == {1, 13, 15, 16}


def test_exact_beats_longer_wildcard_and_row_order() -> None:
    m = Matcher(
        [
            rule(1, "*.a.example.com"),
            rule(9, "x.a.example.com", required=False),
            rule(2, "*.example.com"),
        ]
    )
    assert won(m, "x.a.example.com") == (9, "x.a.example.com")
    assert won(m, "y.a.example.com") == (1, "*.a.example.com")
    assert won(m, "y.b.example.com") == (2, "*.example.com")
    assert won(m, "a.example.com") == (2, "*.example.com")
    assert won(m, "example.com") is None


def test_tenant_is_one_label_and_narrower_than_a_wildcard() -> None:
    # the *. rule would win every tie (required, lower row): the one-label wildcard still wins
    m = Matcher(
        [
            rule(1, "*.example.com", "exact.example.com"),
            rule(9, "<tenant>.example.com", required=False),
            rule(2, "*.a.example.com"),
        ]
    )
    assert won(m, "contoso.example.com") == (9, "<tenant>.example.com")
    assert won(m, "exact.example.com") == (1, "exact.example.com")  # exact beats it
    assert won(m, "x.y.example.com") == (1, "*.example.com")  # two labels: not one-label
    assert won(m, "a.example.com") == (9, "<tenant>.example.com")  # apex of *.a: not covered
    assert won(m, "x.a.example.com") == (2, "*.a.example.com")  # longer wildcard
    assert won(m, "example.com") is None
    assert Matcher([rule(1, "<tenant>.example.com")]).match("x.y.example.com") is None


def test_tenant_one_label_ties_required_then_row() -> None:
    optional_low = rule(1, "<tenant>.example.com", required=False)
    required_high = rule(5, "<tenant>.example.com")
    required_low = rule(3, "<tenant>.example.com")
    m = Matcher([optional_low, required_high, required_low])
    assert m.match("x.example.com") == Match(required_low, "<tenant>.example.com")


def test_builtin_table_with_a_tenant() -> None:
    m = Matcher(load_policy("microsoft365", (), include_optional=True, tenant="contoso").rules)
    assert won(m, "contoso.onmicrosoft.com") == (3, "contoso.onmicrosoft.com")
    assert won(m, "fabrikam.onmicrosoft.com") == (10, "*.onmicrosoft.com")
    assert won(m, "a.b.onmicrosoft.com") == (10, "*.onmicrosoft.com")
    required = load_policy("microsoft365", (), include_optional=False, tenant="contoso")
    assert won(Matcher(required.rules), "fabrikam.onmicrosoft.com") is None


def test_tie_required_then_row_then_order() -> None:
    optional_low = rule(1, "*.example.com", "host.example.com", required=False)
    required_high = rule(5, "*.example.com", "host.example.com")
    required_low = rule(3, "*.example.com", "host.example.com")
    m = Matcher([optional_low, required_high, required_low])
    assert m.match("host.example.com") == Match(required_low, "host.example.com")
    assert m.match("a.example.com") == Match(required_low, "*.example.com")
    # equal rows: the earlier rule wins
    first = Rule(row=4, purpose="first", required=True, patterns=("dup.example",))
    second = Rule(row=4, purpose="second", required=True, patterns=("dup.example",))
    assert Matcher([first, second]).match("dup.example") == Match(first, "dup.example")


def test_match_any_returns_first_matching_name(seed: Matcher) -> None:
    chain = ["www.example.com", "cdn.example.net", "x.office365.com", "manage.office.com"]
    found = seed.match_any(chain)
    assert found is not None
    assert found[0] == "x.office365.com"
    assert found[1].rule.row == 2
    assert seed.match_any(["example.com", "example.net"]) is None
    assert seed.match_any([]) is None


def test_len_counts_every_rule() -> None:
    assert len(Matcher([])) == 0
    assert len(Matcher([rule(1), rule(2, "a.example")])) == 2
    assert Matcher([]).match("anything.example") is None


def test_match_json_shape(seed: Matcher) -> None:
    found = seed.match("manage.office.com")
    assert found is not None
    assert found.to_json() == {
        "row": 7,
        "pattern": "manage.office.com",
        "required": True,
        "category": None,
        "ports": ["tcp/443"],
    }


# --- cross-check against a direct reading of the precedence rules -------------------------

LABELS = st.sampled_from(["a", "b", "c", "ab"])
NAMES = st.lists(LABELS, min_size=1, max_size=4).map(".".join)
PATTERNS = st.tuples(st.sampled_from(["", "*.", "<tenant>."]), NAMES).map("".join)
RULES = st.lists(
    st.tuples(st.integers(1, 5), st.booleans(), st.lists(PATTERNS, max_size=3)),
    max_size=8,
)


def reference(rules: list[Rule], name: str) -> Match | None:
    """Every candidate scored by (exact, wildcard length, one-label, required, -row, -position)."""
    labels = name.split(".")
    best: tuple[tuple[int, int, int, int, int, int], Match] | None = None
    for position, r in enumerate(rules):
        for pattern in r.patterns:
            if pattern.startswith("*."):
                base = pattern[2:].split(".")
                if len(labels) <= len(base) or labels[-len(base) :] != base:
                    continue
                score = (0, len(base), 0, r.required, -r.row, -position)
            elif pattern.startswith("<tenant>."):
                base = pattern[len("<tenant>.") :].split(".")
                if len(labels) != len(base) + 1 or labels[1:] != base:
                    continue
                score = (0, len(base), 1, r.required, -r.row, -position)
            elif pattern == name:
                score = (1, 0, 0, r.required, -r.row, -position)
            else:
                continue
            if best is None or score > best[0]:
                best = (score, Match(r, pattern))
    return None if best is None else best[1]


@given(RULES, NAMES)
def test_trie_agrees_with_reference(spec: list[tuple[int, bool, list[str]]], name: str) -> None:
    rules = [Rule(row=row, purpose="", required=req, patterns=tuple(p)) for row, req, p in spec]
    assert Matcher(rules).match(name) == reference(rules, name)
