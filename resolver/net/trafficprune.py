"""What of resolverd's traffic table is left over, and the transaction that deletes it.

A traffic class (a policy row and its category) gets a chain, and a counter per breakout link,
when it first appears (`traffic.setup`). A feed that renumbers its endpoint sets, a policy edit
or a link taken out of the config leaves the old ones behind, and every later setup transaction
would carry them. At each setup (start, reload, a policy update) `Accounting` keeps the classes
of the policy's rows and of the elements still held (an element's goto needs its chain), and
deletes the rest: the class chains the layout does not have, their rules with them, and the
counters of no class and link it has. A class's counts go with it: its row is no longer in the
policy and none of its addresses is held, so `status` stopped showing them already.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
from collections.abc import Callable
from typing import Final

from resolver.net import netlink, nftables, traffic
from resolver.net.netlink import Message
from resolver.net.traffic import BARE, Layout, TrafficClass

log = logging.getLogger(__name__)

CHAIN_PREFIX: Final = "c-"  # Layout.chain's: the only chains pruning deletes
Submit = Callable[[list[Message]], "asyncio.Future[list[int]]"]
_CLASS_CHAIN: Final = re.compile(r"c-r([0-9]{1,10})-(.+)")


def class_of(chain: str) -> TrafficClass | None:
    """The class whose chain `chain` is (`Layout.chain` read back), or None for a name
    resolverd does not make."""
    match = _CLASS_CHAIN.fullmatch(chain)
    if match is None:
        return None
    category = match.group(2)
    cls = TrafficClass(int(match.group(1)), None if category == "seed" else category)
    return cls if Layout.chain(cls) == chain else None


async def left_over(channel: netlink.ChannelLike, layout: Layout) -> tuple[list[str], list[str]]:
    """The class chains and the counters of `layout.table` that `layout` does not have."""
    kind, flags, body = nftables.dump_chains(layout.table)
    chains = [nftables.chain_of(reply) for reply in await channel.request(kind, flags, body)]
    kept = {layout.chain(cls) for cls in layout.classes}
    ours = [name for table, name in chains if table == layout.table]
    stale = [name for name in ours if name.startswith(CHAIN_PREFIX) and name not in kept]
    kind, flags, body = nftables.dump_counters(layout.table)
    counters = [traffic.parse_counter(reply) for reply in await channel.request(kind, flags, body)]
    unused = [c[0] for c in counters if c is not None and layout.owner(c[0]) is None]
    return sorted(stale), sorted(unused)


def prune(layout: Layout, chains: list[str], counters: list[str]) -> list[Message]:
    """One transaction deleting `chains` (and their rules, which count in the old counters),
    then `counters`."""
    t = layout.table
    return nftables.transaction(
        [nftables.destroy_chain(t, name) for name in chains]
        + [nftables.destroy_counter(t, name) for name in counters]
    )


async def read_classes(
    channel: netlink.ChannelLike,
) -> tuple[dict[bytes, TrafficClass], dict[int, list[bytes]]]:
    """The held elements' classes, read back from their chains (a restart: also a class whose
    row the policy no longer has), and per family the elements in a chain resolverd does not
    make."""
    counted: dict[bytes, TrafficClass] = {}
    foreign: dict[int, list[bytes]] = {4: [], 6: []}
    for family in (4, 6):
        for h in await traffic.read_held(channel, BARE, family):
            cls = class_of(h.chain)
            if cls is None:
                foreign[family].append(h.address)
            else:
                counted[h.address] = cls
    return counted, foreign


async def prune_table(channel: netlink.ChannelLike, submit: Submit, layout: Layout) -> None:
    """Delete what `layout` does not have (`left_over`) in one transaction; a refusal is
    logged (the next setup tries again), never raised."""
    try:
        chains, counters = await left_over(channel, layout)
        if not chains and not counters:
            return
        bad = nftables.failed(await submit(prune(layout, chains, counters)))
    except netlink.NetlinkSocketError as err:
        bad = err.code
    if bad:
        log.warning("breakout: cannot delete the traffic table's unused chains: %s",
                    errno.errorcode.get(bad, bad))  # fmt: skip
    else:
        log.info("breakout: %d chains and %d counters of unused traffic classes deleted",
                 len(chains), len(counters))  # fmt: skip
