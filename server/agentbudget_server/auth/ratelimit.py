"""Per-principal token buckets: ``rate`` calls a second on average, bursts of up to ``burst``.

Each key has its own bucket, and checking one touches no other, so a principal that trips its
limit never slows another. Limits are per replica: N replicas admit up to N times the rate.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_KEYS = 100_000


@dataclass
class Bucket:
    tokens: float
    at: float  # when ``tokens`` was last brought up to date


def take(bucket: Bucket, now: float, rate: float, burst: int) -> float:
    """Take one token: 0.0 if granted, else the seconds until one will be there (nothing taken)."""
    tokens = min(float(burst), bucket.tokens + max(0.0, now - bucket.at) * rate)
    bucket.at = now
    if tokens >= 1.0:
        bucket.tokens = tokens - 1.0
        return 0.0
    bucket.tokens = tokens
    return (1.0 - tokens) / rate


class RateLimiter:
    def __init__(
        self, rate: float, burst: int, max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, key: str) -> float:
        """0.0 if ``key`` may make a call now, else the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(float(self.burst), now)
            if len(self._buckets) > self.max_keys:
                # The least recently seen key: if it comes back it starts with a full burst, as it
                # would have had after waiting burst / rate seconds anyway.
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return take(bucket, now, self.rate, self.burst)
