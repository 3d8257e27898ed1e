"""Pruning the traffic table (resolver.net.trafficprune and Accounting's setup): the classes it
keeps are the policy's rows' and the held elements', and what else the kernel has goes.

The messages are decoded with pyroute2's nf_tables classes where it has one (chains); the
kernel's side is checked with real tables in tests/netns/test_traffic_prune.py.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Sequence
from typing import Any

import pytest
from pyroute2.netlink.nfnetlink.nftsocket import nft_chain_msg

from resolver.config import BreakoutConfig, LinkConfig
from resolver.net import netlink, nftables, traffic, trafficprune
from resolver.net.accounting import Accounting
from resolver.net.netlink import NLM_F_DUMP, Message, asciiz, attr, nested
from resolver.net.nftables import be32, be64
from resolver.net.traffic import Layout, TrafficClass

pytestmark = pytest.mark.unit

SEED5, OPT46, OLD7 = TrafficClass(5), TrafficClass(46, "Optimize"), TrafficClass(7, "Allow")
INET = b"\x01\x00\x00\x00"
A = socket.inet_aton("203.0.113.10")
B = socket.inet_aton("203.0.113.11")
C = socket.inet_pton(socket.AF_INET6, "2001:db8::10")
GETTABLE, GETCHAIN, GETSETELEM, GETOBJ = 0x0A01, 0x0A04, 0x0A0D, 0x0A13
DESTROYCHAIN, DESTROYSETELEM, DESTROYOBJ = 0x0A1B, 0x0A1E, 0x0A1F


def decode(cls: Any, message: Message) -> Any:
    kind, flags, body = message
    msg = cls(netlink.HEADER.pack(16 + len(body), kind, flags, 1, 0) + body)
    msg.decode()
    return msg


def chain_reply(name: str, table: str = "resolverd") -> bytes:
    return INET + attr(1, asciiz(table)) + attr(2, be64(9)) + attr(3, asciiz(name))


def counter_reply(name: str) -> bytes:
    data = nested(4, attr(1, be64(100)), attr(2, be64(1)))
    return INET + attr(1, asciiz("resolverd")) + attr(2, asciiz(name)) + attr(3, be32(1)) + data


def elements_reply(family: int, *items: tuple[bytes, str]) -> bytes:
    head = INET + attr(1, asciiz("resolverd")) + attr(2, asciiz(traffic.SETS[family]))
    return head + nested(3, *(nftables.verdict_element(a, 1000, -4, c) for a, c in items))


@pytest.mark.parametrize("cls", [SEED5, OPT46, OLD7, TrafficClass(2147483647, "Default")])
def test_a_class_is_read_back_from_its_chain(cls: TrafficClass) -> None:
    assert trafficprune.class_of(Layout.chain(cls)) == cls


@pytest.mark.parametrize(
    "chain", ["out", "held", "c-foreign", "c-r05-seed", "c-rx-seed", "c-r5-", "c-r12345678901-a"]
)
def test_a_chain_resolverd_does_not_make_has_no_class(chain: str) -> None:
    assert trafficprune.class_of(chain) is None


def test_destroy_and_dump_messages_by_oracle() -> None:
    kind, flags, body = nftables.destroy_chain("resolverd", "c-r5-seed")
    assert kind == DESTROYCHAIN and not flags & netlink.NLM_F_CREATE
    msg = decode(nft_chain_msg, (kind, flags, body))
    assert (msg.get_attr("NFTA_CHAIN_TABLE"), msg.get_attr("NFTA_CHAIN_NAME")) == (
        "resolverd", "c-r5-seed",
    )  # fmt: skip
    kind, flags, body = nftables.destroy_counter("resolverd", "r5-seed.wan0")
    assert kind == DESTROYOBJ
    assert netlink.parse_attrs(body, 4) == {
        1: b"resolverd\0", 2: b"r5-seed.wan0\0", 3: be32(nftables.NFT_OBJECT_COUNTER)
    }  # fmt: skip
    kind, flags, body = nftables.dump_chains("resolverd")
    assert (kind, flags & NLM_F_DUMP) == (GETCHAIN, NLM_F_DUMP)
    assert nftables.chain_of(chain_reply("c-r5-seed")) == ("resolverd", "c-r5-seed")


class Kernel:
    """A netfilter channel with a table's chains, counters and elements to dump; it records
    what is submitted and answers each message with `codes`' next errno (0 when none)."""

    def __init__(self, chains: Sequence[str] = (), counters: Sequence[str] = (),
                 held: dict[int, list[tuple[bytes, str]]] | None = None,
                 table: bool = True) -> None:  # fmt: skip
        self.chains, self.counters, self.held = list(chains), list(counters), held or {}
        self.table = table
        self.sent: list[list[Message]] = []
        self.codes: list[int] = []
        self.asked: list[Any] = []  # called with each request's type as it comes

    def request(
        self, kind: int, flags: int, body: bytes, keep: Any = None
    ) -> asyncio.Future[list[bytes]]:
        for hook in self.asked:
            hook(kind)
        fut: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        if kind == GETTABLE and not self.table:
            fut.set_exception(netlink.NetlinkSocketError(errno.ENOENT))
        elif kind == GETTABLE:
            fut.set_result([nftables.new_table("resolverd", traffic.comment(42))[2]])
        elif kind == GETCHAIN:  # a dump has every inet table's chains
            replies = [chain_reply(c) for c in ["out", "held", *self.chains]]
            fut.set_result([*replies, chain_reply("c-r5-seed", "someone_else")])
        elif kind == GETOBJ:
            fut.set_result([counter_reply(c) for c in self.counters])
        else:
            assert kind == GETSETELEM
            family = 6 if b"held6\0" in body else 4
            items = self.held.get(family, [])
            fut.set_result([elements_reply(family, *items)] if items else [])
        return fut

    def submit(self, messages: Sequence[Message], settled: Any, atomic: bool = False) -> None:
        self.sent.append(list(messages))
        code = self.codes.pop(0) if self.codes else 0
        settled([code] * len(messages))

    def close(self) -> None:
        pass

    def kinds(self, kind: int) -> list[list[tuple[int, str]]]:
        """Per transaction with messages of `kind`, (kind, name) of each of them."""
        out = []
        for t in self.sent:
            names = [(k, netlink.parse_attrs(b, 4)[2 if k != DESTROYCHAIN else 3].rstrip(b"\0")
                      .decode()) for k, _, b in t[1:-1] if k == kind]  # fmt: skip
            if names:
                out.append(names)
        return out


def accounting(kernel: Kernel, rows: dict[int, TrafficClass]) -> Accounting:
    cfg = BreakoutConfig(links=(LinkConfig("wan0", "192.0.2.1", None),))
    acc = Accounting(cfg, count_delay=0)
    acc.configure(cfg, rows)
    acc.nfnl = kernel
    return acc


def classes(acc: Accounting) -> list[TrafficClass]:
    assert acc.layout is not None
    return list(acc.layout.classes)


def setup(acc: Accounting) -> None:
    async def go() -> None:
        acc.loop = asyncio.get_running_loop()
        await acc._setup()

    asyncio.run(go())


def test_a_reload_keeps_the_rows_and_the_held_and_deletes_the_rest() -> None:
    kernel = Kernel(
        chains=["c-r5-seed", "c-r7-Allow", "c-r9-Allow", "c-r46-Optimize"],
        counters=["r5-seed.wan0", "r5-seed.wan9", "r7-Allow.wan0", "r9-Allow.wan0",
                  "r46-Optimize.wan0"],
    )  # fmt: skip
    acc = accounting(kernel, {5: SEED5, 46: OPT46})
    acc.counted[A] = OLD7  # held, its row gone from the policy
    setup(acc)
    assert acc.counting
    assert classes(acc) == [SEED5, OLD7, OPT46]
    assert kernel.kinds(DESTROYCHAIN) == [[(DESTROYCHAIN, "c-r9-Allow")]]
    assert kernel.kinds(DESTROYOBJ) == [
        [(DESTROYOBJ, "r5-seed.wan9"), (DESTROYOBJ, "r9-Allow.wan0")]  # a link gone, a class
    ]
    assert len(kernel.sent) == 2  # the setup, then one transaction for all that goes

    kernel.sent.clear()
    kernel.chains.remove("c-r9-Allow")
    kernel.counters[:] = ["r5-seed.wan0", "r7-Allow.wan0", "r46-Optimize.wan0"]
    setup(acc)
    assert len(kernel.sent) == 1  # nothing left over: no second transaction


def test_a_restart_adopts_the_elements_classes_and_drops_foreign_ones() -> None:
    held = {4: [(A, "c-r7-Allow"), (B, "c-foreign")], 6: [(C, "c-r5-seed")]}
    kernel = Kernel(chains=["c-r5-seed", "c-r7-Allow", "c-foreign"],
                    counters=["r5-seed.wan0", "r7-Allow.wan0"], held=held)  # fmt: skip
    acc = accounting(kernel, {5: SEED5})
    setup(acc)
    assert acc.counted == {A: OLD7, C: SEED5}
    assert classes(acc) == [SEED5, OLD7]
    gone = [t for t in kernel.sent if t[1][0] == DESTROYSETELEM]
    assert len(gone) == 1 and B in gone[0][1][2] and A not in gone[0][1][2]
    assert kernel.kinds(DESTROYCHAIN) == [[(DESTROYCHAIN, "c-foreign")]]
    assert kernel.kinds(DESTROYOBJ) == []

    # Its element released, the old class goes at the next setup.
    acc.release([(4, A)])
    kernel.sent.clear()
    setup(acc)
    assert classes(acc) == [SEED5]
    assert kernel.kinds(DESTROYCHAIN) == [[(DESTROYCHAIN, "c-foreign"), (DESTROYCHAIN,
                                            "c-r7-Allow")]]  # fmt: skip
    assert kernel.kinds(DESTROYOBJ) == [[(DESTROYOBJ, "r7-Allow.wan0")]]


def test_a_table_made_anew_forgets_the_elements_and_prunes_nothing() -> None:
    kernel = Kernel(table=False)
    acc = accounting(kernel, {5: SEED5})
    acc.counted[A] = OLD7
    setup(acc)
    assert acc.counting and acc.counted == {}
    assert classes(acc) == [SEED5]
    assert len(kernel.sent) == 1


def test_a_prune_the_kernel_refuses_is_logged_and_counting_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kernel = Kernel(chains=["c-r9-Allow"], counters=["r9-Allow.wan0"])
    kernel.codes = [0, errno.EBUSY]  # the setup applied, the prune refused
    acc = accounting(kernel, {5: SEED5})
    with caplog.at_level(logging.WARNING):
        setup(acc)
    assert acc.counting and acc.problem is None
    assert "cannot delete the traffic table's unused chains: EBUSY" in caplog.text


def test_elements_counted_during_a_reload_wait_for_their_rows_chains() -> None:
    """A reload's new rows have no chain until its setup transaction: an address counted
    meanwhile under a new row is moved there after it, and its old class (the element still
    goes to that chain until then) stays in the layout, not pruned from under it."""
    new = TrafficClass(903)
    kernel = Kernel(chains=["c-r7-Allow"], counters=["r7-Allow.wan0"])
    acc = accounting(kernel, {903: new})  # the reload's rows: 7 is gone
    acc.counted[A] = OLD7
    acc.layout, acc.counting = Layout(("wan0",), (OLD7,)), True
    counted_at: list[int] = []

    def count_once(kind: int) -> None:  # the COUNT_DELAY timer fires during the setup
        if not counted_at:
            counted_at.append(kind)
            acc.count([(4, A, 300, 903)])

    kernel.asked.append(count_once)
    setup(acc)
    first = [kind & 0xFF for kind, _, _ in kernel.sent[0][1:-1]]
    assert first[0] == 0  # NEWTABLE: the setup transaction went first
    moves = [i for i, t in enumerate(kernel.sent) if t[1][0] == DESTROYSETELEM]
    assert moves and moves[0] > 0, [t[1][0] for t in kernel.sent]
    assert classes(acc) == [OLD7, new]  # kept: its element went there until the move
    assert kernel.kinds(DESTROYCHAIN) == []
    assert acc.counted == {A: new}

    # Once moved, the next setup deletes the old class.
    kernel.sent.clear()
    kernel.asked.clear()
    setup(acc)
    assert classes(acc) == [new]
    assert kernel.kinds(DESTROYCHAIN) == [[(DESTROYCHAIN, "c-r7-Allow")]]


def test_a_release_during_a_setup_drops_the_queued_element() -> None:
    kernel = Kernel()
    acc = accounting(kernel, {5: SEED5})
    acc.layout, acc.counting = Layout(("wan0",), (SEED5,)), True

    def count_then_release(kind: int) -> None:
        if kind == GETTABLE:
            acc.count([(4, B, 300, 5)])  # queued: the setup is running
            acc.release([(4, B)])  # gone before it could be sent

    kernel.asked.append(count_then_release)
    setup(acc)
    added = [t for t in kernel.sent if t[1][0] == 0x0A0C]  # NEWSETELEM
    assert added == [] and B not in acc.counted
