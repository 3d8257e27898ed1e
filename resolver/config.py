"""Daemon settings from YAML: a frozen dataclass per section, owning its keys, defaults, ranges.

Each field that is a config key carries its converter (`policy.yamldoc.check` and friends), so
the dataclass is the one place that says what a key accepts and what it defaults to.
`load_config(path)` returns a `Config` or raises `ConfigError` listing every problem, each as
``/etc/resolverd/resolverd.yaml:12: /breakout/table: expected an integer, got 'x'`` (the
document reader is `policy.yamldoc`, the same one the policy files use). Nothing here touches
sockets or the kernel, so `resolverctl` can import it cheaply.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass
from typing import Any

import yaml

from policy.scalars import boolean, integer, ip, network, number, text
from policy.yamldoc import (
    Document,
    DocumentError,
    check,
    compose,
    each,
    node_of,
    read_section,
    read_text,
    section,
    sections,
    table,
)
from resolver.configvalues import Address as Address
from resolver.configvalues import LogLevel as LogLevel
from resolver.configvalues import Mode as Mode
from resolver.configvalues import NftSet as NftSet
from resolver.configvalues import (
    address,
    address_with_port,
    builtin,
    category,
    dns_name,
    ifname,
    log_level,
    mode,
    nftset,
    set_name,
    tenant,
)
from resolver.configvalues import format_address as format_address
from resolver.configvalues import parse_address as parse_address

DEFAULT_SOCKET = "/run/resolverd/control.sock"
DEFAULT_CONFIG = "/etc/resolverd/resolverd.yaml"
DEFAULT_STATE_DIR = "/var/lib/resolverd"

# IANA special-purpose and non-global ranges (RFC 6890 registries): never routed by default.
# The documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) are
# left out on purpose: no real answer carries them, and labs and tests use them as "public".
DEFAULT_NEVER_ROUTE: tuple[str, ...] = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "::/96", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23",
    "2002::/16", "5f00::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
)  # fmt: skip


class ConfigError(Exception):
    """Every problem found in a config, one formatted line each (``errors``)."""

    def __init__(self, errors: list[str], source: str = "") -> None:
        super().__init__("\n".join(errors))
        self.errors = errors
        self.source = source


# -- sections ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ControlConfig:
    socket: str = check(text, DEFAULT_SOCKET)
    group: str | None = check(text, None)  # group allowed to flush/reload (besides root)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    max_entries: int = check(integer(1, 10_000_000), 100_000)
    max_ttl: int = check(integer(1, 604_800), 86_400)  # cap on what a positive answer is kept for
    max_negative_ttl: int = check(integer(0, 86_400), 3_600)  # RFC 2308 5: 1-3 hours
    client_share: float = check(number(0.001, 1), 0.125)  # of max_entries and bytes


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    timeout: float = check(number(0.05, 30), 1.5)  # seconds per upstream attempt
    max_pending: int = check(integer(1, 1_000_000), 4_096)  # upstream queries in flight


@dataclass(frozen=True, slots=True)
class TcpConfig:
    idle_timeout: float = check(number(0.1, 3600), 10.0)
    max_connections: int = check(integer(1, 100_000), 256)


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Budgets on what costs (upstream queries, new routes), per client; a cached answer is
    never limited by qps, but one waiting for the kernel's routes holds a place in its
    client's `share` of the pending table. qps 0 turns every budget off."""

    qps: float = check(number(0, 10_000_000), 20_000.0)  # upstream queries/s per client
    burst: int = check(integer(1, 10_000_000), 40_000)
    share: float = check(number(0.01, 1), 0.5)  # of forward.max_pending, per client in flight
    routes: float = check(number(0, 10_000_000), 10_000.0)  # new routed addresses/s per client


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """One breakout link: the interface and its next hops."""

    interface: str = check(ifname, "")
    gateway4: str | None = check(ip(4), None)
    gateway6: str | None = check(ip(6), None)


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Active checks of each breakout path: TCP connects to `targets` through each link."""

    targets: tuple[Address, ...] = each(address_with_port)
    interval: float = check(number(0.2, 3600), 2.0)  # seconds between rounds
    failures: int = check(integer(1, 1000), 3)  # failed rounds in a row: down
    successes: int = check(integer(1, 1000), 2)  # good rounds in a row: up again
    timeout: float = check(number(0.05, 60), 1.0)  # per connect; at most the interval
    table: int = check(integer(1, 2**32 - 1), 0)  # probe table of the first link; 0: table + 1
    fwmark: int = check(integer(1, 2**32 - 1), 0x73650000)  # probe mark of the first link


@dataclass(frozen=True, slots=True)
class BreakoutConfig:
    mode: Mode = check(mode, Mode.KERNEL)
    interface: str | None = check(ifname, None)  # the first link (the single-link form)
    gateway4: str | None = check(ip(4), None)
    gateway6: str | None = check(ip(6), None)
    links: tuple[LinkConfig, ...] = sections(LinkConfig)  # most preferred first
    resolvers: tuple[Address, ...] = each(address)  # the ISP's, for the policy's names
    health: HealthConfig | None = section(HealthConfig, None)
    table: int = check(integer(1, 2**32 - 1), 365)
    rule_priority: int = check(integer(2, 32765), 1000)
    route_protocol: int = check(integer(5, 255), 245)
    ipset4: str | None = check(set_name, None)
    ipset6: str | None = check(set_name, None)
    nftset4: NftSet | None = check(nftset, None)
    nftset6: NftSet | None = check(nftset, None)
    min_hold: int = check(integer(0, 604_800), 300)
    grace: int = check(integer(0, 3600), 30)  # seconds added to every hold
    max_entries: int = check(integer(1, 10_000_000), 50_000)
    # The share of max_entries one client (an IPv4 address, an IPv6 /64) may hold.
    client_share: float = check(number(0.001, 1), 0.125)
    ack_timeout: float = check(number(0.001, 5), 0.05)  # longest a reply waits for the kernel
    never_route: tuple[str, ...] = each(network, DEFAULT_NEVER_ROUTE)
    # Who breaks out: client prefixes and ingress interfaces; both empty means everyone.
    clients: tuple[str, ...] = each(network)
    client_interfaces: tuple[str, ...] = each(ifname)
    # On a move or withdrawal, delete the conntrack entries to the addresses that moved.
    flush_conntrack: bool = check(boolean, True)
    # Count the bytes and packets sent to held addresses (nftables table inet resolverd).
    count_traffic: bool = check(boolean, True)
    # Not a key: the longest hold an answer can give, grace included: max(cache.max_ttl,
    # min_hold) + grace. load_config sets it from cache.max_ttl; a config made otherwise gets
    # the cache's default cap. The hold journal's reader refuses expiries beyond it.
    max_hold: int = 0
    # Not a key: the addresses of the default upstreams and the forward zones' servers (not the
    # breakout resolvers), never routed (net/neverroute.py); load_config sets them.
    dns_servers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.max_hold:
            default = max(CacheConfig().max_ttl, self.min_hold) + self.grace
            object.__setattr__(self, "max_hold", default)

    @property
    def probe_table(self) -> int:
        """The health probes' routing table for the first link (link i: + i)."""
        return self.health.table if self.health and self.health.table else self.table + 1


BREAKOUT_OFF = BreakoutConfig(mode=Mode.OFF)


@dataclass(frozen=True, slots=True)
class EndpointsConfig:
    url: str = check(text, "https://endpoints.office.com")
    instance: str = check(text, "Worldwide")
    poll_interval: int = check(integer(60, 7 * 86_400), 3600)
    categories: tuple[str, ...] = each(category, ("Optimize", "Allow"))
    allow_http: bool = check(boolean, False)  # plain http:// is refused unless this is true


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    builtin: str | None = check(builtin, "microsoft365", null="none")  # "none": read as None
    include_optional: bool = check(boolean, False)
    files: tuple[str, ...] = each(text)  # made absolute against the config's directory
    tenant: str | None = check(tenant, None)  # <tenant>.onmicrosoft.com -> its exact name
    endpoints: EndpointsConfig | None = section(EndpointsConfig, None)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: Address | None = check(address_with_port, None)


@dataclass(frozen=True, slots=True)
class Config:
    upstreams: tuple[Address, ...] = each(address)
    listen: tuple[Address, ...] = each(address, (("127.0.0.1", 53), ("::1", 53)))
    forward_zones: dict[str, tuple[Address, ...]] = table(dns_name, address)
    canaries: tuple[str, ...] = each(dns_name, ("use-application-dns.net",))
    allow: tuple[str, ...] = each(network, ("127.0.0.0/8", "::1/128"))
    state_dir: str = check(text, DEFAULT_STATE_DIR)
    log_level: LogLevel = check(log_level, LogLevel.INFO)
    control: ControlConfig = section(ControlConfig)
    cache: CacheConfig = section(CacheConfig)
    forward: ForwardConfig = section(ForwardConfig)
    tcp: TcpConfig = section(TcpConfig)
    ratelimit: RateLimitConfig = section(RateLimitConfig)
    breakout: BreakoutConfig = section(BreakoutConfig, BREAKOUT_OFF)
    policy: PolicyConfig = section(PolicyConfig)
    metrics: MetricsConfig = section(MetricsConfig)
    path: str = ""  # the file it was read from (not a key)


# -- reading ---------------------------------------------------------------------------------------


def parse_config(data: Any, base_dir: str = ".", source: str = "") -> Config:
    """Validate a parsed YAML document (Python data); raise ConfigError listing every problem."""
    return _parse(node_of(data), Document(source), base_dir)


def load_config(path: str) -> Config:
    """Read and validate a config file. Raises ConfigError (never a traceback for bad input)."""
    try:
        root = compose(read_text(path), path)
    except DocumentError as err:
        raise ConfigError(err.errors, path) from None
    return _parse(root, Document(path), os.path.dirname(os.path.abspath(path)))


def _parse(root: yaml.Node | None, doc: Document, base_dir: str) -> Config:
    if root is None or not isinstance(root, yaml.MappingNode):
        doc.error(root, "", "expected a mapping at the top, with at least 'upstreams'")
        raise ConfigError(doc.errors, doc.source)
    cfg = _finish(doc, root, read_section(doc, root, "", Config), base_dir)
    if doc.error_count:
        raise ConfigError(doc.errors, doc.source)
    return cfg


def _finish(doc: Document, root: yaml.Node, cfg: Config, base_dir: str) -> Config:
    """The checks that span keys, and the values derived from others."""

    def error(path: str, message: str) -> None:
        doc.error(_node_at(root, path), path, message)

    if not cfg.upstreams:
        error("/upstreams", "at least one upstream is required")
    if not cfg.listen:
        error("/listen", "at least one address is required")
    for path, upstream in _all_upstreams(cfg):
        for host, port in cfg.listen:
            unspecified = ipaddress.ip_address(host).is_unspecified
            if upstream[1] == port and (
                upstream[0] == host
                or (unspecified and ipaddress.ip_address(upstream[0]).is_loopback)
            ):
                error(path, f"{format_address(*upstream)} is resolverd's own listen address: "
                      "it would ask itself")  # fmt: skip
    breakout = _finish_breakout(cfg.breakout, error, doc.has_error)
    longest = max(cfg.cache.max_ttl, breakout.min_hold) + breakout.grace
    servers = {host.partition("%")[0] for _path, (host, _port) in _all_upstreams(cfg)}
    servers -= {host.partition("%")[0] for host, _port in breakout.resolvers}  # via the breakout
    breakout = dataclasses.replace(breakout, max_hold=longest, dns_servers=tuple(sorted(servers)))
    endpoints = cfg.policy.endpoints
    plain = endpoints is not None and endpoints.url.lower().startswith("http://")
    if plain and endpoints is not None and not endpoints.allow_http:
        error("/policy/endpoints/url", "plain http:// can be forged on the way: use https://, "
              "or set allow_http: true for a mirror you trust")  # fmt: skip
    files = tuple(os.path.join(base_dir, f) for f in cfg.policy.files)
    policy = dataclasses.replace(
        cfg.policy, files=files, builtin=None if cfg.policy.builtin == "none" else "microsoft365"
    )
    return dataclasses.replace(cfg, breakout=breakout, policy=policy, path=doc.source)


def _all_upstreams(cfg: Config) -> list[tuple[str, Address]]:
    out = [(f"/upstreams/{i}", a) for i, a in enumerate(cfg.upstreams)]
    for zone, addresses in cfg.forward_zones.items():
        out += [(f"/forward_zones/{zone}/{i}", a) for i, a in enumerate(addresses)]
    out += [(f"/breakout/resolvers/{i}", a) for i, a in enumerate(cfg.breakout.resolvers)]
    return out


def _finish_breakout(cfg: BreakoutConfig, error: Any, reported: Any) -> BreakoutConfig:
    """One list of links either way: `links`, or the single-link keys as a list of one."""
    links = cfg.links
    if links and (cfg.interface or cfg.gateway4 or cfg.gateway6):
        error("/breakout/links", "give either links or interface/gateway4/gateway6, not both")
    if not links and cfg.interface:
        links = (LinkConfig(cfg.interface, cfg.gateway4, cfg.gateway6),)
    for i, link in enumerate(links):
        if not link.interface:
            error(f"/breakout/links/{i}", "missing key 'interface'")
        elif any(other.interface == link.interface for other in links[:i]):
            error(f"/breakout/links/{i}/interface", f"{link.interface} is listed twice")
    if cfg.mode is Mode.KERNEL and not links:
        error("/breakout/interface", "required when mode is kernel")
    if cfg.health is not None:
        if not cfg.health.targets and not reported("/breakout/health/targets"):
            error("/breakout/health/targets", "at least one target is required")
        if cfg.health.timeout > cfg.health.interval:
            error("/breakout/health/timeout", "must not be longer than the interval")
    first = links[0] if links else LinkConfig("", None, None)
    return dataclasses.replace(
        cfg, links=links, interface=first.interface or None, gateway4=first.gateway4,
        gateway6=first.gateway6,
    )  # fmt: skip


def _node_at(root: yaml.Node, path: str) -> yaml.Node:
    """The deepest node on `path` that exists (for the line of an error)."""
    node = root
    for part in path.strip("/").split("/") if path.strip("/") else []:
        if isinstance(node, yaml.MappingNode):
            found: list[yaml.Node] = [v for k, v in node.value if getattr(k, "value", None) == part]
            if not found:
                return node
            node = found[0]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            item: yaml.Node = node.value[int(part)]
            node = item
        else:
            return node
    return node
