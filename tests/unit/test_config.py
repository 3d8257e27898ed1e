"""resolver.config: defaults, every key, and errors that carry their YAML path."""

from __future__ import annotations

from pathlib import Path

import pytest

from resolver.config import (
    DEFAULT_NEVER_ROUTE,
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
    assert cfg.policy.include_optional is True
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
    assert str(path) in str(info.value)
    assert info.value.errors[0].startswith("line ")


def test_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "nope.yaml"))
    assert info.value.errors == ["cannot read: No such file or directory"]


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
    assert info.value.errors == [
        "/state_dir: expected a non-empty string, got 5",
        "/log_level: 'verbose' is not one of debug, info, warning, error",
    ]


def test_a_file_that_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"upstreams: ['192.0.2.53']\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.errors == ["not UTF-8 text (byte 31: invalid continuation byte)"]
