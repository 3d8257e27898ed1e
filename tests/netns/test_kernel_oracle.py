"""pyroute2 as the oracle of what the kernel holds after resolverd's own encoders wrote it.

In a namespace of its own (a veth pair, documentation addresses, an nftables table with two
timeout sets), an agent process runs the daemon's `Kernel` (the class resolverd uses) through
netlink: it creates the ipsets (`ipsets.create`), installs host routes and a prefix in the
breakout table, a probe table's unreachable default, ip rules with and without a fwmark, set
entries with timeouts, then removes some of each. Then it reads everything back twice: with
our parsers (`routes.dump_routes`, `dump_rules`, `NetView.load`, `ipsets.inspect`) and with
pyroute2 (IPRoute, IPSet, AsyncNFTables in a separate loop). The test compares the two views
with each other and with what was asked for. A second agent run drives `ipsets.create` into
the sets that already exist under its name (same settings, other settings, another type).

    python -m tests.netns.test_kernel_oracle program|create-cases NETNS   (run inside NETNS)
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.netns.lab import REPO, wait_for
from tests.nslab import NamespaceLab, inside

TABLE, PROBE4, PROBE6, PROTOCOL, PRIORITY = 365, 366, 367, 245, 1000
WAN4, GW4, WAN6, GW6 = "192.0.2.2", "192.0.2.1", "2001:db8:b::2", "2001:db8:b::1"
HOSTS4 = ("203.0.113.10", "203.0.113.11", "203.0.113.12")
HOSTS6 = ("2001:db8:365::10", "2001:db8:365::11")
PREFIX4 = ("198.51.100.64", 30)  # a policy prefix
P2P_LOCAL, P2P_PEER = "198.51.100.130", "198.51.100.129"  # a point-to-point address on wan0
FOREIGN4 = "203.0.113.13"  # a host route in our table that someone else added (proto static)
FWMARK = 0x365
SET_TIMEOUT, MAXELEM = 330, 65536  # min_hold + grace; max(65536, max_entries)
ENTRIES4 = {"203.0.113.10": 300, "203.0.113.11": 600, "203.0.113.12": 900}
ENTRIES6 = {"2001:db8:365::10": 450, "2001:db8:365::11": 750}
GONE4, GONE6 = "203.0.113.12", "2001:db8:365::11"  # deleted after being added

pytestmark = pytest.mark.netns


class OracleLab(NamespaceLab):
    """Two namespaces: the router, with wan0 (the breakout link) and the firewall's nftables
    sets, and the gateway at the other end of wan0."""

    def __init__(self) -> None:
        self.ns = f"r365o-{os.getpid()}"
        self.peer = f"r365o-{os.getpid()}-gw"
        self._made: list[str] = []

    def _build(self) -> None:
        for ns in (self.ns, self.peer):
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            self._made.append(ns)
            self.run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                     "net.ipv6.conf.default.accept_dad=0", ns=ns)  # fmt: skip
            self.run("ip", "link", "set", "lo", "up", ns=ns)
        for ns, cmd in (
            (self.ns, f"link add wan0 type veth peer name eth0 netns {self.peer}"),
            (self.ns, f"addr add {WAN4}/25 dev wan0"),
            (self.ns, f"addr add {WAN6}/64 dev wan0 nodad"),
            (self.ns, f"addr add {P2P_LOCAL} peer {P2P_PEER}/32 dev wan0"),
            (self.peer, f"addr add {GW4}/25 dev eth0"),
            (self.peer, f"addr add {GW6}/64 dev eth0 nodad"),
            (self.peer, "link set eth0 up"),
            (self.ns, "link set wan0 up"),
            (self.ns, f"route add {FOREIGN4}/32 via {GW4} table {TABLE} proto static"),
        ):
            self.run("ip", *cmd.split(), ns=ns)
        if not wait_for(lambda: "LOWER_UP" in self.run("ip", "link", "show", "wan0")):
            raise AssertionError(f"[{self.ns}] wan0 has no carrier")
        self.run("nft", "-f", "-", stdin=(
            "table inet filter {\n set m365v4 { type ipv4_addr; flags timeout; }\n"
            " set m365v6 { type ipv6_addr; flags timeout; }\n}\n"
        ))  # fmt: skip

    def run(self, *cmd: str, stdin: str | None = None, ns: str = "") -> str:
        ns = ns or self.ns
        res = subprocess.run(
            ["ip", "netns", "exec", ns, *cmd], input=stdin, capture_output=True,
            text=True, timeout=30, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
        )  # fmt: skip
        if res.returncode != 0:
            raise AssertionError(f"[{ns}] {' '.join(cmd)}: {res.stderr.strip()}")
        return res.stdout

    def agent(self, op: str) -> dict[str, Any]:
        out = self.run(sys.executable, "-m", "tests.netns.test_kernel_oracle", op, self.ns)
        result: dict[str, Any] = json.loads(out)
        return result

    def close(self) -> None:
        for ns in self._made:  # the processes first, then the namespaces
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made.clear()


@pytest.fixture(scope="module")
def olab() -> Iterator[OracleLab]:
    with OracleLab() as built:
        yield built


@pytest.fixture(scope="module")
def seen(olab: OracleLab) -> dict[str, Any]:
    return olab.agent("program")


def key(route: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(route[k] for k in ("family", "dst", "dst_len", "table", "protocol", "scope",
                                    "type", "oif", "gateway"))  # fmt: skip


def test_routes_as_our_parser_and_pyroute2_read_them(seen: dict[str, Any]) -> None:
    ours, oracle = seen["ours"]["routes"], seen["pyroute2"]["routes"]
    for table in (TABLE, PROBE4, PROBE6):
        assert sorted(map(key, ours[str(table)])) == sorted(map(key, oracle[str(table)])), table
    oif = seen["oif"]
    hosts = {(4, a, 32) for a in HOSTS4[:2]} | {(6, a, 128) for a in HOSTS6}
    ours_table = {(r["family"], r["dst"], r["dst_len"]): r for r in oracle[str(TABLE)]}
    assert set(ours_table) == hosts | {(4, *PREFIX4), (4, FOREIGN4, 32)}
    for where, r in ours_table.items():
        if where[1] == FOREIGN4:  # our delete named our protocol: the kernel kept this one
            assert r["protocol"] == 4
            continue
        assert (r["protocol"], r["type"], r["oif"], r["scope"]) == (PROTOCOL, 1, oif, 0), r
        assert r["gateway"] == (GW4 if where[0] == 4 else GW6), r
    probe4 = {(r["dst"], r["type"], r["gateway"]) for r in oracle[str(PROBE4)]}
    assert probe4 == {("0.0.0.0", 7, None), ("0.0.0.0", 1, GW4)}  # unreachable + default
    probe6 = [r for r in oracle[str(PROBE6)] if r["protocol"] == PROTOCOL]
    assert [(r["dst"], r["type"]) for r in probe6] == [("::", 7)]
    assert all(r["priority"] == 0xFFFFFFFF for r in oracle[str(PROBE4)] if r["type"] == 7)


def test_the_kernel_acknowledged_each_message_as_expected(seen: dict[str, Any]) -> None:
    codes = seen["codes"]
    assert codes["add_routes"] == [0] * 6
    # The third v4 host and the foreign route: ours goes, the foreign one is refused (ESRCH).
    assert codes["del_routes"] == [0, errno.ESRCH]
    assert codes["probe4"] == [0, 0] and codes["probe6"] == [0]
    assert codes["rules_changed"] == 4  # two rules, both families
    assert codes["add_entries"] == [0] * 5 and codes["del_entries"] == [0, 0]


def test_rules_as_our_parser_and_pyroute2_read_them(seen: dict[str, Any]) -> None:
    ours = sorted(tuple(r) for r in seen["ours"]["rules"])
    oracle = sorted(tuple(r) for r in seen["pyroute2"]["rules"])
    assert ours == oracle  # (family, priority, table, action, protocol, fwmark), every rule
    mine = [r for r in oracle if r[4] == PROTOCOL]
    assert sorted(mine) == sorted(
        (f, PRIORITY + i, TABLE + i, 1, PROTOCOL, mark)
        for f in (4, 6)
        for i, mark in ((0, None), (1, FWMARK))
    )
    assert seen["pyroute2"]["fwmask"] == [0xFFFFFFFF] * 2


def test_links_and_addresses_as_our_parser_and_pyroute2_read_them(seen: dict[str, Any]) -> None:
    ours, oracle = seen["ours"], seen["pyroute2"]
    assert sorted(map(tuple, ours["links"])) == sorted(map(tuple, oracle["links"]))
    assert sorted(map(tuple, ours["addrs"])) == sorted(map(tuple, oracle["addrs"]))
    assert [seen["oif"], "wan0", True] in oracle["links"]
    assert [seen["oif"], 4, WAN4, "192.0.2.0/25"] in oracle["addrs"]
    assert [seen["oif"], 6, WAN6, "2001:db8:b::/64"] in oracle["addrs"]
    assert [seen["oif"], 4, P2P_LOCAL, f"{P2P_PEER}/32"] in oracle["addrs"]
    assert [seen["oif"], 4, P2P_LOCAL, f"{P2P_LOCAL}/32"] in oracle["addrs"]


def test_ipsets_created_by_our_encoder_as_pyroute2_reads_them(seen: dict[str, Any]) -> None:
    for family, entries, gone in ((4, ENTRIES4, GONE4), (6, ENTRIES6, GONE6)):
        head = seen["pyroute2"]["ipsets"][str(family)]
        assert (head["type"], head["family"]) == ("hash:ip", socket.AF_INET if family == 4
                                                  else socket.AF_INET6)  # fmt: skip
        assert (head["timeout"], head["maxelem"]) == (SET_TIMEOUT, MAXELEM)
        assert seen["ours"]["ipsets"][str(family)] == [head["type"], head["family"], True]
        want = {a: t for a, t in entries.items() if a != gone}
        got = head["entries"]
        assert set(got) == set(want), family
        for address, timeout in want.items():
            assert timeout - 5 <= got[address] <= timeout, (address, got[address])


def test_nftables_elements_as_pyroute2_reads_them(seen: dict[str, Any]) -> None:
    for family, entries, gone in ((4, ENTRIES4, GONE4), (6, ENTRIES6, GONE6)):
        got = seen["pyroute2"]["nft"][str(family)]
        want = {a: t * 1000 for a, t in entries.items() if a != gone}
        assert got == want, family  # NFTA_SET_ELEM_TIMEOUT: the timeout given, in ms


def test_create_with_a_set_of_that_name_there_already(olab: OracleLab) -> None:
    cases = olab.agent("create-cases")
    assert cases["same settings"] == "ok"  # EEXIST, then inspect: usable
    assert cases["other timeout and maxelem"] == "ok"  # EEXIST, then usable: kept as it is
    assert cases["other timeout and maxelem header"] == ["hash:ip", 2, 60, 1024]
    assert "exists as hash:net family 2 with timeout" in cases["hash:net"]
    assert "without timeout support" in cases["no timeout"]
    assert "exists as hash:ip family 2" in cases["inet for inet6"]
    assert cases["fresh header"] == ["hash:ip", 10, 5, 65536]


# -- the agent, inside the namespace ------------------------------------------------------------


def _config() -> Any:
    from resolver.config import parse_config

    breakout = {
        "mode": "kernel", "interface": "wan0", "gateway4": GW4, "gateway6": GW6,
        "table": TABLE, "rule_priority": PRIORITY, "route_protocol": PROTOCOL,
        "ipset4": "m365-v4", "ipset6": "m365-v6", "nftset4": "inet filter m365v4",
        "nftset6": "inet filter m365v6", "min_hold": 300, "grace": 30,
    }  # fmt: skip
    return parse_config({"upstreams": ["192.0.2.53"], "breakout": breakout}).breakout


async def _settle(submit: Any, *args: Any) -> list[int]:
    done: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
    submit(*args, done.set_result)
    return await done


async def _program() -> dict[str, Any]:
    from resolver.net import ipsets
    from resolver.net.kernel import Kernel
    from resolver.net.links import NetView
    from resolver.net.routes import NextHop, RuleSpec

    def item(address: str, n: int) -> tuple[int, bytes, int]:
        family = 6 if ":" in address else 4
        return family, socket.inet_pton(socket.AF_INET6 if family == 6 else socket.AF_INET,
                                        address), n  # fmt: skip

    oif = socket.if_nametoindex("wan0")
    k = Kernel(_config())
    await k.open(asyncio.get_running_loop())  # creates the missing ipsets: ipsets.create
    codes: dict[str, Any] = {}
    try:
        k.set_next_hops({4: NextHop(oif, GW4), 6: NextHop(oif, GW6)})
        adds = [item(a, 32) for a in HOSTS4] + [item(a, 128) for a in HOSTS6]
        adds.append(item(PREFIX4[0], PREFIX4[1]))
        codes["add_routes"] = await _settle(k.add_routes, adds)
        codes["del_routes"] = await _settle(k.del_routes, [item(HOSTS4[2], 32), item(FOREIGN4, 32)])
        codes["probe4"] = await _settle(k.probe_table, PROBE4, 4, NextHop(oif, GW4))
        codes["probe6"] = await _settle(k.probe_table, PROBE6, 6, None)
        codes["rules_changed"] = await k.change_rules(
            [RuleSpec(PRIORITY, TABLE, PROTOCOL), RuleSpec(PRIORITY + 1, TABLE + 1, PROTOCOL,
                                                           FWMARK)], []
        )  # fmt: skip
        entries = [item(a, t) for a, t in ENTRIES4.items()] + [
            item(a, t) for a, t in ENTRIES6.items()
        ]
        codes["add_entries"] = await _settle(k.add_entries, entries)
        codes["del_entries"] = await _settle(k.del_entries, [item(GONE4, 0), item(GONE6, 0)])
        ours: dict[str, Any] = {"routes": {}}
        for table in (TABLE, PROBE4, PROBE6):
            found = await k.dump_routes(table)
            ours["routes"][str(table)] = [
                {"family": r.family, "dst": r.dst, "dst_len": r.dst_len, "table": r.table,
                 "protocol": r.protocol, "scope": r.scope, "type": r.type, "oif": r.oif,
                 "gateway": r.gateway}
                for r in found
            ]  # fmt: skip
        ours["rules"] = [
            [r.family, r.priority, r.table, r.action, r.protocol, r.fwmark]
            for r in await k.dump_rules()
        ]
        assert k.rtnl is not None and k.nfnl is not None
        view = NetView()
        await view.load(k.rtnl)
        ours["links"] = [[x.index, x.name, x.up] for x in view.links.values()]
        ours["addrs"] = [[a.index, a.family, a.local, a.network] for a in view.addrs]
        ours["ipsets"] = {}
        for family in (4, 6):
            reply = await k.nfnl.request(*ipsets.list_header_request(f"m365-v{family}", family))
            head = ipsets.parse_header(reply[0])
            ours["ipsets"][str(family)] = [head.kind, head.family, head.timeout]
    finally:
        k.close()
    return {"oif": oif, "codes": codes, "ours": ours}


def _pyroute2_view() -> dict[str, Any]:
    """Everything read back by pyroute2, in the shape of our own view."""
    from pyroute2 import IPRoute, IPSet

    out: dict[str, Any] = {"routes": {}, "ipsets": {}, "nft": {}}
    fam = {socket.AF_INET: 4, socket.AF_INET6: 6}
    with IPRoute() as ipr:
        for table in (TABLE, PROBE4, PROBE6):
            rows = []
            for family in (socket.AF_INET, socket.AF_INET6):
                for m in ipr.get_routes(family=family, table=table):
                    if (m.get_attr("RTA_TABLE") or m["table"]) != table:
                        continue
                    rows.append({
                        "family": fam[m["family"]],
                        "dst": m.get_attr("RTA_DST") or ("0.0.0.0" if m["family"] == 2 else "::"),
                        "dst_len": m["dst_len"], "table": m.get_attr("RTA_TABLE"),
                        "protocol": m["proto"], "scope": m["scope"], "type": m["type"],
                        "oif": m.get_attr("RTA_OIF"), "gateway": m.get_attr("RTA_GATEWAY"),
                        "priority": m.get_attr("RTA_PRIORITY"),
                    })  # fmt: skip
            out["routes"][str(table)] = rows
        out["rules"], out["fwmask"] = [], []
        for family in (socket.AF_INET, socket.AF_INET6):
            for m in ipr.get_rules(family=family):
                out["rules"].append([
                    fam[m["family"]], m.get_attr("FRA_PRIORITY") or 0,
                    m.get_attr("FRA_TABLE") or m["table"], m["action"],
                    m.get_attr("FRA_PROTOCOL") or 0, m.get_attr("FRA_FWMARK"),
                ])  # fmt: skip
                if m.get_attr("FRA_PROTOCOL") == PROTOCOL and m.get_attr("FRA_FWMARK"):
                    out["fwmask"].append(m.get_attr("FRA_FWMASK"))
        out["links"] = [
            [m["index"], m.get_attr("IFLA_IFNAME"), bool(m["flags"] & 1 and m["flags"] & 0x40)]
            for m in ipr.get_links()
        ]
        import ipaddress

        out["addrs"] = []
        for m in ipr.get_addr():
            local = m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS")
            peer = m.get_attr("IFA_ADDRESS") or local
            net = ipaddress.ip_network(f"{peer}/{m['prefixlen']}", strict=False)
            out["addrs"].append([m["index"], fam[m["family"]], local, str(net)])
            if peer != local:
                host = str(ipaddress.ip_network(local))
                out["addrs"].append([m["index"], fam[m["family"]], local, host])
    with IPSet() as ips:
        for version in (4, 6):
            (m,) = ips.list(f"m365-v{version}")
            data = m.get_attr("IPSET_ATTR_DATA")
            entries = {}
            adt = m.get_attr("IPSET_ATTR_ADT")
            for entry in adt.get_attrs("IPSET_ATTR_DATA") if adt else []:
                ip = entry.get_attr("IPSET_ATTR_IP_FROM")
                key = "IPSET_ATTR_IPADDR_IPV4" if version == 4 else "IPSET_ATTR_IPADDR_IPV6"
                entries[ip.get_attr(key)] = entry.get_attr("IPSET_ATTR_TIMEOUT")
            out["ipsets"][str(version)] = {
                "type": m.get_attr("IPSET_ATTR_TYPENAME"),
                "family": m.get_attr("IPSET_ATTR_FAMILY"),
                "timeout": data.get_attr("IPSET_ATTR_TIMEOUT"),
                "maxelem": data.get_attr("IPSET_ATTR_MAXELEM"),
                "entries": entries,
            }
    out["nft"] = asyncio.new_event_loop().run_until_complete(_nft_elements())
    return out


async def _nft_elements() -> dict[str, dict[str, int]]:
    from pyroute2.netlink.nfnetlink.nftsocket import NFT_MSG_GETSETELEM, nft_set_elem_list_msg
    from pyroute2.nftables.main import AsyncNFTables

    out: dict[str, dict[str, int]] = {}
    async with AsyncNFTables(nfgen_family=1) as nft:  # NFPROTO_INET
        for family in (4, 6):
            msg = nft_set_elem_list_msg()
            msg["attrs"] = [["NFTA_SET_ELEM_LIST_TABLE", "filter"],
                            ["NFTA_SET_ELEM_LIST_SET", f"m365v{family}"]]  # fmt: skip
            found: dict[str, int] = {}
            async for reply in await nft.request_get(msg, NFT_MSG_GETSETELEM):
                for elem in reply.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS") or []:
                    value = elem.get_attr("NFTA_SET_ELEM_KEY").get_attr("NFTA_DATA_VALUE")
                    af = socket.AF_INET if family == 4 else socket.AF_INET6
                    found[socket.inet_ntop(af, value)] = elem.get_attr("NFTA_SET_ELEM_TIMEOUT")
            out[str(family)] = found
    return out


async def _create_cases() -> dict[str, Any]:
    from resolver.net import ipsets, netlink
    from resolver.net.errors import BreakoutError

    def shell(*cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True)

    ch = netlink.Channel(netlink.NETLINK_NETFILTER)
    ch.attach(asyncio.get_running_loop())
    out: dict[str, Any] = {}

    async def attempt(case: str, name: str, family: int, timeout: int, maxelem: int) -> None:
        try:
            await ipsets.create(ch, name, family, timeout, maxelem)
        except BreakoutError as err:
            out[case] = str(err)
        else:
            out[case] = "ok"

    try:
        shell("ipset", "create", "same", "hash:ip", "timeout", "330", "maxelem", "65536")
        await attempt("same settings", "same", 4, 330, 65536)
        shell("ipset", "create", "other", "hash:ip", "timeout", "60", "maxelem", "1024")
        await attempt("other timeout and maxelem", "other", 4, 330, 65536)
        shell("ipset", "create", "net", "hash:net", "timeout", "60")
        await attempt("hash:net", "net", 4, 330, 65536)
        shell("ipset", "create", "plain", "hash:ip")
        await attempt("no timeout", "plain", 4, 330, 65536)
        # The same settings in the other family: the kernel's -exist would take it.
        shell("ipset", "create", "v4", "hash:ip", "timeout", "330", "maxelem", "65536")
        await attempt("inet for inet6", "v4", 6, 330, 65536)
        await attempt("fresh", "fresh6", 6, 5, 65536)
    finally:
        ch.close()
    return out


def _ipset_headers(out: dict[str, Any]) -> None:
    """The headers of the sets `_create_cases` made or found, read by pyroute2."""
    from pyroute2 import IPSet

    with IPSet() as ips:
        for case, name in (("other timeout and maxelem header", "other"),
                           ("fresh header", "fresh6")):  # fmt: skip
            (m,) = ips.list(name)
            data = m.get_attr("IPSET_ATTR_DATA")
            out[case] = [
                m.get_attr("IPSET_ATTR_TYPENAME"),
                m.get_attr("IPSET_ATTR_FAMILY"),
                data.get_attr("IPSET_ATTR_TIMEOUT"),
                data.get_attr("IPSET_ATTR_MAXELEM"),
            ]


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("program", "create-cases"):
        print("usage: python -m tests.netns.test_kernel_oracle program|create-cases NETNS",
              file=sys.stderr)  # fmt: skip
        return 2
    if not inside(argv[1]):
        print(f"not inside network namespace {argv[1]}: refusing", file=sys.stderr)
        return 2
    if argv[0] == "program":
        result = asyncio.run(_program())
        result["pyroute2"] = _pyroute2_view()
    else:
        result = asyncio.run(_create_cases())
        _ipset_headers(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
