"""NEW_INSTANCE events → a queue → worker threads that run the pipeline.

Why not ``OnStoredInstance``: with orthanc-python 4.0 (Debian's), the plugin
keeps the GIL inside Orthanc API calls, so a worker calling the REST API while
a stored-instance callback is registered deadlocks the server. The change
callback only puts the instance id in this queue and returns at once, so
ingest never waits for inference. During a burst of arrivals the workers also
hold back (ingest_pace.py), so inference does not slow the burst down.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable

from ..status import PluginStatus
from .ingest_pace import IngestPace
from .instance_guards import EchoGuard

log = logging.getLogger(__name__)

_STOP = object()


class PredictionQueue:
    def __init__(
        self,
        process: Callable[[str], object],
        echoes: EchoGuard,
        status: PluginStatus,
        workers: int,
        capacity: int,
        niceness: int = 0,
        pace: IngestPace | None = None,
    ) -> None:
        self._process = process
        self._echoes = echoes
        self._status = status
        self._worker_count = workers
        self._niceness = niceness
        self._pace = pace or IngestPace(burst_per_second=0, max_delay_seconds=0)
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)  # (instance id, time queued) or _STOP
        self._pending: set[str] = set()
        self._in_progress = 0
        self._holding_back = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def on_new_instance(self, instance_id: str, enqueue: bool = True) -> None:
        """Called from Orthanc's change callback: must return immediately.

        The echo of our own re-store is consumed even when automatic prediction
        is off (a Predict request also re-stores).
        """
        if self._echoes.consume(instance_id):
            self._status.record_echo()
            return
        self._pace.record_arrival()
        if enqueue:
            self.submit(instance_id)

    def submit(self, instance_id: str) -> bool:
        with self._lock:
            if instance_id in self._pending:
                return False  # already waiting; one run will see the latest file
            try:
                self._queue.put_nowait((instance_id, self._pace.now()))
            except queue.Full:
                self._status.record_dropped()
                log.error("Prediction queue full (%d): instance %s not queued", self._queue.maxsize, instance_id)
                return False
            self._pending.add(instance_id)
            return True

    def start(self) -> None:
        self._stopping.clear()
        for number in range(self._worker_count):
            thread = threading.Thread(target=self._work, name=f"orthanc-ai-worker-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("%d prediction worker(s) started", self._worker_count)

    def stop(self, timeout: float = 10.0) -> None:
        """Let each worker finish its current instance, then end; the rest of the queue is dropped, and so is
        an instance a worker was holding back for ingest."""
        self._stopping.set()
        self.discard_pending()
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("%s still busy after %.0f s at shutdown", thread.name, timeout)
        self._threads.clear()

    def discard_pending(self) -> int:
        dropped = 0
        with self._lock:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    dropped += 1
            self._pending.clear()
        if dropped:
            log.warning("%d queued instance(s) left unprocessed at shutdown", dropped)
        return dropped

    @property
    def length(self) -> int:
        with self._lock:
            return len(self._pending)

    @property
    def in_progress(self) -> int:
        with self._lock:
            return self._in_progress

    @property
    def holding_back(self) -> int:
        """Instances taken by a worker that waits for a burst of arrivals to end (counted in in_progress)."""
        with self._lock:
            return self._holding_back

    def _work(self) -> None:
        _lower_priority(self._niceness)
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            instance_id, queued_at = item
            with self._lock:
                self._pending.discard(instance_id)
                self._in_progress += 1
            try:
                if self._hold_back_during_ingest(queued_at):
                    self._process(instance_id)
            except Exception:  # the pipeline records its own failures; this is the last net
                log.exception("Worker failed on instance %s", instance_id)
            finally:
                with self._lock:
                    self._in_progress -= 1

    def _hold_back_during_ingest(self, queued_at: float) -> bool:
        """Wait while a burst of arrivals lasts (at most the pace's maximum delay); False if stopping."""
        pause = self._pace.hold_back(queued_at)
        if not pause:
            return True
        with self._lock:
            self._holding_back += 1
        try:
            while pause and not self._stopping.wait(pause):
                pause = self._pace.hold_back(queued_at)
        finally:
            with self._lock:
                self._holding_back -= 1
        return not self._stopping.is_set()


def _lower_priority(niceness: int) -> None:
    """Lower this thread's CPU priority (Linux keeps a niceness per thread)."""
    if niceness <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(os.getpriority(os.PRIO_PROCESS, thread) + niceness, 19))
    except OSError as error:
        log.debug("Worker priority unchanged: %s", error)

