"""The endpoint web service's JSON -> Policy: rules per set, ``<tenant>`` names with and
without a tenant, structural errors. (The client: tests/integration/test_policyfeed.py.)"""

from __future__ import annotations

import pytest

from policy.endpoints import (
    policy_from_endpoints_json,
)
from policy.loader import PolicyError, load_policy_text
from policy.matcher import Matcher
from policy.model import Rule
from tests.fakeendpoints import SAMPLE

pytestmark = pytest.mark.unit


def test_sets_become_rules() -> None:
    warnings: list[str] = []
    policy = policy_from_endpoints_json(
        SAMPLE, "2024103100", {"Optimize", "Allow"}, source="ws", warnings=warnings
    )
    assert policy.version == "2024103100"
    assert policy.source == "ws"
    assert [r.row for r in policy.rules] == [1, 11, 31, 46]  # 95 is Default: left out
    assert policy.rules[0] == Rule(
        row=1,
        purpose="Exchange Online",
        required=True,
        patterns=("outlook.office.com", "outlook.office365.com"),
        cidrs=("13.107.6.152/31", "2603:1006::/40"),
        ports=("tcp/80", "tcp/443"),
        expressroute=True,
        category="Optimize",
    )
    skype = policy.rules[1]
    assert skype.patterns == ()
    assert skype.ports == ("udp/3478", "udp/3479", "udp/3480", "udp/3481")
    sharepoint = policy.rules[2]
    assert sharepoint.patterns == ("<tenant>.sharepoint.com", "*.sharepoint.com")
    assert sharepoint.cidrs == ("13.107.136.0/22",)
    assert sharepoint.ports == ("tcp/80", "tcp/443", "udp/3478-3481")
    assert sharepoint.notes == "Hybrid search"
    common = policy.rules[3]
    assert common.purpose == "Common"
    assert (common.required, common.expressroute, common.category) == (False, False, "Allow")
    needs_tenant = "'<tenant>' inside a name needs policy.tenant (only a whole first label "
    needs_tenant += "'<tenant>.' is a wildcard); skipped"
    assert warnings == [
        f"ws: /2/urls/1: '<tenant>-my.sharepoint.com': {needs_tenant}",
        f"ws: /2/urls/2: '<tenant>-files.sharepoint.com': {needs_tenant}",
        "ws: /2/ips/1: '10.0.0.1/8': 10.0.0.1/8 has host bits set; skipped",
        "ws: /2/udpPorts: '0': port 0 is outside 1-65535; skipped",
    ]


def test_web_service_rules_in_the_matcher() -> None:
    policy = policy_from_endpoints_json(SAMPLE, "v", {"Optimize", "Allow", "Default"})
    matcher = Matcher(policy.rules)
    found = matcher.match("x.contoso.sharepoint.com")
    assert found is not None
    assert found.to_json() == {
        "row": 31,
        "pattern": "*.sharepoint.com",
        "required": True,
        "category": "Optimize",
        "ports": ["tcp/80", "tcp/443", "udp/3478-3481"],
    }
    # <tenant>.sharepoint.com without a tenant: any one label, shown as written
    tenant = matcher.match("contoso.sharepoint.com")
    assert tenant is not None
    assert (tenant.rule.row, tenant.pattern) == (31, "<tenant>.sharepoint.com")
    office = matcher.match("www.office.com")
    assert office is not None and office.rule.category == "Default"
    assert matcher.match("sharepoint.com") is None


def test_tenant_makes_the_service_names_exact() -> None:
    warnings: list[str] = []
    policy = policy_from_endpoints_json(
        SAMPLE, "v", {"Optimize"}, tenant="contoso", warnings=warnings
    )
    sharepoint = policy.rules[2]
    assert sharepoint.patterns == (
        "contoso.sharepoint.com",
        "contoso-my.sharepoint.com",
        "contoso-files.sharepoint.com",
        "*.sharepoint.com",
    )
    assert not any("tenant" in warning for warning in warnings)
    matcher = Matcher(policy.rules)
    for name in (
        "contoso.sharepoint.com",
        "contoso-my.sharepoint.com",
        "CONTOSO-files.sharepoint.com.",
    ):
        found = matcher.match(name)
        assert found is not None and found.pattern == name.lower().rstrip(".")
        assert found.rule.row == 31
    # another tenant's names are only covered by the service's own *.sharepoint.com
    other = matcher.match("fabrikam-my.sharepoint.com")
    assert other is not None and other.pattern == "*.sharepoint.com"


def test_structural_problems_are_all_reported() -> None:
    data: list[object] = [
        "not an object",
        {"id": "x", "serviceArea": "A", "category": "Allow", "required": True},
        {"id": 2, "serviceArea": 5, "category": "Allow", "required": "yes", "expressRoute": 1},
        {"id": 3, "serviceArea": "A", "category": "Allow", "required": True, "expressRoute": True},
        {"id": 3, "serviceArea": "A", "category": "Allow", "required": True, "expressRoute": True},
        {
            "id": 4,
            "serviceArea": "A",
            "category": "Allow",
            "required": True,
            "expressRoute": True,
            "urls": "a.example",
            "tcpPorts": 443,
        },
    ]
    with pytest.raises(PolicyError) as caught:
        policy_from_endpoints_json(data, "v", {"Allow"})
    assert caught.value.errors == [
        "endpoints: /0: expected an object, got str",
        "endpoints: /1: missing key 'expressRoute'",
        "endpoints: /1/id: expected a positive integer, got 'x'",
        "endpoints: /2/required: expected true or false, got 'yes'",
        "endpoints: /2/expressRoute: expected true or false, got 1",
        "endpoints: /2/serviceArea: expected a string, got 5",
        "endpoints: /4/id: duplicate id 3",
        "endpoints: /5/urls: expected a list of strings",
    ]
    with pytest.raises(PolicyError) as caught:
        policy_from_endpoints_json({"not": "a list"}, "v", {"Allow"})
    assert caught.value.errors == ["endpoints: /: expected a list of endpoint sets"]


def test_entries_broader_than_a_registrable_domain_or_the_prefix_bounds_are_skipped() -> None:
    """What a hostile service sent (*.com, 1.0.0.0/8) never reaches the policy; the operator's
    own policy files are trusted and keep the loader's rules."""
    broad = {
        "id": 5,
        "serviceArea": "Common",
        "urls": [
            "*.com",  # a top-level domain
            "*.co.uk",  # a public suffix of two labels
            "<tenant>.com.au",  # the one-label wildcard: the same rule
            "*.COM.BR.",
            "<tenant>.onmicrosoft.com",
            "*.office.com",
            "*.cloud.microsoft",  # a brand top-level domain: two labels are enough
            "*.svc.ms",  # a two-letter country code, not a public second level
            "*.contoso.co.uk",
        ],
        "ips": ["1.0.0.0/8", "64.0.0.0/9", "64.0.0.0/10", "2603::/16", "2603::/31", "2603::/32"],
        "expressRoute": False,
        "category": "Allow",
        "required": True,
    }
    warnings: list[str] = []
    policy = policy_from_endpoints_json([broad], "v", {"Allow"}, source="ws", warnings=warnings)
    (rule,) = policy.rules
    assert rule.patterns == (
        "<tenant>.onmicrosoft.com",
        "*.office.com",
        "*.cloud.microsoft",
        "*.svc.ms",
        "*.contoso.co.uk",
    )
    assert rule.cidrs == ("64.0.0.0/10", "2603::/32")
    registrable = "broader than a registrable domain; skipped"
    v4 = "broader than /10: an IPv4 prefix from the service must be /10 or longer; skipped"
    v6 = "broader than /32: an IPv6 prefix from the service must be /32 or longer; skipped"
    assert warnings == [
        f"ws: /0/urls/0: '*.com': a wildcard over every name in 'com' (a top-level domain): "
        f"{registrable}",
        f"ws: /0/urls/1: '*.co.uk': a wildcard over every name in 'co.uk' (a public suffix): "
        f"{registrable}",
        "ws: /0/urls/2: '<tenant>.com.au': a wildcard over every name in 'com.au' (a public "
        f"suffix): {registrable}",
        "ws: /0/urls/3: '*.COM.BR.': a wildcard over every name in 'com.br' (a public "
        f"suffix): {registrable}",
        f"ws: /0/ips/0: '1.0.0.0/8': {v4}",
        f"ws: /0/ips/1: '64.0.0.0/9': {v4}",
        f"ws: /0/ips/3: '2603::/16': {v6}",
        f"ws: /0/ips/4: '2603::/31': {v6}",
    ]
    matcher = Matcher(policy.rules)
    assert matcher.match("anything.com") is None
    assert matcher.match("bank.co.uk") is None
    # With a tenant, <tenant>.com.au is one exact name, not a wildcard: nothing to bound.
    with_tenant = policy_from_endpoints_json([broad], "v", {"Allow"}, tenant="contoso")
    assert "contoso.com.au" in with_tenant.rules[0].patterns

    operator = load_policy_text(
        'version: "1"\nrules:\n  - {row: 1, purpose: own, required: true, '
        'domains: ["*.com"], cidrs: ["1.0.0.0/8"]}\n',
        "own.yaml",
    )
    assert (operator.rules[0].patterns, operator.rules[0].cidrs) == (("*.com",), ("1.0.0.0/8",))
