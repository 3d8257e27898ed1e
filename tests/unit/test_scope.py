"""The breakout's scope (`breakout.clients`, `breakout.client_interfaces`): the config keys, the
ip rules each combination makes, who counts as in scope (the monitor's and explain's
`in_scope`), a reload that swaps the rules (new ones first), a start that drops an earlier
scope's rules, and the cleanup that finds them by our protocol. The kernel's view of the
rules and real packets are tests/netns/test_scope.py's."""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from resolver.config import ConfigError, HealthConfig, parse_config
from resolver.ctl import explain
from resolver.dns.events import Tracer
from resolver.dns.query import Query
from resolver.net import cleanup
from resolver.net.probes import (
    describe_rule,
    owned_probe_rules,
    owned_rules,
    rule_specs,
    scope_specs,
    stale_scope_rules,
)
from resolver.net.reload import Change
from resolver.net.routes import Route, Rule, RuleSpec
from resolver.scope import Scope
from tests.unit.breakout_fakes import (
    MATCHER,
    POLICY,
    FakeKernel,
    make_breakout,
    make_cfg,
    run,
)

pytestmark = pytest.mark.unit

P, T, PROTO = 1000, 365, 245
ALL = RuleSpec(P, T, PROTO)
LO = RuleSpec(P, T, PROTO, iif="lo")


def src(prefix: str) -> RuleSpec:
    return RuleSpec(P, T, PROTO, src=prefix, family=6 if ":" in prefix else 4)


def iif(name: str) -> RuleSpec:
    return RuleSpec(P, T, PROTO, iif=name)


# -- the config keys --------------------------------------------------------------------------


def test_both_keys_default_to_empty_and_prefixes_are_normalised() -> None:
    cfg = parse_config({"upstreams": ["192.0.2.53"], "breakout": {"interface": "wan0"}})
    assert (cfg.breakout.clients, cfg.breakout.client_interfaces) == ((), ())
    cfg = parse_config({
        "upstreams": ["192.0.2.53"],
        "breakout": {"interface": "wan0", "clients": ["198.51.100.77/24", "2001:DB8:A::1/64"],
                     "client_interfaces": ["vlan20"]},
    })  # fmt: skip
    # Host bits are dropped, as never_route does (ipaddress, strict=False).
    assert cfg.breakout.clients == ("198.51.100.0/24", "2001:db8:a::/64")
    assert cfg.breakout.client_interfaces == ("vlan20",)


def test_config_errors_carry_the_yaml_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({
            "upstreams": ["192.0.2.53"],
            "breakout": {"interface": "wan0", "clients": ["198.51.100.0/24", "lan"],
                         "client_interfaces": ["ok0", "a name with spaces"]},
        })  # fmt: skip
    errors = "\n".join(info.value.errors)
    assert "/breakout/clients/1:" in errors and "/breakout/clients/0" not in errors
    assert "/breakout/client_interfaces/1:" in errors
    assert "/breakout/client_interfaces/0" not in errors


# -- the rules of each combination ------------------------------------------------------------


def test_no_scope_is_one_rule_from_all_as_before() -> None:
    cfg = make_cfg()
    assert scope_specs(cfg) == rule_specs(cfg) == [ALL]
    assert ALL.families == (4, 6)


def test_clients_only_a_rule_per_prefix_in_its_own_family_and_the_router() -> None:
    cfg = make_cfg(clients=("198.51.100.0/25", "2001:db8:a::/64", "192.0.2.7/32"))
    specs = scope_specs(cfg)
    assert specs == [src("198.51.100.0/25"), src("2001:db8:a::/64"), src("192.0.2.7/32"), LO]
    assert [s.families for s in specs] == [(4,), (6,), (4,), (4, 6)]
    assert ALL not in specs


def test_interfaces_only_a_rule_per_interface_for_both_families() -> None:
    specs = scope_specs(make_cfg(client_interfaces=("lan0", "vlan20")))
    assert specs == [LO, iif("lan0"), iif("vlan20")]
    assert all(s.families == (4, 6) for s in specs)


def test_both_set_is_the_union_one_rule_per_prefix_and_per_interface() -> None:
    specs = scope_specs(make_cfg(clients=("10.1.0.0/16",), client_interfaces=("vlan20",)))
    assert specs == [src("10.1.0.0/16"), LO, iif("vlan20")]
    assert not any(s.src and s.iif for s in specs)  # never a (prefix, iif) pair


def test_duplicates_and_a_zero_length_prefix() -> None:
    specs = scope_specs(
        make_cfg(clients=("0.0.0.0/0", "198.51.100.0/24", "198.51.100.0/24"),
                 client_interfaces=("lo", "lan0"))
    )  # fmt: skip
    # /0 is every IPv4 client: the kernel shows it as `from all`, so it is written so (IPv4 only).
    assert specs == [RuleSpec(P, T, PROTO, family=4), src("198.51.100.0/24"), LO, iif("lan0")]


def test_probe_rules_stay_beside_a_scope() -> None:
    health = HealthConfig(targets=(("192.0.2.1", 443),))
    cfg = make_cfg(clients=("198.51.100.0/24",), health=health)
    specs = rule_specs(cfg)
    assert specs[:2] == [src("198.51.100.0/24"), LO]
    assert [s.fwmark for s in specs[2:]] == [health.fwmark]
    assert describe_rule(specs[0]) == "from 198.51.100.0/24 lookup 365"
    assert describe_rule(LO) == "from all iif lo lookup 365"


def rule(spec: RuleSpec, family: int, **kw: Any) -> Rule:
    fields: dict[str, Any] = {"selectors": False, **kw}
    return Rule(family, spec.priority, spec.table, 1, spec.protocol, spec.fwmark,
                fields["selectors"], spec.src, spec.iif)  # fmt: skip


def test_owned_rules_are_found_by_protocol_whichever_config_made_them() -> None:
    cfg = make_cfg(clients=("198.51.100.0/24",))
    old = [src("203.0.113.0/24"), iif("vlan9")]
    mark = RuleSpec(P - 1, T + 1, PROTO, fwmark=0x73650000)
    present = [rule(s, f) for s in [*old, src("198.51.100.0/24"), LO, ALL, mark]
               for f in s.families]  # fmt: skip
    present.append(rule(RuleSpec(P, T, 3, src="192.0.2.0/24", family=4), 4))  # not ours
    present.append(rule(iif("lan0"), 4, selectors=True))  # an oif too: not ours
    found = owned_rules(present, cfg)
    assert set(found) == {*old, src("198.51.100.0/24"), LO, ALL, mark}
    assert owned_probe_rules(present, cfg) == [mark]
    assert set(stale_scope_rules(present, cfg)) == {*old, ALL}


# -- who is in scope ---------------------------------------------------------------------------

CONNECTED = [("192.0.2.128/25", "lan0"), ("2001:db8:c::/64", "lan0"), ("198.51.100.0/24", "dmz0")]


@pytest.mark.parametrize(
    ("clients", "interfaces", "client", "iif_name", "expected"),
    [
        ((), (), "198.51.100.9", None, True),  # no scope: everyone
        (("192.0.2.128/26",), (), "192.0.2.130", None, True),
        (("192.0.2.128/26",), (), "192.0.2.200", None, False),
        (("192.0.2.128/26",), (), "2001:db8:c::5", None, False),  # a prefix is of one family
        (("192.0.2.128/26",), (), "::ffff:192.0.2.130", None, True),  # mapped: as IPv4
        (("192.0.2.128/26",), (), "127.0.0.1", None, True),  # the router itself
        (("192.0.2.128/26",), (), "::1", None, True),
        ((), ("lan0",), "192.0.2.200", None, True),  # lan0's connected network
        ((), ("lan0",), "2001:db8:c::5", None, True),
        ((), ("lan0",), "198.51.100.9", None, False),  # dmz0's
        ((), ("lan0",), "203.0.113.9", None, False),  # behind some router: unknown interface
        ((), ("lan0",), "203.0.113.9", "lan0", True),  # ... unless told (explain --iif)
        ((), ("lan0",), "192.0.2.200", "dmz0", False),
        (("203.0.113.0/24",), ("lan0",), "203.0.113.9", None, True),  # union: the prefix
        (("203.0.113.0/24",), ("lan0",), "192.0.2.200", None, True),  # union: the interface
        (("203.0.113.0/24",), ("lan0",), "198.51.100.9", None, False),  # neither
        (("203.0.113.0/24",), (), "not-an-address", None, False),
    ],
)
def test_scope_contains(
    clients: tuple[str, ...], interfaces: tuple[str, ...], client: str, iif_name: str | None,
    expected: bool,
) -> None:  # fmt: skip
    scope = Scope(clients, interfaces)
    assert scope.contains(client, iif_name, lambda: CONNECTED) is expected


def test_the_breakout_answers_in_scope_from_its_view_of_connected_networks(
    tmp_path: Path,
) -> None:
    # make_view: lan0 holds 192.0.2.128/25 and 2001:db8:c::/64.
    b = make_breakout(tmp_path, make_cfg(client_interfaces=("lan0",)), watch=False)
    assert b.in_scope("192.0.2.200") and b.in_scope("2001:db8:c::9")
    assert not b.in_scope("203.0.113.9")
    b.cfg = make_cfg()
    assert b.in_scope("203.0.113.9")  # no scope: everyone


class Conn:
    tcp = False


def query(client: str) -> Query:
    data = bytes(12) + b"\x07example\x04test\x00\x00\x01\x00\x01"
    return Query(data, (client, 5353), Conn(), len(data), 0, 512)  # type: ignore[arg-type]


def test_monitor_events_carry_in_scope_only_while_a_breakout_answers_it() -> None:
    seen: list[dict[str, Any]] = []
    tracer = Tracer()
    tracer.observer = seen.append
    tracer.refresh()
    tracer.answered(query("192.0.2.130"), 0, "cache")
    assert "in_scope" not in seen[-1]  # breakout off: nothing to say
    tracer.scope = Scope(("192.0.2.128/26",), ()).contains
    tracer.answered(query("192.0.2.130"), 0, "cache")
    tracer.answered(query("192.0.2.200"), 0, "cache")
    assert [e["in_scope"] for e in seen[1:]] == [True, False]
    assert seen[-1]["name"] == "example.test" and seen[-1]["client"] == "192.0.2.200"


# -- explain --client --------------------------------------------------------------------------


def run_explain(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="resolverctl")
    explain.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_says_whether_a_client_is_in_scope(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "resolverd.yaml"
    config.write_text(
        "upstreams: ['192.0.2.53']\nstate_dir: " + str(tmp_path) + "\n"
        "breakout: {mode: dry-run, interface: lo, clients: ['10.1.0.0/16'],"
        " client_interfaces: [vlan20]}\n"
    )
    base = ["explain", "--config", str(config), "--json", "outlook.office365.com"]
    for extra, expected in (
        (["--client", "10.1.2.3"], True),
        (["--client", "10.2.0.1"], False),
        (["--client", "10.2.0.1", "--iif", "vlan20"], True),
        ([], None),
    ):
        code, out, err = run_explain([*base, *extra], capsys)
        assert (code, err) == (0, ""), err
        item = json.loads(out)[0]
        assert item.get("in_scope") == expected and item["match"]["row"] == 3
    code, out, _ = run_explain(["explain", "--config", str(config), "--client", "10.2.0.1",
                                "outlook.office365.com"], capsys)  # fmt: skip
    assert code == 0 and out.splitlines()[-1] == "client 10.2.0.1: outside the breakout scope"
    code, _, err = run_explain([*base, "--client", "nope"], capsys)
    assert code == 1 and "not an address" in err


# -- reload, start, cleanup --------------------------------------------------------------------


class RuleKernel(FakeKernel):
    """FakeKernel whose rules are kept per (spec, family), dumped as the kernel would, with
    every change in order."""

    def __init__(self) -> None:
        super().__init__()
        self.present: set[tuple[RuleSpec, int]] = set()
        self.log: list[tuple[str, RuleSpec, int]] = []

    async def dump_rules(self) -> list[Any]:
        return [rule(s, f) for s, f in sorted(self.present, key=repr)]

    async def change_rules(self, add: Any, remove: Any) -> int:
        changed = 0
        for op, specs in (("add", add), ("del", remove)):
            for spec in specs:
                for family in spec.families:
                    there = (spec, family) in self.present
                    if (op == "add") != there:
                        (self.present.add if op == "add" else self.present.discard)((spec, family))
                        self.log.append((op, spec, family))
                        changed += 1
        return changed

    def specs(self) -> set[RuleSpec]:
        return {s for s, _ in self.present}


def test_a_reload_that_changes_the_scope_adds_the_new_rules_before_removing_the_old(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        k = RuleKernel()
        old = make_cfg(clients=("192.0.2.128/26", "2001:db8:c::/64"))
        b = make_breakout(tmp_path, old, kernel=k)
        await b.start()
        assert k.specs() == {src("192.0.2.128/26"), src("2001:db8:c::/64"), LO}
        k.log.clear()
        new = make_cfg(clients=("192.0.2.128/25",), client_interfaces=("lan0",))
        assert Change.between(old, new).scope and not Change.between(old, old).scope
        await b.reconfigure(new, MATCHER, POLICY)
        assert k.specs() == {src("192.0.2.128/25"), LO, iif("lan0")}
        ops = [op for op, _, _ in k.log]
        assert ops == ["add"] * 3 + ["del"] * 2  # new /25 (v4), lan0 (v4, v6); then the old
        assert {(s, f) for op, s, f in k.log if op == "del"} == {
            (src("192.0.2.128/26"), 4), (src("2001:db8:c::/64"), 6)}  # fmt: skip
        k.log.clear()
        await b.reconfigure(make_cfg(), MATCHER, POLICY)  # back to everyone
        assert k.specs() == {ALL}
        assert [op for op, _, _ in k.log] == ["add", "add", "del", "del", "del", "del", "del"]
        await b.stop()

    run(body)


def test_a_start_removes_the_rules_of_an_earlier_scope_after_adding_its_own(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        k = RuleKernel()
        for spec in (src("203.0.113.0/24"), iif("vlan9"), ALL):
            k.present |= {(spec, f) for f in spec.families}
        b = make_breakout(tmp_path, make_cfg(clients=("192.0.2.128/26",)), kernel=k)
        await b.start()
        assert k.specs() == {src("192.0.2.128/26"), LO}
        first_del = next(i for i, (op, _, _) in enumerate(k.log) if op == "del")
        assert all(op == "add" for op, _, _ in k.log[:first_del])
        # A scoped rule someone deletes comes back with the audit.
        k.present.discard((LO, 6))
        await b.audit()
        assert (LO, 6) in k.present
        await b.stop()

    run(body)


def test_cleanup_removes_every_scoped_rule_an_older_config_left(tmp_path: Path) -> None:
    async def body() -> None:
        k = RuleKernel()
        foreign = RuleSpec(P, T, 3, src="192.0.2.0/24", family=4)
        for spec in (src("203.0.113.0/24"), iif("vlan9"), LO, ALL, foreign):
            k.present |= {(spec, f) for f in spec.families}

        async def delete(routes: list[Route]) -> list[int]:
            return [0] * len(routes)

        cfg = make_cfg(clients=("192.0.2.128/26",))
        counts = await cleanup.remove_owned(k, cfg, delete, [], set())
        assert k.specs() == {foreign}  # another protocol's rule stays
        assert counts["rules"] == 1 + 2 + 2 + 2

    run(body)


def test_rule_specs_pack_the_source_in_its_family_only() -> None:
    spec = src("2001:db8:a::/64")
    _kind, _flags, body = spec.message(6, add=True)
    assert body[0] == socket.AF_INET6 and body[2] == 64
