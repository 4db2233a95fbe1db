"""Ingest first: during a burst of new instances the workers wait, so the CPU and Orthanc's index go to
storing what the modalities send; they catch up when the burst ends, or after a maximum delay.

Predicting an instance costs Orthanc several times what storing it costs (inference, and the tagged copy
stored again through the same index), so on a small server the two compete and a modality's transfer
slows down (docs/benchmarks.md). A single image arriving on an idle server is never delayed: deferral
starts only at a sustained arrival rate.
"""
from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable

# The rate is measured over about the last quarter of a second (the last 5 arrivals at 20 per second, and at
# least 2): a burst is recognised after its first few instances, which are predicted while ingest goes on.
WINDOW_SECONDS = 0.25
# A burst is over after this long without an arrival: at 20 or more per second the gaps are 50 ms or less.
QUIET_GAP_SECONDS = 0.25
POLL_SECONDS = 0.1  # how often a waiting worker looks again


class IngestPace:
    """Counts new-instance arrivals and tells a worker how long to hold back an instance."""

    def __init__(self, burst_per_second: int, max_delay_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max_delay = max_delay_seconds
        self._clock = clock
        # The arrival times of the last few instances: a burst is when they came at the rate or faster, and the
        # latest within the quiet gap (still arriving).
        count = max(2, math.ceil(burst_per_second * WINDOW_SECONDS))
        self._arrivals: collections.deque[float] = collections.deque(maxlen=count)
        self._enabled = burst_per_second > 0 and max_delay_seconds > 0
        self._burst_span = (count - 1) / burst_per_second if self._enabled else 0.0  # count - 1 gaps
        self._lock = threading.Lock()

    def record_arrival(self) -> None:
        if self._enabled:
            with self._lock:
                self._arrivals.append(self._clock())

    def now(self) -> float:
        return self._clock()

    def hold_back(self, queued_at: float) -> float:
        """Seconds to wait before looking again at an instance queued at ``queued_at``; 0: process it now
        (no burst, or it has waited the maximum delay)."""
        if not self._enabled:
            return 0.0
        now = self._clock()
        left = queued_at + self._max_delay - now
        if left <= 0 or not self._in_burst(now):
            return 0.0
        return min(left, POLL_SECONDS)

    def _in_burst(self, now: float) -> bool:
        with self._lock:
            return (len(self._arrivals) == self._arrivals.maxlen
                    and self._arrivals[-1] - self._arrivals[0] <= self._burst_span
                    and self._arrivals[-1] > now - QUIET_GAP_SECONDS)
