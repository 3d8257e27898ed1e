"""The answer cache's store: entries (cache.Entry) by key, least recently used evicted first.

The bound is `max_entries` answers and `max_entries` x ENTRY_BYTES bytes of them, whichever
comes first: answers fetched over TCP after TC can be 64 KB, and a few thousand of those would
otherwise take the memory 100,000 answers are sized for (the unit's MemoryMax counts 1,232
bytes an answer, the largest a UDP client gets). Each answer is charged to the client whose
miss fetched it (its `clients.charge_key`), and a client owns at most `per_client` of them and
`per_client_bytes` of their bytes (the same `client_share` of each bound): past either, its new
answer evicts its own least recently used ones, so that a client asking for ever new names, or
for ever bigger answers over TCP, cycles its own share and not the other clients' answers
(`client_evicted`); a share is at least one answer of ENTRY_BYTES, and an answer bigger than
a share is answered and not kept. A reload that shrinks the shares trims the clients past
theirs before the LRU bound takes anyone's.

A share is a list linked through its entries (`Entry.older`, `Entry.newer`): its least
recently used is found, moved and unlinked in O(1), for 16 bytes an entry. A dict keyed by
entry would cost three times that, and its oldest key is found past every key deleted before
it (3 us an eviction at 12,500 answers a share).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from resolver.dns.cache import ENTRY_BYTES, Entry


class _Share:
    """What a client is charged for: its entries, least recently used first while the cache is
    shared (else a hit does not pay for their order), how many, and their bytes. Its entries
    all hold its `owner` key object: one per client, not one each (48 bytes an answer)."""

    __slots__ = ("count", "newest", "oldest", "owner", "size")

    def __init__(self, owner: bytes) -> None:
        self.owner = owner
        self.count = 0
        self.size = 0
        self.oldest: Entry | None = None
        self.newest: Entry | None = None

    def add(self, entry: Entry) -> None:
        """`entry` joins as the most recently used."""
        newest = self.newest
        entry.older, entry.newer = newest, None
        if newest is None:
            self.oldest = entry
        else:
            newest.newer = entry
        self.newest = entry
        self.count += 1
        self.size += len(entry.wire)

    def remove(self, entry: Entry) -> None:
        older, newer = entry.older, entry.newer
        if older is None:
            self.oldest = newer
        else:
            older.newer = newer
        if newer is None:
            self.newest = older
        else:
            newer.older = older
        entry.older = entry.newer = None
        self.count -= 1
        self.size -= len(entry.wire)


class Cache:
    """Entries by key (folded name, type, class, DO, CD), least recently used evicted first
    when there are more than `max_entries` of them or their answers take more than
    `max_bytes`; a client's own first when it holds `per_client` of them or `per_client_bytes`
    (see the module docstring)."""

    def __init__(self, max_entries: int, client_share: float = 1.0) -> None:
        self.bytes = 0  # the answers' bytes (Entry.wire) held
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._owned: dict[bytes, _Share] = {}  # by owner
        self.evicted = 0
        self.client_evicted = 0
        self._bound(max_entries, client_share)

    def _bound(self, max_entries: int, client_share: float) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_entries * ENTRY_BYTES
        self.per_client = max(1, int(max_entries * client_share))
        self.shared = self.per_client < max_entries  # False: one client may fill it all
        # At least per_client answers of the largest size a UDP client gets.
        share_bytes = max(int(self.max_bytes * client_share), self.per_client * ENTRY_BYTES)
        self.per_client_bytes = share_bytes if self.shared else self.max_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def owned(self, owner: bytes) -> int:
        """How many entries `owner` is charged for."""
        share = self._owned.get(owner)
        return 0 if share is None else share.count

    def owned_bytes(self, owner: bytes) -> int:
        """The bytes of the answers `owner` is charged for."""
        share = self._owned.get(owner)
        return 0 if share is None else share.size

    def get(self, key: bytes, now: float) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.stored + entry.ttl:
            del self._entries[key]
            self._forget(entry)
            return None
        self._entries.move_to_end(key)
        owner = entry.owner
        if owner and self.shared and entry.newer is not None:  # its client's order too
            share = self._owned[owner]
            share.remove(entry)
            share.add(entry)
        return entry

    def put(self, entry: Entry) -> None:
        entries = self._entries
        old = entries.get(entry.key)
        if old is entry:
            return
        if old is not None:
            del entries[entry.key]
            self._forget(old)
        size = len(entry.wire)
        owner = entry.owner
        if size > (self.per_client_bytes if owner else self.max_bytes):
            return  # not kept (nor killed: the caller still answers from it)
        if owner:
            if self.shared:  # a share of it all: the client's own least recently used go
                self._trim(owner, self.per_client - 1, self.per_client_bytes - size)
            share = self._owned.get(owner)
            if share is None:
                share = self._owned[owner] = _Share(owner)
            entry.owner = share.owner
            share.add(entry)
        entries[entry.key] = entry
        self.bytes += size
        self._shrink()

    def drop(self, entry: Entry) -> None:
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
            self._forget(entry)
        entry.kill()

    def resize(self, max_entries: int, client_share: float = 1.0) -> None:
        self._bound(max_entries, client_share)
        if self.shared:  # first: the clients past their share make room, not the others
            for owner in list(self._owned):
                self._trim(owner, self.per_client, self.per_client_bytes)
        self._shrink()

    def _trim(self, owner: bytes, count: int, size: int) -> None:
        """Evict `owner`'s least recently used until it holds at most `count` entries of at
        most `size` bytes."""
        share = self._owned.get(owner)
        while share is not None and (share.count > count or share.size > size):
            oldest = share.oldest
            if oldest is None:  # never: count > 0
                break
            self._evict(oldest)
            self.client_evicted += 1
            share = self._owned.get(owner)  # gone with its last entry

    def _shrink(self) -> None:
        entries = self._entries
        while len(entries) > self.max_entries or self.bytes > self.max_bytes:
            _key, old = entries.popitem(last=False)
            self._forget(old)
            self.evicted += 1

    def _evict(self, entry: Entry) -> None:
        del self._entries[entry.key]
        self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        """`entry` has left `_entries`: its bytes and its owner's charge go with it."""
        self.bytes -= len(entry.wire)
        owner = entry.owner
        if owner:
            share = self._owned[owner]
            share.remove(entry)
            if not share.count:
                del self._owned[owner]
        entry.kill()

    def clear(self) -> None:
        for entry in self._entries.values():
            entry.older = entry.newer = None
            entry.kill()
        self._entries.clear()
        self._owned.clear()
        self.bytes = 0
