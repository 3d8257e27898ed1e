"""The traffic table does not keep what the policy and the held addresses no longer need, with
the real daemon and the kernel's own listing (`nft list table inet resolverd`).

A policy of two rows (901, 902) is replaced by one of two others (903, 904) that still matches
the held name: after the reload the left-over class without an element (902) has neither chain
nor counter, and the one whose element is still held (901) keeps both, through a kill -9 and a
restart too. Once the element is gone (`resolverctl flush`), the next reload deletes 901's
chain and counter, even when an element of 901 whose address no hold keeps survived a restart.
An element that goes to a chain resolverd does not make is deleted at start, and its chain
with it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

from tests.netns.lab import Lab, wait_for
from tests.netns.scenario import Daemon, config, query

pytestmark = pytest.mark.netns

NAME = "portal.office.com"  # in the scenario's zone


def policy(first: int, second: int) -> str:
    return f"""version: "prune-{first}"
rules:
  - row: {first}
    purpose: the held name
    required: true
    domains: [{NAME}]
    ports: [tcp/443]
  - row: {second}
    purpose: nothing is held through it
    required: true
    domains: ["*.office365.com"]
    ports: [tcp/443]
"""


@pytest.fixture
def daemon(tmp_path: os.PathLike[str]) -> Iterator[Daemon]:
    tmp = str(tmp_path)
    with Lab("tp") as lab:
        text = config(tmp, policy="builtin: none\n  files: [rows.yaml]", hold=(300, 0))
        write_policy(tmp, 901, 902)
        d = Daemon(lab, tmp, text=text)
        try:
            d.start()
            yield d
        finally:
            d.stop()
            lab.python(lab.router, "-m", "resolver.daemon", "--cleanup", "--config", d.cfg,
                       check=False)  # fmt: skip


def write_policy(tmp: str, first: int, second: int) -> None:
    with open(os.path.join(tmp, "rows.yaml"), "w") as fh:
        fh.write(policy(first, second))


def table(d: Daemon) -> tuple[set[str], set[str]]:
    """The class chains and the counters in the kernel's table."""
    out = d.lab.run(d.lab.router, "nft", "list", "table", "inet", "resolverd").stdout
    return set(re.findall(r"chain (c-\S+) \{", out)), set(re.findall(r"counter (\S+) \{", out))


def rows(d: Daemon) -> set[int]:
    return {t["row"] for t in d.status()["traffic"]}


def held(d: Daemon) -> str:
    return d.lab.run(d.lab.router, "nft", "list", "map", "inet", "resolverd", "held4").stdout


def test_classes_no_row_and_no_element_needs_are_deleted(daemon: Daemon) -> None:
    d = daemon
    assert table(d) == ({"c-r901-seed", "c-r902-seed"}, {"r901-seed.wan0", "r902-seed.wan0"})
    address = next(v for _, t, v, _ in query(d.lab, NAME, "A")["answer"] if t == "A")
    assert wait_for(lambda: address in held(d), 3), held(d)
    assert "goto c-r901-seed" in held(d)

    # New rows for the same names: 902 has no element and goes; 901's element is still held.
    write_policy(d.tmp, 903, 904)
    d.ctl("reload")
    kept = ({"c-r901-seed", "c-r903-seed", "c-r904-seed"},
            {"r901-seed.wan0", "r903-seed.wan0", "r904-seed.wan0"})  # fmt: skip
    assert table(d) == kept
    assert rows(d) == {901, 903, 904}

    # A restart adopts the element's class from its chain; a foreign element and chain go.
    lab = d.lab
    lab.run(lab.router, "nft", "add", "chain", "inet", "resolverd", "c-foreign")
    lab.run(lab.router, "nft", "add", "element", "inet", "resolverd", "held4",
            "{ 198.51.100.7 : goto c-foreign }")  # fmt: skip
    d.kill()
    d.start()
    assert table(d) == kept, d.log()
    assert "198.51.100.7" not in held(d)
    assert "goto c-r901-seed" in held(d)
    assert rows(d) == {901, 903, 904}

    # Its element gone, the next reload deletes 901's chain and counter. An element of 901's
    # class that survived a restart with no hold for its address goes at start, and does not
    # keep the class.
    d.ctl("flush")
    assert wait_for(lambda: address not in held(d), 3), held(d)
    lab.run(lab.router, "nft", "add", "element", "inet", "resolverd", "held4",
            "{ 198.51.100.8 : goto c-r901-seed }")  # fmt: skip
    d.kill()
    d.start()
    assert "198.51.100.8" not in held(d)
    assert "deleted 1 counters' elements no hold keeps" in d.log()
    d.ctl("reload")
    assert table(d) == ({"c-r903-seed", "c-r904-seed"}, {"r903-seed.wan0", "r904-seed.wan0"})
    assert rows(d) == {903, 904}
    assert "cannot delete" not in d.log()
