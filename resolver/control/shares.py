"""How a bounded pool (control connections, monitors) is shared among the uids that use it.

Root and the daemon's own user (``ExecReload=resolverctl reload`` runs as it) may take anything
free. Any other uid holds at most a quarter of the pool, and all of them together at most the
pool less a reserve (an eighth, at least one) kept for root and the daemon's user: however many
other users hold, ``systemctl reload`` gets a connection and root gets a monitor. Root and the
daemon's user have no share of their own: either can stop the daemon anyway.

Pure: no asyncio, no sockets.
"""

from __future__ import annotations


def count(n: int, noun: str) -> str:
    """'1 monitor', '8 monitors': `noun` is singular, and its plural takes an s."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class UidShares:
    """`total` slots of `what` (a singular noun, for the messages) shared among uids."""

    def __init__(self, total: int, daemon_uid: int, what: str, setting: str = "") -> None:
        if total < 1:
            raise ValueError(f"{setting or what + 's'} must be at least 1, not {total}")
        self.total = total
        self.what = what
        self.reserve = min(total - 1, max(1, total // 8))
        self.per_uid = max(1, total // 4)
        self.trusted = frozenset({0, daemon_uid})
        self.held: dict[int, int] = {}  # uid -> slots it holds now
        self.open = 0
        self.others = 0  # slots held by uids other than the trusted ones

    def take(self, uid: int) -> str | None:
        """Count a slot of `uid` and return None; or count nothing and return which limit
        refuses it."""
        what = self.what
        if self.open >= self.total:
            if self.total == 1:
                return f"the one {what} is in use"
            return f"all {count(self.total, what)} are in use"
        held = self.held.get(uid, 0)
        if uid not in self.trusted:
            if held >= self.per_uid:
                return f"uid {uid} holds {count(held, what)}, the most one user may"
            open_to_all = self.total - self.reserve
            if self.others >= open_to_all:
                kept = "the other one is" if self.reserve == 1 else f"the other {self.reserve} are"
                are = "is" if open_to_all == 1 else "are"
                return (
                    f"the {count(open_to_all, what)} open to any user {are} in use; "
                    f"{kept} kept for root and the daemon's user"
                )
            self.others += 1
        self.held[uid] = held + 1
        self.open += 1
        return None

    def give_back(self, uid: int) -> None:
        """A slot `take` counted is free again."""
        held = self.held.pop(uid, 0) - 1
        if held > 0:
            self.held[uid] = held
        if uid not in self.trusted:
            self.others -= 1
        self.open -= 1
