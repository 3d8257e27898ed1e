"""How long the kernel took to acknowledge install batches: the status's `netlink_latency`
(percentiles of the last SAMPLES) and the metrics' totals since start."""

from __future__ import annotations

from collections import deque
from typing import Final

SAMPLES: Final = 1024


class AckLatency:
    """Seconds from a batch's send to its last ack, one per acknowledged batch."""

    __slots__ = ("count", "recent", "total")

    def __init__(self) -> None:
        self.recent: deque[float] = deque(maxlen=SAMPLES)
        self.count = 0
        self.total = 0.0

    def record(self, seconds: float) -> None:
        self.recent.append(seconds)
        self.count += 1
        self.total += seconds

    def percentiles(self) -> dict[str, float]:
        samples = sorted(self.recent)
        if not samples:
            return {"samples": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}

        def pick(q: float) -> float:
            return round(samples[min(len(samples) - 1, int(q * len(samples)))] * 1000, 3)

        return {
            "samples": len(samples),
            "p50_ms": pick(0.5),
            "p99_ms": pick(0.99),
            "max_ms": pick(1.0),
        }
