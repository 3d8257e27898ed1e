"""policy.tenant: one label that can stand in a host name (it becomes part of the policy's names:
``<tenant>.onmicrosoft.com`` -> ``contoso.onmicrosoft.com``)."""

from __future__ import annotations

import pytest

from resolver.config import ConfigError, parse_config

pytestmark = pytest.mark.unit


def tenant_of(value: object) -> str | None:
    return parse_config({"upstreams": ["192.0.2.53"], "policy": {"tenant": value}}).policy.tenant


def test_tenant_forms() -> None:
    assert tenant_of("Contoso") == "contoso"
    assert tenant_of("contoso-eu1") == "contoso-eu1"
    assert parse_config({"upstreams": ["192.0.2.53"]}).policy.tenant is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("a.b", "'a.b': the tenant is one label, e.g. contoso"),
        ("con_toso", "'con_toso': a tenant is letters, digits and inner hyphens"),
        ("-contoso", "'-contoso': a tenant is letters, digits and inner hyphens"),
        ("contoso-", "'contoso-': a tenant is letters, digits and inner hyphens"),
        ("<tenant>", "'<tenant>': invalid character '<'"),
        ("*", "'*': '*' is only allowed as the whole first label"),
    ],
)
def test_bad_tenants(value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        tenant_of(value)
    assert caught.value.errors == [f"/policy/tenant: {problem}"]
