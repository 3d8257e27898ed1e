"""resolver.config: defaults, every key, and errors that carry their YAML path."""

from __future__ import annotations

from pathlib import Path

import pytest

from resolver.config import (
    DEFAULT_NEVER_ROUTE,
    Config,
    ConfigError,
    NftSet,
    load_config,
    parse_address,
    parse_config,
)

pytestmark = pytest.mark.unit


def test_minimal_config_takes_the_documented_defaults() -> None:
    cfg = parse_config({"upstreams": ["192.0.2.53"]})
    assert cfg.upstreams == (("192.0.2.53", 53),)
    assert cfg.listen == (("127.0.0.1", 53), ("::1", 53))
    assert cfg.allow == ("127.0.0.0/8", "::1/128")
    assert cfg.control.socket == "/run/resolverd/control.sock"
    assert cfg.cache.max_entries == 100_000
    assert cfg.breakout.mode == "off"
    assert cfg.policy.builtin == "microsoft365"
    assert cfg.policy.include_optional is False
    assert cfg.metrics.listen is None


def test_full_breakout_section() -> None:
    cfg = parse_config(
        {
            "upstreams": ["192.0.2.53:5353", "[2001:db8::53]:53"],
            "breakout": {
                "interface": "wan0",
                "gateway4": "192.0.2.1",
                "gateway6": "2001:db8:f::1",
                "table": 365,
                "ipset4": "m365-v4",
                "nftset6": "inet filter m365v6",
                "never_route": ["198.51.100.0/24"],
            },
        }
    )
    b = cfg.breakout
    assert cfg.upstreams == (("192.0.2.53", 5353), ("2001:db8::53", 53))
    assert (b.mode, b.interface, b.gateway4, b.gateway6) == (
        "kernel",
        "wan0",
        "192.0.2.1",
        "2001:db8:f::1",
    )
    assert b.nftset6 == NftSet("inet", "filter", "m365v6")
    assert b.never_route == ("198.51.100.0/24",)


def test_the_dns_servers_never_routed_are_the_upstreams_and_zone_servers() -> None:
    cfg = parse_config(
        {
            "upstreams": ["192.0.2.53", "[2001:db8::53]:5353"],
            "forward_zones": {"corp.example": ["198.51.100.53", "192.0.2.53:5300"]},
            "breakout": {
                "interface": "wan0", "gateway4": "203.0.113.1",
                "resolvers": ["203.0.113.53"],
            },
        }
    )  # fmt: skip
    # The breakout resolvers are reached through the breakout: they are not among them.
    assert cfg.breakout.dns_servers == ("192.0.2.53", "198.51.100.53", "2001:db8::53")


def test_default_never_route_covers_the_special_ranges() -> None:
    for prefix in ("10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "fe80::/10", "fc00::/7"):
        assert prefix in DEFAULT_NEVER_ROUTE


def test_every_error_is_reported_with_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "upstreams": ["192.0.2.53", "not-an-ip"],
                "cache": {"max_entries": 0},
                "breakout": {"table": "x", "gateway4": "2001:db8::1", "bogus": 1},
                "policy": {"include_optional": "yes"},
            }
        )
    errors = info.value.errors
    assert "/upstreams/1: 'not-an-ip': 'not-an-ip' is not an IP address" in errors
    assert "/cache/max_entries: 0 is out of range 1-10000000" in errors
    assert "/breakout/table: expected an integer, got 'x'" in errors
    assert "/breakout/gateway4: '2001:db8::1' is not an IPv4 address" in errors
    assert "/breakout/interface: required when mode is kernel" in errors
    assert any(e.startswith("/breakout/bogus: unknown key") for e in errors)
    assert "/policy/include_optional: expected true or false, got 'yes'" in errors
    assert len(errors) == 7


def test_upstreams_are_required() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"listen": ["127.0.0.1:5353"]})
    assert info.value.errors == ["/upstreams: at least one upstream is required"]


def test_policy_files_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "resolverd.yaml"
    path.write_text("upstreams: ['192.0.2.53']\npolicy: {files: [extra.yaml]}\n")
    cfg = load_config(str(path))
    assert cfg.policy.files == (str(tmp_path / "extra.yaml"),)
    assert cfg.path == str(path)


def test_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("upstreams: ['192.0.2.53'\nlisten: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    # The one validator's format, as for policy files: file, line, what is wrong.
    assert info.value.errors == [f"{path}:2: invalid YAML: expected ',' or ']', but got '<scalar>'"]


def test_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.errors == [f"{path}: cannot read: No such file or directory"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", ("192.0.2.1", 53)),
        ("192.0.2.1:5353", ("192.0.2.1", 5353)),
        ("[::1]:53", ("::1", 53)),
        ("2001:db8::1", ("2001:db8::1", 53)),
        ("[2001:db8::1]", ("2001:db8::1", 53)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["host:53", "192.0.2.1:0", "192.0.2.1:70000", "[::1", "[::1]x"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="'"):
        parse_address(text)


def test_top_level_scalars_are_validated_with_the_rest() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": ["192.0.2.53"], "log_level": "verbose", "state_dir": 5})
    assert sorted(info.value.errors) == [
        "/log_level: 'verbose' is not one of debug, info, warning, error",
        "/state_dir: expected a non-empty string, got 5",
    ]


def test_a_file_that_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"upstreams: ['192.0.2.53']\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.errors == [f"{path}: not UTF-8 text (byte 31: invalid continuation byte)"]


def test_errors_from_a_file_carry_file_line_and_path(tmp_path: Path) -> None:
    path = tmp_path / "resolverd.yaml"
    path.write_text(
        "upstreams: ['192.0.2.53']\ncache:\n  max_entries: 0\nbreakout:\n  table: x\n"
        "  interface: wan0\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.errors == [
        f"{path}:3: /cache/max_entries: 0 is out of range 1-10000000",
        f"{path}:5: /breakout/table: expected an integer, got 'x'",
    ]


def test_split_dns_keys() -> None:
    cfg = parse_config(
        {
            "upstreams": ["192.0.2.53"],
            "forward_zones": {"Corp.Example.": ["198.51.100.53", "[2001:db8::53]:5353"]},
            "canaries": ["use-application-dns.net", "mask.icloud.com"],
            "breakout": {"interface": "wan0", "resolvers": ["203.0.113.53"]},
        }
    )
    assert cfg.forward_zones == {"corp.example": (("198.51.100.53", 53), ("2001:db8::53", 5353))}
    assert cfg.canaries == ("use-application-dns.net", "mask.icloud.com")
    assert cfg.breakout.resolvers == (("203.0.113.53", 53),)
    assert parse_config({"upstreams": ["192.0.2.53"]}).canaries == ("use-application-dns.net",)
    assert parse_config({"upstreams": ["192.0.2.53"], "canaries": []}).canaries == ()


def test_bad_zones_and_resolvers_are_reported_with_their_paths() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "upstreams": ["192.0.2.53"],
                "forward_zones": {"bad..zone": ["198.51.100.53"], "ok.example": ["nope"]},
                "breakout": {"interface": "wan0", "resolvers": ["203.0.113.300"]},
            }
        )
    assert sorted(info.value.errors) == [
        "/breakout/resolvers/0: '203.0.113.300': '203.0.113.300' is not an IP address",
        "/forward_zones/bad..zone: 'bad..zone': empty label",
        "/forward_zones/ok.example/0: 'nope': 'nope' is not an IP address",
    ]


def test_an_upstream_that_is_our_own_listen_address_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "listen": ["127.0.0.1:53", "0.0.0.0:5353"],
                "upstreams": ["127.0.0.1", "127.0.0.2:5353"],
                "forward_zones": {"corp.example": ["127.0.0.1:53"]},
            }
        )
    assert sorted(info.value.errors) == [
        "/forward_zones/corp.example/0: 127.0.0.1:53 is resolverd's own listen address: "
        "it would ask itself",
        "/upstreams/0: 127.0.0.1:53 is resolverd's own listen address: it would ask itself",
        "/upstreams/1: 127.0.0.2:5353 is resolverd's own listen address: it would ask itself",
    ]


def test_links_and_the_single_link_form_mean_the_same() -> None:
    one = parse_config(
        {"upstreams": ["192.0.2.53"], "breakout": {"interface": "wan0", "gateway4": "192.0.2.1"}}
    ).breakout
    listed = parse_config(
        {
            "upstreams": ["192.0.2.53"],
            "breakout": {
                "links": [
                    {"interface": "wan0", "gateway4": "192.0.2.1"},
                    {"interface": "wan1", "gateway6": "2001:db8:f::1"},
                ],
                "health": {"targets": ["203.0.113.1:443"]},
            },
        }
    ).breakout
    assert [link.interface for link in one.links] == ["wan0"]
    assert one.links[0].gateway4 == "192.0.2.1"
    assert [link.interface for link in listed.links] == ["wan0", "wan1"]
    assert (listed.interface, listed.gateway4) == ("wan0", "192.0.2.1")
    assert listed.health is not None and listed.health.targets == (("203.0.113.1", 443),)
    assert (listed.health.interval, listed.health.failures, listed.health.successes) == (2, 3, 2)


def test_bad_links_and_health() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "upstreams": ["192.0.2.53"],
                "breakout": {
                    "interface": "wan0",
                    "links": [{"interface": "wan1"}, {"interface": "wan1"}, {"gateway4": "x"}],
                    "health": {"targets": ["203.0.113.1"], "interval": 1, "timeout": 2},
                },
            }
        )
    assert sorted(info.value.errors) == [
        "/breakout/health/targets/0: '203.0.113.1': expected host:port (the port is required here)",
        "/breakout/health/timeout: must not be longer than the interval",
        "/breakout/links/1/interface: wan1 is listed twice",
        "/breakout/links/2/gateway4: 'x' does not appear to be an IPv4 or IPv6 address",
        "/breakout/links/2: missing key 'interface'",
        "/breakout/links: give either links or interface/gateway4/gateway6, not both",
    ]


def test_mode_off_may_be_written_unquoted() -> None:
    cfg = load_yaml("upstreams: ['192.0.2.53']\nbreakout: {mode: off}\n")
    assert cfg.breakout.mode == "off"
    assert parse_config({"upstreams": ["192.0.2.53"]}).breakout.mode == "off"


def test_metrics_listen_needs_a_port() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": ["192.0.2.53"], "metrics": {"listen": "127.0.0.1"}})
    assert info.value.errors == [
        "/metrics/listen: '127.0.0.1': expected host:port (the port is required here)"
    ]
    cfg = parse_config({"upstreams": ["192.0.2.53"], "metrics": {"listen": "[::1]:9365"}})
    assert cfg.metrics.listen == ("::1", 9365)


def test_tenant_is_one_label() -> None:
    assert (
        parse_config({"upstreams": ["192.0.2.53"], "policy": {"tenant": "Contoso"}}).policy.tenant
        == "contoso"
    )
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": ["192.0.2.53"], "policy": {"tenant": "a.b"}})
    assert info.value.errors == ["/policy/tenant: 'a.b': the tenant is one label, e.g. contoso"]


def load_yaml(text: str) -> Config:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
        fh.write(text)
        fh.flush()
        return load_config(fh.name)
