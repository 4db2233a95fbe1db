"""A daemon thread that runs until Orthanc stops (the forwarder and the change-log replay use it)."""
from __future__ import annotations

import threading


class BackgroundTask:
    """Subclasses implement ``_run`` and leave it when ``self._stop`` is set."""

    thread_name = "orthanc-ai-task"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        raise NotImplementedError
