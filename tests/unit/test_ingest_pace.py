"""Ingest first: during a burst of arrivals the workers hold instances back, at most the maximum delay."""
from __future__ import annotations

import threading
import time

from orthanc_ai.events.ingest_pace import POLL_SECONDS, QUIET_GAP_SECONDS, WINDOW_SECONDS, IngestPace
from orthanc_ai.events.instance_guards import EchoGuard
from orthanc_ai.events.work_queue import PredictionQueue
from orthanc_ai.status import PluginStatus


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def arrivals(pace: IngestPace, clock: FakeClock, count: int, per_second: float) -> None:
    for _ in range(count):
        pace.record_arrival()
        clock.now += 1 / per_second


def test_a_single_image_on_an_idle_server_is_never_held_back():
    clock = FakeClock()
    pace = IngestPace(burst_per_second=20, max_delay_seconds=10, clock=clock)
    pace.record_arrival()
    assert pace.hold_back(queued_at=clock.now) == 0


def test_a_low_threshold_still_needs_two_arrivals_at_that_rate():
    clock = FakeClock()
    pace = IngestPace(burst_per_second=2, max_delay_seconds=10, clock=clock)
    pace.record_arrival()
    assert pace.hold_back(queued_at=clock.now) == 0
    clock.now += 0.1
    pace.record_arrival()  # 2 within a second: 10 per second
    assert pace.hold_back(queued_at=clock.now) == POLL_SECONDS


def test_arrivals_slower_than_the_threshold_are_not_a_burst():
    clock = FakeClock()
    pace = IngestPace(burst_per_second=20, max_delay_seconds=10, clock=clock)
    arrivals(pace, clock, 100, per_second=15)
    assert pace.hold_back(queued_at=clock.now) == 0


def test_a_burst_holds_back_until_it_ends():
    clock = FakeClock()
    pace = IngestPace(burst_per_second=20, max_delay_seconds=10, clock=clock)
    arrivals(pace, clock, 50, per_second=100)
    queued_at = clock.now
    assert pace.hold_back(queued_at) == POLL_SECONDS
    clock.now += QUIET_GAP_SECONDS - 0.05  # a gap shorter than the quiet gap: still the same burst
    assert pace.hold_back(queued_at) == POLL_SECONDS
    clock.now += 0.1  # no arrival for longer than the quiet gap: the burst is over
    assert pace.hold_back(queued_at) == 0


def test_no_instance_waits_longer_than_the_maximum_delay_during_endless_ingest():
    clock = FakeClock()
    pace = IngestPace(burst_per_second=20, max_delay_seconds=2, clock=clock)
    queued_at = clock.now
    arrivals(pace, clock, 190, per_second=100)  # 1.9 s of burst
    assert 0 < pace.hold_back(queued_at) <= POLL_SECONDS
    arrivals(pace, clock, 20, per_second=100)  # 2.1 s: still a burst, but the instance has waited 2 s
    assert pace.hold_back(queued_at) == 0


def test_zero_turns_it_off():
    for pace in (IngestPace(0, 10), IngestPace(20, 0)):
        for _ in range(100):
            pace.record_arrival()
        assert pace.hold_back(queued_at=pace.now()) == 0


def test_workers_hold_back_during_a_burst_then_process_everything():
    processed: list[tuple[str, float]] = []
    pace = IngestPace(burst_per_second=20, max_delay_seconds=10)
    work_queue = PredictionQueue(lambda i: processed.append((i, time.monotonic())), EchoGuard(), PluginStatus(),
                                 workers=2, capacity=1000, pace=pace)
    work_queue.start()
    try:
        for number in range(60):  # 60 arrivals in about 0.3 s
            work_queue.on_new_instance(str(number))
            time.sleep(0.005)
        burst_end = time.monotonic()
        assert work_queue.holding_back > 0
        # The burst is known from its 5th arrival on (20 per second over the window): those before went through.
        assert len(processed) <= 20 * WINDOW_SECONDS, f"{len(processed)} instances predicted during the burst"
        deadline = time.monotonic() + 10
        while len(processed) < 60 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        work_queue.stop(timeout=5)
    assert sorted(int(i) for i, _ in processed) == list(range(60))
    held = [t - burst_end for _, t in processed if t > burst_end]
    assert len(held) >= 40
    assert QUIET_GAP_SECONDS - 0.05 < min(held) < 1.5, f"the held-back instances went on {min(held):.2f} s after"


def test_stopping_releases_a_worker_that_holds_back_and_drops_its_instance():
    processed: list[str] = []
    pace = IngestPace(burst_per_second=5, max_delay_seconds=60)
    work_queue = PredictionQueue(processed.append, EchoGuard(), PluginStatus(), workers=1, capacity=100, pace=pace)
    work_queue.start()
    for number in range(10):
        work_queue.on_new_instance(str(number))
    deadline = time.monotonic() + 5
    while not work_queue.holding_back and time.monotonic() < deadline:
        time.sleep(0.01)
    assert work_queue.holding_back == 1
    started = time.monotonic()
    work_queue.stop(timeout=5)
    assert time.monotonic() - started < 1, "stop waited for the hold-back"
    assert processed == [] and work_queue.holding_back == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("orthanc-ai-worker")]
