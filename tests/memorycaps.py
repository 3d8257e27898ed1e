"""The daemon's memory with the shipped caps filled: cache.max_entries (100,000) answers,
breakout.max_entries (50,000) holds of holds.MAX_NAMES (16) names each, and the budgets' two
tables of ratelimit.DEFAULT_MAX_CLIENTS (16,384) clients, in bytes of RSS.

Measured, not assumed: tests/bench/test_memory_caps.py fills the caps in a fresh process with
objects the daemon's own code builds (resolver.dns.cache entries from upstream wire answers,
resolver.net.ledger holds) and fails when a total exceeds its figure here. The unit's
MemoryHigh and MemoryMax (systemd/resolverd.service; tests/unit/test_systemd_unit.py) sit above
these figures.
"""

from __future__ import annotations

MiB = 1024 * 1024

# Microsoft 365 answers (a CNAME chain to its addresses, about 300 bytes) and 16 names of 30
# characters on every hold: what MemoryHigh must stay above. Measured 241 MiB (interpreted)
# and 242 MiB (compiled) on 2026-12-07; 222 before, when the answers' tags were left out; 244
# MiB in both once each answer was charged to its client (cache.client_share: the list of a
# client's answers runs through them, 16 bytes an answer); 247 (interpreted) and 246
# (compiled) once the budgets' tables were counted (4-5 MiB), at 16,384 clients.
AT_THE_CAPS = 252 * MiB
# The largest UDP answers (1,232 bytes) and 16 names of 100 characters on every hold: what
# MemoryMax must stay above. That is the unit's design, and this its figure from before the
# tags were counted. Measured on 2026-12-07: 479 MiB (interpreted) and 529 MiB (compiled),
# past MemoryMax (384M): the bench fails until the memory, the unit or the caps change (a
# steering question, issue 20's note of stop 31). 485 and 532 MiB with the budgets' tables.
AT_THE_CAPS_HOSTILE = 366 * MiB
