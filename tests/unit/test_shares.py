"""How the control connections and the monitors are shared among uids (UidShares)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from resolver.control.monitor import MAX_WATCHERS, Event, Filter, Refused, Watchers
from resolver.control.shares import UidShares

pytestmark = pytest.mark.unit

DAEMON_UID = 999


def connections(total: int = 32) -> UidShares:
    return UidShares(total, DAEMON_UID, "control connection", "control max_connections")


def take_all(shares: UidShares, uid: int, tries: int) -> list[str | None]:
    return [shares.take(uid) for _ in range(tries)]


def test_one_user_gets_a_quarter_of_the_connections() -> None:
    shares = connections()
    results = take_all(shares, 1000, 10)
    assert results[:8] == [None] * 8
    assert results[8:] == ["uid 1000 holds 8 control connections, the most one user may"] * 2
    assert shares.take(1001) is None  # another user still has its share
    shares.give_back(1000)
    assert shares.take(1000) is None  # a slot given back can be taken again
    assert shares.open == 9


def test_users_together_never_take_the_reserve() -> None:
    shares = connections()
    for uid in range(1000, 1004):
        take_all(shares, uid, 8)
    assert shares.open == 28
    assert shares.take(1004) == (
        "the 28 control connections open to any user are in use; "
        "the other 4 are kept for root and the daemon's user"
    )
    # Root and the daemon's user (ExecReload runs as it) take the rest, beyond a quarter.
    assert take_all(shares, 0, 3) == [None] * 3
    assert shares.take(DAEMON_UID) is None
    assert shares.take(0) == "all 32 control connections are in use"
    assert shares.take(DAEMON_UID) == "all 32 control connections are in use"
    shares.give_back(1000)
    assert shares.take(0) is None  # root takes any free slot, not only the reserve


def test_root_alone_may_use_every_connection() -> None:
    shares = connections()
    assert take_all(shares, 0, 33)[-2:] == [None, "all 32 control connections are in use"]


@pytest.mark.parametrize(
    ("total", "per_uid", "reserve"), [(1, 1, 0), (2, 1, 1), (4, 1, 1), (32, 8, 4), (100, 25, 12)]
)
def test_small_limits_keep_a_share_for_everyone(total: int, per_uid: int, reserve: int) -> None:
    shares = connections(total)
    assert (shares.per_uid, shares.reserve) == (per_uid, reserve)
    assert shares.take(1000) is None  # a user other than root can always get one


def test_connection_shares_need_a_connection() -> None:
    with pytest.raises(ValueError, match="control max_connections must be at least 1, not 0"):
        connections(0)


# --- the monitors: one member of the socket's group cannot take them all -----------------------


def test_one_user_gets_two_of_the_eight_monitors_and_root_keeps_one() -> None:
    watchers = Watchers(daemon_uid=DAEMON_UID)
    assert MAX_WATCHERS == 8
    mine = [watchers.open(Filter(), 1000) for _ in range(2)]
    with pytest.raises(Refused, match=r"^uid 1000 holds 2 monitors, the most one user may$"):
        watchers.open(Filter(), 1000)
    for uid in (1001, 1002):
        watchers.open(Filter(), uid)
        watchers.open(Filter(), uid)
    watchers.open(Filter(), 1003)  # seven: all that users other than root may hold
    with pytest.raises(
        Refused, match="the 7 monitors open to any user are in use; the other one is"
    ):
        watchers.open(Filter(), 1004)
    root = watchers.open(Filter(), 0)  # the reserve
    assert watchers.status()["watchers"] == 8
    with pytest.raises(Refused, match=r"^all 8 monitors are in use$"):
        watchers.open(Filter(), DAEMON_UID)
    watchers.close(mine[0])  # a closed monitor gives its user's share back
    watchers.close(mine[0])  # twice: counted once
    watchers.open(Filter(), 1000)
    watchers.close(root)
    with pytest.raises(Refused, match="uid 1000 holds 2"):
        watchers.open(Filter(), 1000)
    watchers.open(Filter(), DAEMON_UID)  # the daemon's user may take the reserve too


def test_limits_of_one_are_told_in_the_singular() -> None:
    one = connections(1)
    assert one.take(1000) is None
    assert one.take(0) == "the one control connection is in use"
    two = connections(2)  # a share of one for a user, one kept for root
    assert two.take(1000) is None
    assert two.take(1000) == "uid 1000 holds 1 control connection, the most one user may"
    assert two.take(1001) == (
        "the 1 control connection open to any user is in use; "
        "the other one is kept for root and the daemon's user"
    )


class _Failing:
    """A watched handler whose log level cannot be refreshed once it is watched."""

    def __init__(self) -> None:
        self.observer: Callable[[Event], None] | None = None

    def refresh_log_level(self) -> None:
        if self.observer is not None:
            raise RuntimeError("refresh failed")


def test_a_monitor_that_fails_to_open_gives_its_share_back() -> None:
    watchers = Watchers(limit=2, daemon_uid=DAEMON_UID)
    handler = _Failing()
    watchers.connect(handler)
    with pytest.raises(RuntimeError, match="refresh failed"):
        watchers.open(Filter(), 1000)
    assert watchers.status()["watchers"] == 0
    assert (watchers.shares.open, watchers.shares.held) == (0, {})
    assert handler.observer is None  # nobody is published to
