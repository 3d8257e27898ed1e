"""Python's cyclic garbage collector, set for a heap that is mostly long-lived.

The cache entries and the holds are container objects that live for minutes to hours, so the
collector's full passes (generation 2) walk all of them: 155,000 tracked objects after the
benchmark's 63,000 names and 31,000 routes, 67-78 ms per pass on the benchmark machine, during
which nothing is answered and the netlink thread cannot read an ack. With CPython's defaults a
full pass comes whenever the long-lived objects have grown by a quarter and more than ten
generation-1 passes have run, which a cache filling up at a few thousand misses a second meets
every few seconds: make bench's miss runs saw ten full passes (305 ms in all, a 67 ms one among
them).

FULL_EVERY raises the second condition to that many generation-1 passes (about 700,000 new
container objects between two full passes): one full pass in the same runs. Young garbage,
cycles included, is still collected by the younger generations as before; only cycles that
lived long enough to reach generation 2 wait longer. Generations 0 and 1 keep their defaults.
"""

from __future__ import annotations

import gc

FULL_EVERY = 100  # generation-1 passes between two full passes (CPython's default: 10)


def tune() -> None:
    young, middle, _full = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_EVERY)
