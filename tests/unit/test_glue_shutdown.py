"""A request that reaches the plugin while Orthanc stops (its HTTP server still runs while the plugin
handles ORTHANC_STOPPED) gets 503, not a Python traceback on Orthanc's HTTP thread. The window is too
short to hit from outside, so the glue runs here with the ``orthanc`` module mocked."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest


def test_a_route_answers_while_the_plugin_runs(glue):
    assert glue._handled(lambda service: (200, {"service": service})) == (200, {"service": None})


def test_a_request_after_the_routes_threads_stopped_gets_503(glue, monkeypatch: pytest.MonkeyPatch):
    stopped = ThreadPoolExecutor(max_workers=1)
    stopped.shutdown()
    monkeypatch.setattr(glue, "_REST_THREADS", stopped)
    assert glue._handled(lambda service: (200, {})) == (503, {"error": "Orthanc is stopping"})


def test_a_request_queued_behind_busy_threads_at_shutdown_gets_503(glue, monkeypatch: pytest.MonkeyPatch):
    pool = ThreadPoolExecutor(max_workers=1)
    monkeypatch.setattr(glue, "_REST_THREADS", pool)
    release = threading.Event()
    busy = pool.submit(release.wait, 5)
    answers: list[tuple[int, dict]] = []
    waiting = threading.Thread(target=lambda: answers.append(glue._handled(lambda service: (200, {}))))
    waiting.start()
    while pool._work_queue.qsize() == 0:  # the request is queued behind the busy thread
        threading.Event().wait(0.01)
    stopping = threading.Thread(target=pool.shutdown, kwargs={"wait": True, "cancel_futures": True})
    stopping.start()
    waiting.join(5)
    release.set()
    stopping.join(5)
    assert busy.result() is True
    assert answers == [(503, {"error": "Orthanc is stopping"})]
