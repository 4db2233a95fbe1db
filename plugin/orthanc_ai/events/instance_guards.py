"""Two guards that keep each instance processed once.

``InstanceLocks`` serialises work on one instance (a worker and a Predict
request must not both re-store it). ``EchoGuard`` recognises the NEW_INSTANCE
event that our own re-store of a tagged instance triggers, so it is not queued
again: the pipeline announces the store before posting it, the event handler
consumes the announcement.
"""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class InstanceLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._users: Counter[str] = Counter()

    @contextmanager
    def hold(self, instance_id: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(instance_id, threading.Lock())
            self._users[instance_id] += 1
        try:
            with lock:
                yield
        finally:
            with self._guard:
                self._users[instance_id] -= 1
                if self._users[instance_id] == 0:
                    del self._users[instance_id]
                    del self._locks[instance_id]


class EchoGuard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expected: Counter[str] = Counter()

    def expect(self, instance_id: str) -> None:
        with self._lock:
            self._expected[instance_id] += 1

    def cancel(self, instance_id: str) -> None:
        self.consume(instance_id)

    def consume(self, instance_id: str) -> bool:
        """True when this NEW_INSTANCE event is the echo of our own store."""
        with self._lock:
            if self._expected[instance_id] <= 0:
                self._expected.pop(instance_id, None)
                return False
            self._expected[instance_id] -= 1
            if self._expected[instance_id] == 0:
                del self._expected[instance_id]
            return True
