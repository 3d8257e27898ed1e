"""The values of config keys: addresses, names, modes, each with the converter that reads it
from YAML (raising TypeError or ValueError with what was wrong; `policy.yamldoc` adds where).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from policy.loader import normalise_name
from policy.scalars import text

Address = tuple[str, int]


class Mode(StrEnum):
    KERNEL = "kernel"  # routes and set entries in the kernel
    DRY_RUN = "dry-run"  # decide and record, change nothing
    OFF = "off"  # tag only


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


# -- converters ------------------------------------------------------------------------------------


def parse_address(value: str, default_port: int = 53) -> Address:
    """``1.2.3.4``, ``1.2.3.4:53``, ``[2001:db8::1]:53`` or ``2001:db8::1`` -> (host, port)."""
    host, port = value.strip(), default_port
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise ValueError(f"{value!r}: missing ']'")
        rest, host = host[end + 1 :], host[1:end]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{value!r}: expected ':port' after ']'")
            port = _port(rest[1:], value)
    elif host.count(":") == 1:
        host, _, p = host.partition(":")
        port = _port(p, value)
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"{value!r}: {host!r} is not an IP address") from None
    return host, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port(digits: str, whole: str) -> int:
    if not digits.isdigit() or not 0 < int(digits) < 65536:
        raise ValueError(f"{whole!r}: port must be 1-65535")
    return int(digits)


def address(value: Any) -> Address:
    return parse_address(text(value))


def address_with_port(value: Any) -> Address:
    """An address whose port must be given (metrics, health targets)."""
    given = text(value)
    host = given.rsplit("]", 1)[-1] if given.startswith("[") else given
    if (given.startswith("[") and not host.startswith(":")) or ":" not in host:
        raise ValueError(f"{given!r}: expected host:port (the port is required here)")
    return parse_address(given)


def ifname(value: Any) -> str:
    name = text(value)
    if len(name) > 15 or "/" in name or any(c.isspace() for c in name):
        raise ValueError(f"{name!r} is not a valid interface name")
    return name


def dns_name(value: Any) -> str:
    try:
        name = normalise_name(text(value))
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc}") from None
    if not name:
        raise ValueError(f"{value!r}: the root zone is the default upstreams' job")
    return name


def set_name(value: Any) -> str:
    name = text(value)
    if len(name) > 31:
        raise ValueError(f"{name!r}: ipset names are at most 31 characters")
    return name


@dataclass(frozen=True, slots=True)
class NftSet:
    family: str
    table: str
    name: str


def nftset(value: Any) -> NftSet:
    parts = text(value).split()
    if len(parts) != 3 or parts[0] not in ("ip", "ip6", "inet", "bridge", "netdev", "arp"):
        raise ValueError(f"{value!r}: expected 'family table set', e.g. 'inet filter m365v4'")
    return NftSet(*parts)


def mode(value: Any) -> Mode:
    if value is False:  # `mode: off` unquoted is YAML 1.1's false
        return Mode.OFF
    return Mode(_choice(value, [m.value for m in Mode]))


def log_level(value: Any) -> LogLevel:
    return LogLevel(_choice(str(value).lower(), [level.value for level in LogLevel]))


def category(value: Any) -> str:
    return _choice(value, ["Optimize", "Allow", "Default"])


def builtin(value: Any) -> str:
    return _choice(value, ["microsoft365", "none"])


def _choice(value: Any, choices: list[str]) -> str:
    if value not in choices:
        raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
    return str(value)


def tenant(value: Any) -> str:
    label = dns_name(value)
    if "." in label:
        raise ValueError(f"{value!r}: the tenant is one label, e.g. contoso")
    if "_" in label or label.startswith("-") or label.endswith("-"):
        # it becomes part of host names (<tenant>.onmicrosoft.com): letters, digits, hyphens
        raise ValueError(f"{value!r}: a tenant is letters, digits and inner hyphens")
    return label
