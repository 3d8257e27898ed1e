"""resolverctl: where the control socket is, and the argument plumbing of main."""

from __future__ import annotations

from pathlib import Path

import pytest

import resolver.config
from resolver.ctl import client
from resolver.ctl.main import build_parser, main

pytestmark = pytest.mark.unit


@pytest.fixture
def no_default_config(tmp_path: Path) -> Path:
    """Where the defaults below look for the default config: nothing there yet."""
    return tmp_path / "etc-resolverd.yaml"


def defaults(config: Path) -> client.Defaults:
    return client.Defaults(str(config), resolver.config.DEFAULT_SOCKET)


def test_socket_option_wins(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("upstreams: ['192.0.2.53']\ncontrol: {socket: /x/config.sock}\n")
    where = client.socket_path("/x/option.sock", str(config))
    assert where == client.SocketPath("/x/option.sock", "--socket")


def test_socket_from_config_option(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("upstreams: ['192.0.2.53']\ncontrol: {socket: /x/config.sock}\n")
    assert client.socket_path(None, str(config)) == ("/x/config.sock", f"config {config}")


def test_socket_from_default_config_when_it_exists(no_default_config: Path) -> None:
    d = defaults(no_default_config)
    assert client.socket_path(None, None, d) == (resolver.config.DEFAULT_SOCKET, "default")
    no_default_config.write_text("upstreams: ['192.0.2.53']\ncontrol: {socket: /y/c.sock}\n")
    assert client.socket_path(None, None, d) == ("/y/c.sock", f"config {no_default_config}")


def test_the_installed_defaults_are_the_configs() -> None:
    assert client.installed_defaults() == (
        resolver.config.DEFAULT_CONFIG,
        resolver.config.DEFAULT_SOCKET,
    )


def test_config_without_control_section_gives_the_default_socket(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("upstreams: ['192.0.2.53']\n")
    assert client.socket_path(None, str(config)) == (
        resolver.config.DEFAULT_SOCKET,
        f"config {config}",
    )


def test_invalid_config_still_yields_its_socket_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The daemon may be running with the previous, good config: reload must still reach it.
    config = tmp_path / "c.yaml"
    config.write_text("upstreams: []\ncontrol: {socket: /z/c.sock}\n")
    assert client.socket_path(None, str(config)) == ("/z/c.sock", f"config {config}")
    err = capsys.readouterr().err
    assert "warning" in err and "/upstreams: at least one upstream is required" in err
    assert "using control.socket /z/c.sock" in err


def test_unreadable_config_falls_back_to_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("upstreams: [\n")
    assert client.socket_path(None, str(config)) == (resolver.config.DEFAULT_SOCKET, "default")
    assert "using the default socket" in capsys.readouterr().err


def test_global_and_command_config_options_both_reach_the_command() -> None:
    parser = build_parser()
    args = parser.parse_args(["--config", "/a.yaml", "status"])
    assert (args.global_config, args.config) == ("/a.yaml", None)  # main merges them
    args = parser.parse_args(["status", "--config", "/b.yaml", "--json"])
    assert (args.config, args.json) == ("/b.yaml", True)


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["policy", "export", "--format", "xml"])
    assert info.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err
