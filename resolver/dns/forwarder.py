"""Split DNS: which upstream set a question goes to, the fallback, and chains finished locally.

Sets, by precedence:
1. a forward zone (`forward_zones`): the longest zone holding the name, whatever it is;
2. the breakout resolvers (`breakout.resolvers`, the ISP's, reached through the breakout link:
   the net side owns their host routes) for a name the policy matches, while a breakout link
   is usable (`ready`);
3. the default upstreams.
When no breakout resolver answers, the default upstreams are asked (counted in `fallbacks`).

An answer from a zone or the default upstreams whose CNAME chain enters a policy name
(``autodiscover.corp.example CNAME outlook.office365.com``) is finished through the breakout
resolvers: they are asked the same question about the first policy name on the chain that no
forward zone holds (a zone beats the policy on a chain too), and the client gets the chain down
to that name followed by their answer (`chains.splice`), so the addresses it connects to, and
that get routed, are the ones close to the branch. With DO set the upstream's answer is passed
unchanged: a spliced answer would not validate. Only A and AAAA questions are spliced (they
carry the addresses that are routed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from resolver.config import Config
from resolver.dns import chains, replies, wire
from resolver.dns.exchange import Reply, Transport
from resolver.dns.sockets import Sockets
from resolver.dns.tagging import NameMatcher
from resolver.dns.upstream import Upstream, UpstreamSet
from resolver.dns.zones import Zones
from resolver.hooks import Tagged
from resolver.logsetup import REPEATS

log = logging.getLogger(__name__)

SPLICED_TYPES: Final = (wire.T_A, wire.T_AAAA)


@dataclass(frozen=True, slots=True)
class Spliced:
    """The origin of an answer finished locally: both sets it depends on, and the policy
    name the breakout resolvers were asked about."""

    first: UpstreamSet
    breakout: UpstreamSet
    target: str


@dataclass(frozen=True, slots=True)
class Fallback:
    """The origin of a breakout name's answer the default upstreams gave instead."""

    breakout: UpstreamSet


@dataclass(slots=True, init=False)
class Resolved:
    data: bytes
    layout: replies.Layout
    upstream: Upstream  # the one that answered (the last one, for a spliced answer)
    origin: UpstreamSet | Spliced | Fallback

    # Written out (init=False): a dataclass's own __init__ stays Python code when compiled.
    def __init__(
        self, data: bytes, layout: replies.Layout, upstream: Upstream,
        origin: UpstreamSet | Spliced | Fallback,
    ) -> None:  # fmt: skip
        self.data = data
        self.layout = layout
        self.upstream = upstream
        self.origin = origin


class Forwarder:
    """The upstream sets of one configuration; see the module docstring."""

    def __init__(
        self, config: Config, *, probe_interval: float = 5.0, transport: Transport | None = None
    ) -> None:
        self.probe_interval = probe_interval
        self.transport: Transport = Sockets() if transport is None else transport
        self.default = self._new_set("default")
        self.zone_sets: dict[str, UpstreamSet] = {}
        self.zones = Zones(())
        self.breakout: UpstreamSet | None = None
        self.fallbacks = 0  # breakout questions the default upstreams answered instead
        self.spliced = 0  # chains finished through the breakout resolvers
        self.configure(config)

    def configure(self, config: Config) -> bool:
        """Apply a (re)loaded config; True when a name may now go to another set than before
        (a zone or the breakout resolvers came or went): then cached answers are checked
        with `origin_ok`. A set that stays keeps its health; new servers join it."""
        timeout = config.forward.timeout
        self.default.configure(config.upstreams, timeout)
        zones: dict[str, UpstreamSet] = {}
        for zone, addresses in config.forward_zones.items():
            zones[zone] = self.zone_sets.get(zone) or self._new_set(f"zone:{zone}")
            zones[zone].configure(addresses, timeout)
        changed = zones.keys() != self.zone_sets.keys()
        self.zone_sets, self.zones = zones, Zones(zones)
        resolvers = config.breakout.resolvers
        if resolvers and self.breakout is None:
            self.breakout, changed = self._new_set("breakout"), True
        elif not resolvers and self.breakout is not None:
            self.breakout, changed = None, True
        if self.breakout is not None:
            self.breakout.configure(resolvers, timeout)
        return changed

    def _new_set(self, role: str) -> UpstreamSet:
        return UpstreamSet(
            role, (), 1.0, transport=self.transport, probe_interval=self.probe_interval
        )

    def sets(self) -> list[UpstreamSet]:
        out = [self.default, *self.zone_sets.values()]
        return out if self.breakout is None else [*out, self.breakout]

    def choose(self, question: bytes, qname: str, matcher: NameMatcher, ready: bool) -> UpstreamSet:
        """The set for a question (lower-case wire name + type + class) about `qname`: with
        `ready` false, the one the config says, whatever the links."""
        zone = self.zones.find_wire(question[:-4]) if self.zones else None
        if zone is not None:
            return self.zone_sets[zone]
        if self.breakout is not None and ready and matcher.match(qname) is not None:
            return self.breakout
        return self.default

    def route(
        self, question: bytes, qname: str, matcher: NameMatcher, ready: bool
    ) -> tuple[UpstreamSet, UpstreamSet | Fallback]:
        """The set to ask now, and the origin to record: a breakout name asked of the default
        upstreams because no link is usable or every breakout resolver is down (probed in the
        background meanwhile) is a `Fallback`, so that a reload can tell it apart."""
        chosen = self.choose(question, qname, matcher, True)
        if chosen is not self.breakout:
            return chosen, chosen
        if ready and chosen.healthy():
            return chosen, chosen
        self.fallbacks += ready  # resolvers down; without a link it is the design, not a failure
        return self.default, Fallback(chosen)

    def origin_ok(self, origin: object, question: bytes, qname: str, matcher: NameMatcher) -> bool:
        """Whether a cached answer from `origin` is still what this config would give."""
        chosen = self.choose(question, qname, matcher, True)
        if isinstance(origin, Spliced):
            return (
                origin.breakout is self.breakout
                and origin.first is chosen
                and self.zones.find(origin.target) is None  # a new zone takes the target
            )
        if isinstance(origin, Fallback):
            return origin.breakout is self.breakout is chosen
        return origin is chosen

    def would_splice(self, origin: object, tag: Tagged | None, qname: str) -> bool:
        """Whether a cached answer, not finished locally, has a chain into a policy name that
        the breakout resolvers would now finish (they were added by a reload)."""
        return (
            self.breakout is not None
            and isinstance(origin, UpstreamSet)
            and origin is not self.breakout
            and tag is not None
            and tag.via != qname
            and self.zones.find(tag.via) is None
        )

    def splice_target(
        self, resolved: Resolved, chosen: UpstreamSet, question: bytes, qname: str, do: bool,
        matcher: NameMatcher, ready: bool,
    ) -> str | None:  # fmt: skip
        """The policy name to ask the breakout resolvers about, when `resolved` (from the set
        `chosen`) has a chain into one that they should finish (the module docstring)."""
        breakout = self.breakout
        if breakout is None or resolved.origin is not chosen or chosen is breakout:
            return None
        if not ready or do or ((question[-4] << 8) | question[-3]) not in SPLICED_TYPES:
            return None
        data, layout = resolved.data, resolved.layout
        if layout.rcode != wire.NOERROR or not layout.answers:
            return None
        chain, _ = chains.chain_of(data, layout, qname)
        # A policy name inside a forward zone is the zone's to answer (a zone beats the
        # policy), on a chain as much as asked directly: it is no target.
        zones = self.zones
        return next((n for n in chain[1:] if matcher.match(n) and zones.find(n) is None), None)

    def splice(
        self, resolved: Resolved, qname: str, target: str, breakout: UpstreamSet,
        got: tuple[Reply, Upstream] | None,
    ) -> Resolved:  # fmt: skip
        """`resolved` finished with the breakout resolvers' answer `got` about `target`; as it
        is when they gave none (counted in `fallbacks`) or the parts do not join."""
        if got is None:
            self.fallbacks += 1
            return resolved
        (local, local_layout), up = got
        data, layout = resolved.data, resolved.layout
        joined = chains.splice(data, layout, target, local, local_layout)
        if joined is None:
            return resolved
        try:
            joined_layout = replies.scan_reply(joined)
        except wire.WireError as err:  # our own assembly: a bug, but never worth a SERVFAIL
            log.warning("spliced answer for %s does not walk: %s", qname, err, extra=REPEATS)
            return resolved
        self.spliced += 1
        first = resolved.origin
        assert isinstance(first, UpstreamSet)
        return Resolved(joined, joined_layout, up, Spliced(first, breakout, target))

    async def close(self) -> None:
        for upstreams in self.sets():
            await upstreams.close()
        self.transport.close()
