"""Daemon settings from YAML: one frozen dataclass per section, every error with its path.

`load_config(path)` returns a `Config` or raises `ConfigError` listing every problem found,
each as ``/breakout/table: expected an integer, got 'x'``. Nothing here touches sockets or the
kernel, so `resolverctl` can import it cheaply.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
Address = tuple[str, int]

DEFAULT_LISTEN: tuple[Address, ...] = (("127.0.0.1", 53), ("::1", 53))
DEFAULT_ALLOW: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
DEFAULT_STATE_DIR = "/var/lib/resolverd"

DEFAULT_SOCKET = "/run/resolverd/control.sock"
DEFAULT_CONFIG = "/etc/resolverd/resolverd.yaml"

# IANA special-purpose and non-global ranges (RFC 6890 registries): never routed by default.
# The documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) are
# left out on purpose: no real answer carries them, and labs and tests use them as "public".
DEFAULT_NEVER_ROUTE: tuple[str, ...] = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23",
    "2002::/16", "fc00::/7", "fe80::/10", "ff00::/8",
)  # fmt: skip


class ConfigError(Exception):
    """Every problem found in a config file, one ``/path: message`` per line."""

    def __init__(self, errors: list[str], source: str = "") -> None:
        self.errors = errors
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(errors))


@dataclass(frozen=True, slots=True)
class ControlConfig:
    socket: str = DEFAULT_SOCKET
    group: str | None = None  # group allowed to flush/reload (besides root)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    max_entries: int = 100_000
    max_ttl: int = 86_400  # cap on what a positive answer is kept for
    max_negative_ttl: int = 3_600  # RFC 2308 section 5 suggests 1-3 hours


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    timeout: float = 1.5  # seconds per upstream attempt
    max_pending: int = 4_096  # upstream queries in flight; beyond that queries are dropped


@dataclass(frozen=True, slots=True)
class TcpConfig:
    idle_timeout: float = 10.0
    max_connections: int = 256


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    qps: float = 1_000.0  # per client address; 0 turns the limit off
    burst: int = 2_000


@dataclass(frozen=True, slots=True)
class NftSet:
    family: str
    table: str
    name: str


@dataclass(frozen=True, slots=True)
class BreakoutConfig:
    mode: str = "off"  # off (no breakout section), kernel, dry-run
    interface: str | None = None
    gateway4: str | None = None
    gateway6: str | None = None
    table: int = 365
    rule_priority: int = 1000
    route_protocol: int = 245
    ipset4: str | None = None
    ipset6: str | None = None
    nftset4: NftSet | None = None
    nftset6: NftSet | None = None
    min_hold: int = 300
    grace: int = 30  # seconds added to every hold
    max_entries: int = 50_000
    ack_timeout: float = 0.05  # longest a reply waits for the kernel's ack
    never_route: tuple[str, ...] = DEFAULT_NEVER_ROUTE


@dataclass(frozen=True, slots=True)
class EndpointsConfig:
    url: str = "https://endpoints.office.com"
    instance: str = "Worldwide"
    poll_interval: int = 3600
    categories: tuple[str, ...] = ("Optimize", "Allow")


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    builtin: str | None = "microsoft365"
    include_optional: bool = True
    files: tuple[str, ...] = ()
    endpoints: EndpointsConfig | None = None


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: Address | None = None


@dataclass(frozen=True, slots=True)
class Config:
    upstreams: tuple[Address, ...]
    listen: tuple[Address, ...] = DEFAULT_LISTEN
    allow: tuple[str, ...] = DEFAULT_ALLOW
    state_dir: str = DEFAULT_STATE_DIR
    log_level: str = "info"
    control: ControlConfig = field(default_factory=ControlConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    tcp: TcpConfig = field(default_factory=TcpConfig)
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    breakout: BreakoutConfig = field(default_factory=BreakoutConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    path: str = ""


def parse_address(text: str, default_port: int = 53) -> Address:
    """``1.2.3.4``, ``1.2.3.4:53``, ``[2001:db8::1]:53`` or ``2001:db8::1`` -> (host, port)."""
    host, port = text.strip(), default_port
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']'")
        rest, host = host[end + 1 :], host[1:end]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':port' after ']'")
            port = _port(rest[1:], text)
    elif host.count(":") == 1:
        host, _, p = host.partition(":")
        port = _port(p, text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    return host, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{whole!r}: port must be 1-65535")
    return int(text)


class _Reader:
    """Reads typed values out of nested mappings, collecting errors with their paths."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def section(self, data: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any] | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.errors.append(f"{path}/{key}: expected a mapping, got {_kind(value)}")
            return None
        return value

    def check_keys(self, data: Mapping[str, Any], known: set[str], path: str) -> None:
        for key in data:
            if key not in known:
                self.errors.append(f"{path}/{key}: unknown key (known: {', '.join(sorted(known))})")

    def get(
        self,
        data: Mapping[str, Any],
        key: str,
        path: str,
        convert: Callable[[Any], T],
        default: T,
    ) -> T:
        if key not in data or data[key] is None:
            return default
        try:
            return convert(data[key])
        except (TypeError, ValueError) as err:
            self.errors.append(f"{path}/{key}: {err}")
            return default

    def items(
        self, data: Mapping[str, Any], key: str, path: str, convert: Callable[[Any], T]
    ) -> tuple[T, ...] | None:
        if key not in data or data[key] is None:
            return None
        value = data[key]
        if not isinstance(value, list):
            self.errors.append(f"{path}/{key}: expected a list, got {_kind(value)}")
            return None
        out: list[T] = []
        for i, item in enumerate(value):
            try:
                out.append(convert(item))
            except (TypeError, ValueError) as err:
                self.errors.append(f"{path}/{key}/{i}: {err}")
        return tuple(out)


def _kind(value: object) -> str:
    kinds: dict[type, str] = {dict: "a mapping", list: "a list", str: "a string"}
    return kinds.get(type(value), type(value).__name__)


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range {lo}-{hi}")
        return value

    return convert


def _number(lo: float, hi: float) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range {lo}-{hi}")
        return float(value)

    return convert


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"expected a non-empty string, got {value!r}")
    return value


def _choice(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return str(value)

    return convert


def _address(value: Any) -> Address:
    return parse_address(_str(value))


def _network(value: Any) -> str:
    return str(ipaddress.ip_network(_str(value), strict=False))


def _ip(version: int) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        addr = ipaddress.ip_address(_str(value))
        if addr.version != version:
            raise ValueError(f"{value!r} is not an IPv{version} address")
        return str(addr)

    return convert


def _ifname(value: Any) -> str:
    name = _str(value)
    if len(name) > 15 or "/" in name or any(c.isspace() for c in name):
        raise ValueError(f"{name!r} is not a valid interface name")
    return name


def _nftset(value: Any) -> NftSet:
    parts = _str(value).split()
    if len(parts) != 3 or parts[0] not in ("ip", "ip6", "inet", "bridge", "netdev", "arp"):
        raise ValueError(f"{value!r}: expected 'family table set', e.g. 'inet filter m365v4'")
    return NftSet(*parts)


def _set_name(value: Any) -> str:
    name = _str(value)
    if len(name) > 31:
        raise ValueError(f"{name!r}: ipset names are at most 31 characters")
    return name


def _level(value: Any) -> str:
    return _choice("debug", "info", "warning", "error")(str(value).lower())


def parse_config(data: Any, base_dir: str = ".", source: str = "") -> Config:
    """Validate a parsed YAML document; raise ConfigError listing every problem."""
    r = _Reader()
    if not isinstance(data, Mapping):
        raise ConfigError([f"/: expected a mapping at the top, got {_kind(data)}"], source)
    r.check_keys(data, {f for f in Config.__dataclass_fields__ if f != "path"}, "")

    upstreams = r.items(data, "upstreams", "", _address)
    if not upstreams:
        r.errors.append("/upstreams: at least one upstream is required")
    listen = r.items(data, "listen", "", _address)
    if listen == ():
        r.errors.append("/listen: at least one address is required")
    allow = r.items(data, "allow", "", _network)

    def sub(key: str, known: Any) -> Mapping[str, Any]:
        sec = r.section(data, key, "")
        if sec is not None:
            r.check_keys(sec, {f.name for f in dataclasses.fields(known)}, f"/{key}")
        return sec or {}

    c = sub("control", ControlConfig)
    control = ControlConfig(
        socket=r.get(c, "socket", "/control", _str, DEFAULT_SOCKET),
        group=r.get(c, "group", "/control", _str, None),
    )
    c = sub("cache", CacheConfig)
    cache = CacheConfig(
        max_entries=r.get(c, "max_entries", "/cache", _int(1, 10_000_000), 100_000),
        max_ttl=r.get(c, "max_ttl", "/cache", _int(1, 604_800), 86_400),
        max_negative_ttl=r.get(c, "max_negative_ttl", "/cache", _int(0, 86_400), 3_600),
    )
    c = sub("forward", ForwardConfig)
    forward = ForwardConfig(
        timeout=r.get(c, "timeout", "/forward", _number(0.05, 30), 1.5),
        max_pending=r.get(c, "max_pending", "/forward", _int(1, 1_000_000), 4_096),
    )
    c = sub("tcp", TcpConfig)
    tcp = TcpConfig(
        idle_timeout=r.get(c, "idle_timeout", "/tcp", _number(0.1, 3600), 10.0),
        max_connections=r.get(c, "max_connections", "/tcp", _int(1, 100_000), 256),
    )
    c = sub("ratelimit", RateLimitConfig)
    ratelimit = RateLimitConfig(
        qps=r.get(c, "qps", "/ratelimit", _number(0, 10_000_000), 1_000.0),
        burst=r.get(c, "burst", "/ratelimit", _int(1, 10_000_000), 2_000),
    )
    breakout = _breakout(r, data)
    policy = _policy(r, data, base_dir)
    c = sub("metrics", MetricsConfig)
    metrics = MetricsConfig(
        listen=r.get(c, "listen", "/metrics", lambda v: parse_address(_str(v), 9365), None)
    )

    state_dir = r.get(data, "state_dir", "", _str, DEFAULT_STATE_DIR)
    log_level = r.get(data, "log_level", "", _level, "info")
    if r.errors:
        raise ConfigError(r.errors, source)
    return Config(
        upstreams=upstreams or (),
        listen=listen if listen is not None else DEFAULT_LISTEN,
        allow=allow if allow is not None else DEFAULT_ALLOW,
        state_dir=state_dir,
        log_level=log_level,
        control=control,
        cache=cache,
        forward=forward,
        tcp=tcp,
        ratelimit=ratelimit,
        breakout=breakout,
        policy=policy,
        metrics=metrics,
        path=source,
    )


def _breakout(r: _Reader, data: Mapping[str, Any]) -> BreakoutConfig:
    b = r.section(data, "breakout", "")
    if b is None:
        return BreakoutConfig()
    p = "/breakout"
    r.check_keys(b, set(BreakoutConfig.__dataclass_fields__), p)
    d = BreakoutConfig()
    mode = r.get(b, "mode", p, _choice("kernel", "dry-run", "off"), "kernel")
    interface = r.get(b, "interface", p, _ifname, None)
    if mode == "kernel" and interface is None:
        r.errors.append(f"{p}/interface: required when mode is kernel")
    never = r.items(b, "never_route", p, _network)
    return BreakoutConfig(
        mode=mode,
        interface=interface,
        gateway4=r.get(b, "gateway4", p, _ip(4), None),
        gateway6=r.get(b, "gateway6", p, _ip(6), None),
        table=r.get(b, "table", p, _int(1, 2**32 - 1), d.table),
        rule_priority=r.get(b, "rule_priority", p, _int(1, 32765), d.rule_priority),
        route_protocol=r.get(b, "route_protocol", p, _int(5, 255), d.route_protocol),
        ipset4=r.get(b, "ipset4", p, _set_name, None),
        ipset6=r.get(b, "ipset6", p, _set_name, None),
        nftset4=r.get(b, "nftset4", p, _nftset, None),
        nftset6=r.get(b, "nftset6", p, _nftset, None),
        min_hold=r.get(b, "min_hold", p, _int(0, 604_800), d.min_hold),
        grace=r.get(b, "grace", p, _int(0, 3600), d.grace),
        max_entries=r.get(b, "max_entries", p, _int(1, 10_000_000), d.max_entries),
        ack_timeout=r.get(b, "ack_timeout", p, _number(0.001, 5), d.ack_timeout),
        never_route=never if never is not None else d.never_route,
    )


def _policy(r: _Reader, data: Mapping[str, Any], base_dir: str) -> PolicyConfig:
    s = r.section(data, "policy", "")
    if s is None:
        return PolicyConfig()
    p = "/policy"
    r.check_keys(s, set(PolicyConfig.__dataclass_fields__), p)
    files = r.items(s, "files", p, _str) or ()
    endpoints = None
    e = r.section(s, "endpoints", p)
    if e is not None:
        ep = f"{p}/endpoints"
        r.check_keys(e, set(EndpointsConfig.__dataclass_fields__), ep)
        d = EndpointsConfig()
        cats = r.items(e, "categories", ep, _choice("Optimize", "Allow", "Default"))
        endpoints = EndpointsConfig(
            url=r.get(e, "url", ep, _str, d.url).rstrip("/"),
            instance=r.get(e, "instance", ep, _str, d.instance),
            poll_interval=r.get(e, "poll_interval", ep, _int(60, 7 * 86_400), d.poll_interval),
            categories=cats if cats is not None else d.categories,
        )
    builtin = s.get("builtin", "microsoft365")
    if builtin not in (None, "microsoft365", "none"):
        r.errors.append(f"{p}/builtin: {builtin!r} is not a built-in policy (microsoft365, none)")
    return PolicyConfig(
        builtin=None if builtin in (None, "none") else "microsoft365",
        include_optional=r.get(s, "include_optional", p, _bool, True),
        files=tuple(os.path.join(base_dir, f) for f in files),
        endpoints=endpoints,
    )


def load_config(path: str) -> Config:
    """Read and validate a config file. Raises ConfigError (never a traceback for bad input)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as err:
        raise ConfigError([f"cannot read: {err.strerror}"], path) from None
    except UnicodeDecodeError as err:
        raise ConfigError([f"not UTF-8 text (byte {err.start}: {err.reason})"], path) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError([f"{where}YAML syntax: {problem}"], path) from None
    return parse_config(data, os.path.dirname(os.path.abspath(path)), path)
