"""Split DNS end to end on loopback: forward zones, the breakout resolvers, their fallback, chains
finished through the breakout resolvers, canaries and reloads.

Every role has its own fake upstream, and each answers the same names differently, so an
address in the client's answer says which upstream it came from:

- the default upstreams answer 198.51.100.x;
- the breakout resolvers (the ISP's, reached through the breakout link) answer 203.0.113.x and
  2001:db8:365::x;
- head office (the forward zones corp.example, branch.example and the reverse zone
  2.0.192.in-addr.arpa) answers 192.0.2.x, and the lab (lab.corp.example) 192.0.2.13x.

The config is read the way the daemon reads it (`parse_config` on the YAML structure), only the
listen address is a free loopback port.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from dnslib import QTYPE, DNSRecord

from resolver.config import Config, parse_config
from resolver.dns.server import DnsServer
from resolver.hooks import address_texts
from resolver.statusmodel import ForwardingStatus
from tests.fakeupstream import FakeUpstream
from tests.integration.conftest import DnsEnv, RecordingHook, StubMatcher, rcode

pytestmark = pytest.mark.integration

SERVFAIL = 2
NXDOMAIN = 3

DEFAULT_RECORDS: dict[str, Any] = {
    "outlook.office365.com": [{"type": "A", "value": "198.51.100.10", "ttl": 300}],
    "teams.microsoft.com": [{"type": "A", "value": "198.51.100.11", "ttl": 300}],
    "login.microsoftonline.com": [{"type": "A", "value": "198.51.100.12", "ttl": 300}],
    "www.example.test": [{"type": "A", "value": "198.51.100.20", "ttl": 300}],
    "host.branch.example": [{"type": "A", "value": "198.51.100.30", "ttl": 300}],
    "partner.example.test": [{"type": "CNAME", "value": "outlook.office365.com", "ttl": 600}],
    "autodiscover.corp.example": [{"type": "A", "value": "198.51.100.99", "ttl": 300}],
    "use-application-dns.net": [{"type": "A", "value": "198.51.100.53", "ttl": 300}],
    "mask.icloud.com": [{"type": "A", "value": "198.51.100.54", "ttl": 300}],
}
BREAKOUT_RECORDS: dict[str, Any] = {
    "outlook.office365.com": [{"type": "CNAME", "value": "outlook.ha.office365.com", "ttl": 120}],
    "outlook.ha.office365.com": [
        {"type": "A", "value": "203.0.113.10", "ttl": 60},
        {"type": "AAAA", "value": "2001:db8:365::10", "ttl": 60},
    ],
    "teams.microsoft.com": [{"type": "A", "value": "203.0.113.11", "ttl": 300}],
    "login.microsoftonline.com": [{"type": "A", "value": "203.0.113.12", "ttl": 300}],
    "www.example.test": [{"type": "A", "value": "203.0.113.20", "ttl": 300}],
}
OFFICE_RECORDS: dict[str, Any] = {
    "autodiscover.corp.example": [{"type": "CNAME", "value": "outlook.office365.com", "ttl": 300}],
    "sso.corp.example": [{"type": "CNAME", "value": "login.microsoftonline.com", "ttl": 300}],
    "outlook.office365.com": [
        {"type": "A", "value": "192.0.2.80", "ttl": 300},
        {"type": "TXT", "value": "head office", "ttl": 300},
    ],
    "login.microsoftonline.com": [{"type": "A", "value": "192.0.2.90", "ttl": 300}],
    "intranet.corp.example": [{"type": "A", "value": "192.0.2.10", "ttl": 300}],
    "mail.corp.example": [{"type": "A", "value": "192.0.2.25", "ttl": 300}],
    "files.corp.example": [{"type": "A", "value": "192.0.2.26", "ttl": 300}],
    "wiki.corp.example": [{"type": "A", "value": "192.0.2.27", "ttl": 300}],
    "build.lab.corp.example": [{"type": "A", "value": "192.0.2.31", "ttl": 300}],
    "host.branch.example": [{"type": "A", "value": "192.0.2.30", "ttl": 300}],
    "53.2.0.192.in-addr.arpa": [{"type": "PTR", "value": "ns.corp.example", "ttl": 300}],
}
LAB_RECORDS: dict[str, Any] = {
    "build.lab.corp.example": [{"type": "A", "value": "192.0.2.130", "ttl": 300}],
}

# The policy: exact names and their rows, as policy.matcher would match them.
POLICY = {"outlook.office365.com": 1, "teams.microsoft.com": 11, "login.microsoftonline.com": 56}

ZONES = {
    "corp.example": ["office"],
    "lab.corp.example": ["lab"],
    "2.0.192.in-addr.arpa": ["office"],
}


def ready_hook(ready: bool = True) -> RecordingHook:
    """A recording breakout hook whose link is usable (or not)."""
    hook = RecordingHook()
    hook.ready = ready
    return hook


class SplitEnv(DnsEnv):
    """One fake upstream per role and a DnsServer configured from a YAML-shaped document:
    `zones` maps each zone to role names (default: ZONES), `resolvers` lists the breakout
    resolvers' role names (default: the breakout fake), `settings` adds top-level keys."""

    def __init__(
        self,
        zones: dict[str, list[str]] | None = None,
        resolvers: list[str] | None = None,
        *,
        hook: RecordingHook | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(
            {},
            upstreams=0,
            hook=hook if hook is not None else ready_hook(),
            matcher=StubMatcher(POLICY),
        )
        self.zones = ZONES if zones is None else zones
        self.resolvers = ["breakout"] if resolvers is None else resolvers
        self.settings = settings
        self.roles: dict[str, FakeUpstream] = {}

    async def __aenter__(self) -> SplitEnv:
        records = {
            "default": DEFAULT_RECORDS,
            "breakout": BREAKOUT_RECORDS,
            "office": OFFICE_RECORDS,
            "office2": OFFICE_RECORDS,  # head office's second server
            "lab": LAB_RECORDS,
        }
        try:
            for role, zone in records.items():
                fake = await FakeUpstream(zone).start()
                self.roles[role] = fake
                self.fakes.append(fake)
            self.config = self.config_for(self.zones, self.resolvers, **self.settings)
            self.server = DnsServer(self.config, self.matcher, self.hook)
            await self.server.start()
        except BaseException:
            await self.__aexit__()  # nothing started stays behind
            raise
        return self

    def config_for(
        self, zones: dict[str, list[str]], resolvers: list[str], **settings: Any
    ) -> Config:
        """A config read like the daemon reads its file, naming the fakes by role."""
        document = {
            "upstreams": [self.roles["default"].text],
            "forward_zones": {
                zone: [self.roles[role].text for role in roles] for zone, roles in zones.items()
            },
            "breakout": {
                "interface": "wan0",
                "resolvers": [self.roles[role].text for role in resolvers],
            },
            "forward": {"timeout": 0.25},
            "ratelimit": {"qps": 0},
            **settings,
        }
        return dataclasses.replace(parse_config(document), listen=(("127.0.0.1", 0),))

    def reload(self, zones: dict[str, list[str]], resolvers: list[str], **settings: Any) -> None:
        """What the daemon does on reload: the DNS server gets the new config."""
        self.srv.reconfigure(self.config_for(zones, resolvers, **settings), self.matcher)

    @property
    def default(self) -> FakeUpstream:
        return self.roles["default"]

    @property
    def breakout(self) -> FakeUpstream:
        return self.roles["breakout"]

    @property
    def office(self) -> FakeUpstream:
        return self.roles["office"]

    @property
    def office2(self) -> FakeUpstream:
        return self.roles["office2"]

    @property
    def lab(self) -> FakeUpstream:
        return self.roles["lab"]

    def asked(self, role: str) -> list[tuple[str, str]]:
        """What the upstream of `role` was asked: (name in lower case, type), in order."""
        return [(q.qname.lower(), q.qtype) for q in self.roles[role].received]

    def forwarding(self) -> ForwardingStatus:
        return self.srv.status()["forwarding"]

    def upstream_rows(self) -> list[dict[str, Any]]:
        return [dict(row) for row in self.srv.status()["upstreams"]]


def answer(reply: DNSRecord) -> list[tuple[str, str, str]]:
    """The answer section as (owner, type, data) without trailing dots."""
    return [
        (str(rr.rname).rstrip("."), QTYPE.get(rr.rtype), str(rr.rdata).rstrip("."))
        for rr in reply.rr
    ]


def addresses(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if rr.rtype in (QTYPE.A, QTYPE.AAAA)]


def hook_calls(hook: RecordingHook) -> list[tuple[str, str, list[str]]]:
    """Each call of the breakout hook as (query name, via, addresses)."""
    return [(t.qname, t.via, address_texts(t.addresses)) for t, _ttl in hook.calls]


# -- zones -----------------------------------------------------------------------------------------


async def test_the_longest_zone_wins_and_a_zone_beats_the_policy() -> None:
    zones = {**ZONES, "microsoftonline.com": ["office"]}
    async with SplitEnv(zones) as env:
        # lab.corp.example is inside corp.example: the longer zone takes its names
        assert addresses(await env.ask("build.lab.corp.example")) == ["192.0.2.130"]
        assert env.asked("lab") == [("build.lab.corp.example", "A")]
        # the rest of corp.example goes to head office
        assert addresses(await env.ask("Intranet.Corp.Example")) == ["192.0.2.10"]
        assert env.asked("office") == [("intranet.corp.example", "A")]
        # a zone holds whole labels: xcorp.example is not in corp.example
        assert rcode(await env.ask("xcorp.example")) == NXDOMAIN
        assert env.asked("default") == [("xcorp.example", "A")]
        # a policy name inside a zone goes to the zone, not to the breakout resolvers ...
        assert addresses(await env.ask("login.microsoftonline.com")) == ["192.0.2.90"]
        assert env.asked("office")[-1] == ("login.microsoftonline.com", "A")
        assert env.asked("breakout") == [] and len(env.asked("default")) == 1
        assert env.asked("lab") == [("build.lab.corp.example", "A")]
        # ... and the policy alone tags: that answer is routed, the zone's own names are not
        assert hook_calls(env.hook) == [
            ("login.microsoftonline.com", "login.microsoftonline.com", ["192.0.2.90"])
        ]
        assert env.counters["tagged"] == 1
        assert env.forwarding()["spliced"] == 0


async def test_a_reverse_zone_takes_its_ptr_queries() -> None:
    async with SplitEnv() as env:
        reply = await env.ask("53.2.0.192.in-addr.arpa", "PTR")
        assert answer(reply) == [("53.2.0.192.in-addr.arpa", "PTR", "ns.corp.example")]
        assert env.asked("office") == [("53.2.0.192.in-addr.arpa", "PTR")]
        # another reverse zone is the default upstreams' job
        assert rcode(await env.ask("7.100.51.198.in-addr.arpa", "PTR")) == NXDOMAIN
        assert env.asked("default") == [("7.100.51.198.in-addr.arpa", "PTR")]
        assert env.asked("breakout") == [] and env.hook.calls == []


async def test_every_upstream_shows_with_its_role_in_status() -> None:
    async with SplitEnv() as env:
        await env.ask("build.lab.corp.example")
        rows = {row["role"]: row for row in env.upstream_rows()}
        assert set(rows) == {
            "default", "breakout", "zone:corp.example", "zone:lab.corp.example",
            "zone:2.0.192.in-addr.arpa",
        }  # fmt: skip
        assert rows["default"]["address"] == env.default.text
        assert rows["breakout"]["address"] == env.breakout.text
        assert rows["zone:lab.corp.example"]["address"] == env.lab.text
        assert rows["zone:lab.corp.example"]["rtt_ms"] is not None  # it answered
        assert rows["default"]["rtt_ms"] is None  # not asked yet
        assert all(row["healthy"] for row in rows.values())
        stats = {row["role"]: row for row in env.srv.upstream_stats()}
        assert stats["zone:lab.corp.example"]["queries"] == 1


async def test_a_zone_has_its_own_health_ordering_and_no_fallback() -> None:
    async with SplitEnv({**ZONES, "corp.example": ["office", "office2"]}) as env:
        env.office.mode = "timeout"
        # the first server is silent: its second server answers, within the client's wait
        assert addresses(await env.ask("intranet.corp.example")) == ["192.0.2.10"]
        assert env.asked("office") == env.asked("office2") == [("intranet.corp.example", "A")]
        # after that failure the second server goes first: no more waiting for the silent one
        assert addresses(await env.ask("mail.corp.example")) == ["192.0.2.25"]
        assert addresses(await env.ask("files.corp.example")) == ["192.0.2.26"]
        assert len(env.asked("office")) == 1 and len(env.asked("office2")) == 3
        zone = {r["address"]: r for r in env.upstream_rows() if r["role"] == "zone:corp.example"}
        assert zone[env.office2.text]["rtt_ms"] is not None
        assert zone[env.office.text]["rtt_ms"] is None
        # when no server of the zone answers, the client gets SERVFAIL, not another set's view
        env.office2.mode = "timeout"
        assert rcode(await env.ask("wiki.corp.example")) == SERVFAIL
        assert len(env.asked("office")) == 2 and len(env.asked("office2")) == 4
        assert env.asked("default") == [] and env.asked("breakout") == []
        assert env.forwarding()["breakout_fallbacks"] == 0


async def test_a_zone_upstream_reply_is_matched_as_strictly_as_any() -> None:
    async with SplitEnv() as env:
        env.office.mode = "wrong_id"
        env.office.spoof_first = True  # a reply with another id first, then the right one
        assert addresses(await env.ask("intranet.corp.example")) == ["192.0.2.10"]
        stats = {row["address"]: row for row in env.srv.upstream_stats()}
        assert stats[env.office.text]["dropped"] == 1
        assert stats[env.office.text]["answers"] == 1


# -- the breakout resolvers ------------------------------------------------------------------------


async def test_policy_names_go_to_the_breakout_resolvers_while_a_link_is_ready() -> None:
    async with SplitEnv() as env:
        assert addresses(await env.ask("teams.microsoft.com")) == ["203.0.113.11"]
        assert env.asked("breakout") == [("teams.microsoft.com", "A")]
        assert hook_calls(env.hook) == [
            ("teams.microsoft.com", "teams.microsoft.com", ["203.0.113.11"])
        ]
        # a name the policy does not match stays with the default upstreams
        assert addresses(await env.ask("www.example.test")) == ["198.51.100.20"]
        assert env.asked("default") == [("www.example.test", "A")]
        # no usable breakout link: policy names go to the default upstreams
        env.hook.ready = False
        assert addresses(await env.ask("login.microsoftonline.com")) == ["198.51.100.12"]
        assert env.asked("default")[-1] == ("login.microsoftonline.com", "A")
        assert env.asked("breakout") == [("teams.microsoft.com", "A")]
        assert hook_calls(env.hook)[-1] == (
            "login.microsoftonline.com", "login.microsoftonline.com", ["198.51.100.12"]
        )  # fmt: skip
        assert env.forwarding()["breakout_fallbacks"] == 0


async def test_without_a_ready_link_the_breakout_resolvers_are_never_asked() -> None:
    async with SplitEnv(hook=ready_hook(False)) as env:
        assert addresses(await env.ask("teams.microsoft.com")) == ["198.51.100.11"]
        # a chain into a policy name is not finished locally either
        reply = await env.ask("autodiscover.corp.example")
        assert addresses(reply) == ["192.0.2.80"]
        assert env.asked("breakout") == []
        assert env.forwarding() == {
            "breakout_fallbacks": 0, "spliced": 0, "routes_deferred": 0, "canaries": 0,
            "addresses_capped": 0,
        }  # fmt: skip


async def test_a_silent_breakout_resolver_falls_back_to_the_default_upstreams() -> None:
    async with SplitEnv() as env:
        env.breakout.mode = "timeout"
        names = ["teams.microsoft.com", "login.microsoftonline.com", "outlook.office365.com"]
        expected = ["198.51.100.11", "198.51.100.12", "198.51.100.10"]
        for count, (name, address) in enumerate(zip(names, expected, strict=True), 1):
            reply = await env.ask(name)  # within the client's 2 s
            assert rcode(reply) == 0 and addresses(reply) == [address]
            assert env.forwarding()["breakout_fallbacks"] == count
        assert env.asked("breakout") == [(name, "A") for name in names]
        assert env.asked("default") == [(name, "A") for name in names]
        # the addresses handed out are the default upstreams', and those are routed
        assert [call[2] for call in hook_calls(env.hook)] == [[a] for a in expected]
        # three failures in a row: the breakout resolver shows unhealthy, the others do not
        rows = {row["role"]: row for row in env.upstream_rows()}
        assert rows["breakout"]["healthy"] is False
        assert rows["default"]["healthy"] is True
        # the fallback answer is cached: no second wait for the silent resolver
        assert addresses(await env.ask("teams.microsoft.com")) == ["198.51.100.11"]
        assert len(env.asked("breakout")) == 3 and len(env.asked("default")) == 3
        assert env.forwarding()["breakout_fallbacks"] == 3


# -- chains finished through the breakout resolvers ----------------------------------------------


async def test_a_zone_chain_into_a_policy_name_is_finished_by_the_breakout_resolvers() -> None:
    async with SplitEnv() as env:
        reply = await env.ask("autodiscover.corp.example")
        spliced = [
            ("autodiscover.corp.example", "CNAME", "outlook.office365.com"),
            ("outlook.office365.com", "CNAME", "outlook.ha.office365.com"),
            ("outlook.ha.office365.com", "A", "203.0.113.10"),
        ]
        assert answer(reply) == spliced  # head office's 192.0.2.80 is gone
        assert env.asked("office") == [("autodiscover.corp.example", "A")]
        assert env.asked("breakout") == [("outlook.office365.com", "A")]
        assert env.asked("default") == []
        assert hook_calls(env.hook) == [
            ("autodiscover.corp.example", "outlook.office365.com", ["203.0.113.10"])
        ]
        assert env.forwarding()["spliced"] == 1
        # a cache hit serves the spliced answer and hands its addresses to the hook again
        again = await env.ask("autodiscover.corp.example")
        assert answer(again) == spliced
        assert env.counters["hits"] == 1
        assert len(env.asked("office")) == 1 and len(env.asked("breakout")) == 1
        assert hook_calls(env.hook) == 2 * [
            ("autodiscover.corp.example", "outlook.office365.com", ["203.0.113.10"])
        ]
        # AAAA is spliced as well
        six = await env.ask("autodiscover.corp.example", "AAAA")
        assert addresses(six) == ["2001:db8:365::10"]
        assert env.asked("breakout")[-1] == ("outlook.office365.com", "AAAA")
        assert env.forwarding()["spliced"] == 2


async def test_a_default_upstream_chain_into_a_policy_name_is_finished_too() -> None:
    async with SplitEnv() as env:
        reply = await env.ask("partner.example.test")
        assert answer(reply) == [
            ("partner.example.test", "CNAME", "outlook.office365.com"),
            ("outlook.office365.com", "CNAME", "outlook.ha.office365.com"),
            ("outlook.ha.office365.com", "A", "203.0.113.10"),
        ]
        assert env.asked("default") == [("partner.example.test", "A")]
        assert env.asked("breakout") == [("outlook.office365.com", "A")]
        assert hook_calls(env.hook) == [
            ("partner.example.test", "outlook.office365.com", ["203.0.113.10"])
        ]


async def test_a_chain_into_a_policy_name_inside_a_zone_stays_with_the_zone() -> None:
    # login.microsoftonline.com asked directly goes to head office (its zone beats the
    # policy); reached through a CNAME it must not go to the breakout resolvers either.
    async with SplitEnv({**ZONES, "microsoftonline.com": ["office"]}) as env:
        reply = await env.ask("sso.corp.example")
        assert answer(reply) == [
            ("sso.corp.example", "CNAME", "login.microsoftonline.com"),
            ("login.microsoftonline.com", "A", "192.0.2.90"),
        ]
        assert env.asked("breakout") == []
        assert env.forwarding()["spliced"] == 0
        assert hook_calls(env.hook) == [
            ("sso.corp.example", "login.microsoftonline.com", ["192.0.2.90"])
        ]


async def test_with_do_set_the_upstream_answer_passes_unchanged() -> None:
    async with SplitEnv() as env:
        reply = await env.ask("autodiscover.corp.example", do=True)
        assert answer(reply) == [
            ("autodiscover.corp.example", "CNAME", "outlook.office365.com"),
            ("outlook.office365.com", "A", "192.0.2.80"),
        ]
        assert [q.do for q in env.office.received] == [True]
        assert env.asked("breakout") == []
        assert env.forwarding()["spliced"] == 0
        # the answer as given is the one tagged
        assert hook_calls(env.hook) == [
            ("autodiscover.corp.example", "outlook.office365.com", ["192.0.2.80"])
        ]


async def test_only_address_questions_are_spliced() -> None:
    async with SplitEnv() as env:
        reply = await env.ask("autodiscover.corp.example", "TXT")
        assert answer(reply) == [
            ("autodiscover.corp.example", "CNAME", "outlook.office365.com"),
            ("outlook.office365.com", "TXT", '"head office"'),
        ]
        assert env.asked("breakout") == []
        assert env.forwarding()["spliced"] == 0


async def test_a_chain_the_breakout_resolvers_cannot_finish_keeps_the_upstream_answer() -> None:
    async with SplitEnv() as env:
        env.breakout.mode = "timeout"
        reply = await env.ask("autodiscover.corp.example")
        assert addresses(reply) == ["192.0.2.80"]
        assert env.asked("breakout") == [("outlook.office365.com", "A")]
        assert env.forwarding() == {
            "breakout_fallbacks": 1, "spliced": 0, "routes_deferred": 0, "canaries": 0,
            "addresses_capped": 0,
        }  # fmt: skip


# -- canaries --------------------------------------------------------------------------------------


async def test_the_doh_canary_gets_nxdomain_from_resolverd_itself() -> None:
    async with SplitEnv() as env:
        for qtype in ("A", "AAAA", "HTTPS"):
            reply = await env.ask("Use-Application-DNS.net", qtype)
            assert rcode(reply) == NXDOMAIN and reply.rr == []
        tcp = await env.ask("use-application-dns.net", tcp=True)
        assert rcode(tcp) == NXDOMAIN
        assert all(fake.received == [] for fake in env.fakes)
        assert env.forwarding()["canaries"] == 4
        assert env.counters["nxdomain"] == 4
        # a name below the canary is an ordinary name
        assert rcode(await env.ask("x.use-application-dns.net")) == NXDOMAIN
        assert env.asked("default") == [("x.use-application-dns.net", "A")]
        assert env.forwarding()["canaries"] == 4


async def test_an_empty_canary_list_forwards_the_canary() -> None:
    async with SplitEnv(canaries=[]) as env:
        assert addresses(await env.ask("use-application-dns.net")) == ["198.51.100.53"]
        assert env.asked("default") == [("use-application-dns.net", "A")]
        assert env.forwarding()["canaries"] == 0


async def test_configured_canaries_replace_the_default_one() -> None:
    async with SplitEnv(canaries=["mask.icloud.com", "mask-h2.icloud.com"]) as env:
        assert rcode(await env.ask("mask.icloud.com")) == NXDOMAIN
        assert rcode(await env.ask("mask-h2.icloud.com", "AAAA")) == NXDOMAIN
        assert addresses(await env.ask("use-application-dns.net")) == ["198.51.100.53"]
        assert env.asked("default") == [("use-application-dns.net", "A")]
        assert env.forwarding()["canaries"] == 2


# -- reload ----------------------------------------------------------------------------------------


async def test_reload_adding_a_zone_drops_its_cached_names_only() -> None:
    async with SplitEnv() as env:
        for _ in range(2):  # a miss, then a hit (remembered for repeats)
            assert addresses(await env.ask("host.branch.example")) == ["198.51.100.30"]
        assert addresses(await env.ask("www.example.test")) == ["198.51.100.20"]
        assert addresses(await env.ask("build.lab.corp.example")) == ["192.0.2.130"]
        assert len(env.asked("default")) == 2
        env.reload({**ZONES, "branch.example": ["office"]}, ["breakout"])
        # the new zone answers at once, not the cached default answer
        assert addresses(await env.ask("host.branch.example")) == ["192.0.2.30"]
        assert env.asked("office") == [("host.branch.example", "A")]
        # the rest stayed cached: no upstream asked again
        assert addresses(await env.ask("www.example.test")) == ["198.51.100.20"]
        assert addresses(await env.ask("build.lab.corp.example")) == ["192.0.2.130"]
        assert len(env.asked("default")) == 2 and len(env.asked("lab")) == 1
        assert env.counters["hits"] == 3
        assert "zone:branch.example" in {row["role"] for row in env.upstream_rows()}


async def test_reload_removing_a_zone_sends_its_names_to_the_enclosing_zone() -> None:
    async with SplitEnv() as env:
        assert addresses(await env.ask("build.lab.corp.example")) == ["192.0.2.130"]
        assert addresses(await env.ask("intranet.corp.example")) == ["192.0.2.10"]
        zones = {k: v for k, v in ZONES.items() if k != "lab.corp.example"}
        env.reload(zones, ["breakout"])
        assert addresses(await env.ask("build.lab.corp.example")) == ["192.0.2.31"]
        assert addresses(await env.ask("intranet.corp.example")) == ["192.0.2.10"]
        assert env.asked("office") == [
            ("intranet.corp.example", "A"), ("build.lab.corp.example", "A"),
        ]  # fmt: skip
        assert "zone:lab.corp.example" not in {row["role"] for row in env.upstream_rows()}


async def test_reload_adding_a_zone_over_a_splice_target_drops_the_spliced_answer() -> None:
    async with SplitEnv() as env:
        assert addresses(await env.ask("autodiscover.corp.example")) == ["203.0.113.10"]
        assert addresses(await env.ask("teams.microsoft.com")) == ["203.0.113.11"]
        env.reload({**ZONES, "office365.com": ["office"]}, ["breakout"])
        # head office answers for office365.com now, the chain included
        assert addresses(await env.ask("autodiscover.corp.example")) == ["192.0.2.80"]
        assert env.asked("office") == [("autodiscover.corp.example", "A")] * 2
        # the breakout resolvers' answer for a name outside the new zone stayed cached
        assert addresses(await env.ask("teams.microsoft.com")) == ["203.0.113.11"]
        assert env.asked("breakout") == [
            ("outlook.office365.com", "A"), ("teams.microsoft.com", "A"),
        ]  # fmt: skip


async def test_reload_removing_the_resolvers_drops_their_answers() -> None:
    async with SplitEnv() as env:
        assert addresses(await env.ask("teams.microsoft.com")) == ["203.0.113.11"]
        assert addresses(await env.ask("autodiscover.corp.example")) == ["203.0.113.10"]
        assert addresses(await env.ask("www.example.test")) == ["198.51.100.20"]
        assert addresses(await env.ask("intranet.corp.example")) == ["192.0.2.10"]
        env.reload(ZONES, [])
        # policy names go to the default upstreams now
        assert addresses(await env.ask("teams.microsoft.com")) == ["198.51.100.11"]
        assert env.asked("default")[-1] == ("teams.microsoft.com", "A")
        # the spliced answer depended on the resolvers: head office's own answer now
        assert addresses(await env.ask("autodiscover.corp.example")) == ["192.0.2.80"]
        assert len(env.asked("office")) == 3
        assert len(env.asked("breakout")) == 2
        # answers that did not come through the resolvers stayed cached
        assert addresses(await env.ask("www.example.test")) == ["198.51.100.20"]
        assert addresses(await env.ask("intranet.corp.example")) == ["192.0.2.10"]
        assert env.asked("default") == [("www.example.test", "A"), ("teams.microsoft.com", "A")]
        assert "breakout" not in {row["role"] for row in env.upstream_rows()}


async def test_reload_adding_the_resolvers_drops_what_they_would_answer_now() -> None:
    async with SplitEnv(resolvers=[]) as env:
        assert addresses(await env.ask("teams.microsoft.com")) == ["198.51.100.11"]
        assert addresses(await env.ask("autodiscover.corp.example")) == ["192.0.2.80"]
        assert addresses(await env.ask("www.example.test")) == ["198.51.100.20"]
        env.reload(ZONES, ["breakout"])
        # The default set no longer applies to the policy name: asked of the resolvers now.
        assert addresses(await env.ask("teams.microsoft.com")) == ["203.0.113.11"]
        # A cached chain into a policy name is finished by the resolvers now.
        assert addresses(await env.ask("autodiscover.corp.example")) == ["203.0.113.10"]
        assert env.asked("breakout") == [
            ("teams.microsoft.com", "A"),
            ("outlook.office365.com", "A"),
        ]
        assert addresses(await env.ask("www.example.test")) == ["198.51.100.20"]  # still cached
        assert env.asked("default").count(("www.example.test", "A")) == 1


async def test_with_every_breakout_resolver_down_policy_names_go_straight_to_default() -> None:
    async with SplitEnv() as env:
        env.breakout.mode = "timeout"
        for qtype in ("AAAA", "TXT", "MX"):  # three timeouts: the resolver is down
            assert rcode(await env.ask("teams.microsoft.com", qtype)) == 0
        asked = len(env.asked("breakout"))
        started = asyncio.get_running_loop().time()
        assert addresses(await env.ask("teams.microsoft.com")) == ["198.51.100.11"]
        assert asyncio.get_running_loop().time() - started < 0.2  # no wait for the dead one
        assert len(env.asked("breakout")) == asked  # probed in the background, not asked
        assert env.forwarding()["breakout_fallbacks"] == 4
