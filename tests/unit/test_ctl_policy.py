"""resolverctl policy export: YAML that loads back, and a PAC file that routes the right hosts."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from policy.loader import load_policy, load_policy_text
from policy.model import Policy, Rule
from resolver.ctl import client
from resolver.ctl.main import main
from resolver.ctl.policy import proxy_result, to_pac, to_yaml

pytestmark = pytest.mark.unit

POLICY = Policy(
    rules=(
        Rule(
            row=2,
            purpose="Microsoft 365 portal",
            required=True,
            patterns=("*.office365.com", "admin.microsoft.com"),
            ports=("tcp/443",),
            expressroute=False,
        ),
        Rule(
            row=11,
            purpose="Teams media",
            required=True,
            patterns=("*.teams.microsoft.com",),
            cidrs=("13.107.64.0/18", "52.112.0.0/14", "2603:1063::/39"),
            ports=("udp/3478-3481",),
            category="Optimize",
            notes="media: needs low latency",
        ),
    ),
    source="test",
    version="2024-01",
)


def test_yaml_export_loads_back_as_the_same_rules() -> None:
    text = to_yaml(POLICY)
    assert text.startswith("# Policy exported by resolverctl from test\n")
    again = load_policy_text(text, "export.yaml")
    assert again.rules == POLICY.rules
    assert again.version == "2024-01"


def test_builtin_policy_export_loads_back() -> None:
    builtin = load_policy("microsoft365", (), include_optional=True)
    again = load_policy_text(to_yaml(builtin), "export.yaml")
    assert again.rules == builtin.rules
    assert len(again.rules) == 16


def test_export_command_prints_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "export", "--format", "yaml"]) == 0
    out = capsys.readouterr().out
    assert load_policy_text(out, "stdout").rules == load_policy("microsoft365", (), True).rules


def test_export_takes_the_policy_from_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text(to_yaml(POLICY))
    config = tmp_path / "resolverd.yaml"
    config.write_text("upstreams: ['192.0.2.53']\npolicy: {builtin: none, files: [extra.yaml]}\n")
    assert main(["--config", str(config), "policy", "export"]) == 0
    assert load_policy_text(capsys.readouterr().out, "x").rules == POLICY.rules
    # --config after the command works too.
    assert main(["policy", "export", "--config", str(config), "--format", "pac"]) == 0
    captured = capsys.readouterr()
    assert '"*.teams.microsoft.com"' in captured.out
    assert "office.com" not in captured.out
    assert "no --proxy given" in captured.err


def test_export_with_a_bad_config_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("upstreams: []\npolicy: {files: [missing.yaml]}\n")
    assert main(["--config", str(config), "policy", "export"]) == 1
    err = capsys.readouterr().err
    assert "/upstreams: at least one upstream is required" in err


TENANT_POLICY = Policy(
    rules=(
        Rule(
            row=3,
            purpose="tenant names",
            required=True,
            patterns=("<tenant>.onmicrosoft.com", "<tenant>.example.net", "*.wild.example.net"),
            ports=("tcp/443",),
        ),
    ),
    source="tenant-test",
)


def test_yaml_export_keeps_tenant_patterns_as_written() -> None:
    text = to_yaml(TENANT_POLICY)
    assert "- <tenant>.onmicrosoft.com\n" in text
    assert load_policy_text(text, "export.yaml").rules == TENANT_POLICY.rules


def test_export_with_a_tenant_round_trips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "resolverd.yaml"
    config.write_text(
        "upstreams: ['192.0.2.53']\npolicy: {tenant: contoso, include_optional: true}\n"
    )
    assert main(["--config", str(config), "policy", "export", "--format", "yaml"]) == 0
    out = capsys.readouterr().out
    again = load_policy_text(out, "stdout")
    named = load_policy("microsoft365", (), include_optional=True, tenant="contoso")
    assert again.rules == named.rules
    assert "contoso.onmicrosoft.com" in again.rules[2].patterns
    assert "<tenant>" not in out
    # without a tenant the placeholder is exported as the built-in table writes it
    assert main(["policy", "export", "--format", "yaml"]) == 0
    assert "- <tenant>.onmicrosoft.com\n" in capsys.readouterr().out


def test_pac_tenant_pattern_is_one_label() -> None:
    pac = to_pac(TENANT_POLICY, "PROXY p:1")
    assert (
        '(host.indexOf(".") > 0 && host.substring(host.indexOf(".")) == ".onmicrosoft.com")' in pac
    )
    assert 'shExpMatch(host, "*.onmicrosoft.com")' not in pac
    assert 'shExpMatch(host, "*.wild.example.net")' in pac


def test_pac_structure() -> None:
    pac = to_pac(POLICY, "PROXY proxy.example:3128")
    assert pac.count("function FindProxyForURL(url, host) {") == 1
    assert 'shExpMatch(host, "*.office365.com")' in pac
    assert 'host == "admin.microsoft.com"' in pac
    assert 'isInNet(host, "13.107.64.0", "255.255.192.0")' in pac
    assert 'isInNet(host, "52.112.0.0", "255.252.0.0")' in pac
    assert "1 IPv6 prefixes left out" in pac
    assert pac.rstrip().endswith('return "PROXY proxy.example:3128";\n}')


@pytest.mark.parametrize(
    ("spec", "result"),
    [
        (None, "DIRECT"),
        ("proxy.example:3128", "PROXY proxy.example:3128"),
        ("PROXY a:1; DIRECT", "PROXY a:1; DIRECT"),
        ("SOCKS5 [2001:db8::1]:1080", "SOCKS5 [2001:db8::1]:1080"),
    ],
)
def test_proxy_result(spec: str | None, result: str) -> None:
    assert proxy_result(spec) == result


@pytest.mark.parametrize("spec", ['a:1"; alert(1); "', "proxy", "FTP x:1", "DIRECT x", ""])
def test_proxy_result_rejects(spec: str) -> None:
    with pytest.raises(client.CtlError):
        proxy_result(spec)


# A PAC host environment: the helper functions browsers give FindProxyForURL.
PAC_RUNTIME = r"""
function shExpMatch(str, pattern) {
  var re = new RegExp("^" + pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&")
      .replace(/\*/g, ".*").replace(/\?/g, ".") + "$");
  return re.test(str);
}
function isInNet(host, pattern, mask) {
  function n(a) { return a.split(".").reduce(function (x, o) { return x * 256 + (+o); }, 0); }
  var m = n(mask);
  return ((n(host) & m) >>> 0) === ((n(pattern) & m) >>> 0);
}
"""


def run_pac(policy: Policy, hosts: list[str]) -> dict[str, str]:
    """FindProxyForURL for each host, run by node with the PAC helper functions."""
    pac = to_pac(policy, "PROXY proxy.example:3128")
    script = (
        PAC_RUNTIME
        + pac
        + f"console.log(JSON.stringify({json.dumps(hosts)}.map(function (h) "
        + '{ return FindProxyForURL("https://" + h + "/", h); })));'
    )
    if shutil.which("node") is None:  # a skip would count as a pass: fail, and say how to fix
        pytest.fail("the PAC tests run the PAC with node: install it (make sysdeps)", False)
    out = subprocess.run(
        ["node", "-e", script], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return dict(zip(hosts, json.loads(out), strict=True))


def test_pac_routes_tenant_names_one_label_deep() -> None:
    proxy = "PROXY proxy.example:3128"
    assert run_pac(
        TENANT_POLICY,
        [
            "contoso.onmicrosoft.com",
            "Contoso.OnMicrosoft.com.",
            "a.b.onmicrosoft.com",
            "onmicrosoft.com",
            ".onmicrosoft.com",
            "contoso.onmicrosoft.com.evil.example",
            "x.example.net",
            "x.y.example.net",
            "a.b.wild.example.net",
        ],
    ) == {
        "contoso.onmicrosoft.com": "DIRECT",
        "Contoso.OnMicrosoft.com.": "DIRECT",
        "a.b.onmicrosoft.com": proxy,  # <tenant>. is one label, unlike *.
        "onmicrosoft.com": proxy,
        ".onmicrosoft.com": proxy,
        "contoso.onmicrosoft.com.evil.example": proxy,
        "x.example.net": "DIRECT",
        "x.y.example.net": proxy,
        "a.b.wild.example.net": "DIRECT",
    }


def test_pac_routes_hosts_as_the_policy_says() -> None:
    hosts = [
        "admin.microsoft.com",
        "ADMIN.microsoft.com.",
        "outlook.office365.com",
        "a.b.office365.com",
        "office365.com",
        "x.admin.microsoft.com",
        "eu.teams.microsoft.com",
        "13.107.64.9",
        "13.107.128.1",
        "52.115.255.255",
        "example.com",
    ]
    proxy = "PROXY proxy.example:3128"
    assert run_pac(POLICY, hosts) == {
        "admin.microsoft.com": "DIRECT",
        "ADMIN.microsoft.com.": "DIRECT",
        "outlook.office365.com": "DIRECT",
        "a.b.office365.com": "DIRECT",
        "office365.com": proxy,  # a wildcard never matches its base name
        "x.admin.microsoft.com": proxy,
        "eu.teams.microsoft.com": "DIRECT",
        "13.107.64.9": "DIRECT",
        "13.107.128.1": proxy,
        "52.115.255.255": "DIRECT",
        "example.com": proxy,
    }


HOSTILE = '2024103100\nFindProxyForURL = function (url, host) { return "PROXY evil:1"; };\n//'


@pytest.mark.parametrize(
    "policy",
    [
        dataclasses.replace(POLICY, version=HOSTILE),
        dataclasses.replace(POLICY, version=HOSTILE.replace("\n", "\u2028")),
        dataclasses.replace(POLICY, source=HOSTILE),
        dataclasses.replace(
            POLICY,
            rules=(
                dataclasses.replace(
                    POLICY.rules[0], purpose="\x1b[2J" + HOSTILE.replace("\n", "\u2028")
                ),
            ),
        ),
    ],
    ids=["version", "version-u2028", "source", "purpose"],
)
def test_pac_comments_carry_no_code_and_no_escapes(policy: Policy) -> None:
    """What a feed chose (its version, a set's name) goes into comments of the PAC as
    printable ASCII: no line terminator ends the comment, no escape reaches a terminal."""
    pac = to_pac(policy, "PROXY proxy.example:3128")
    assert all(" " <= ch <= "~" for ch in pac.replace("\n", "")), pac
    assert all(line.lstrip().startswith("//") for line in pac.splitlines() if "evil" in line)
    assert run_pac(policy, ["www.example.com"]) == {"www.example.com": "PROXY proxy.example:3128"}
