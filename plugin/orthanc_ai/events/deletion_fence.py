"""Keeps the plugin's store-back from bringing a deleted image back.

Orthanc has no conditional store: ``POST /instances`` with ``OverwriteInstances``
replaces an instance, but just as well creates it again if it was deleted after
the plugin read it. So every store-back passes through this fence, which knows
of deletions from two sources:

* **deletion requests** (an HTTP filter, called by Orthanc before it runs a
  ``DELETE`` of a patient, study, series or instance, or a ``POST
  /tools/bulk-delete``): the filter waits for the store-backs already under
  way, then marks the target as being deleted. The mark stays until Orthanc
  signals that very resource as deleted (or for ``PENDING_SECONDS``, for a
  request that deletes nothing); a bulk delete, whose targets the filter does
  not see, marks everything until its Deleted changes stop for
  ``QUIET_SECONDS``. A store-back of an instance whose patient,
  study, series or self is marked, or was requested for deletion since the
  instance was read, does not happen. REST deletions are thus fenced by
  construction: one of the two always comes first, and a store-back never
  follows a deletion it could undo.
* **Deleted changes** (Orthanc signals one per deleted instance, whatever
  deleted it: REST, Lua, jobs, storage recycling): an instance signalled as
  deleted since it was read is not stored back. These come asynchronously, so
  right before storing the pipeline also checks that the instance still exists.

The filter is installed where the Python plugin does not leak what it hands to
it (4.1 and later); on plugin 4.0 only the second source applies (README,
"Deleted images stay deleted").
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..orthanc.orthanc_ids import OrthancIds

# How long a deletion request with no matching Deleted change (a resource that does not exist, a bulk
# delete whose targets are unknown here) keeps store-backs of the resources it may concern waiting.
PENDING_SECONDS = 30.0
# A bulk delete runs one transaction per resource, each signalled as it commits: once none has come for
# this long (and as long since the request), it is over.
QUIET_SECONDS = 2.0
# Deletions remembered for store-backs that started before them; a prediction takes far less.
REMEMBERED_SECONDS = 600.0
# The filter waits at most this long for store-backs under way (each one is a single POST).
STORE_WAIT_SECONDS = 30.0
ANY_RESOURCE = "*"


class DeletedMeanwhile(Exception):
    """The instance, or one of its parents, was deleted (or is being deleted) since it was read."""


class DeletionFence:
    def __init__(self, pending_seconds: float = PENDING_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._condition = threading.Condition()
        self._clock = clock
        self._pending_seconds = pending_seconds
        self._pending: dict[str, list[float]] = {}  # target id → times its deletions were requested
        self._deleted: deque[tuple[float, str]] = deque()  # (time, id) of requests and Deleted changes
        self._last_deleted_change = 0.0
        # instance id → when each of our overwrites of it was stored: each causes one Deleted change of the
        # old copy, which is not a deletion (forgotten after REMEMBERED_SECONDS, should it never come).
        self._own_overwrites: dict[str, list[float]] = {}
        self._stores_under_way: set[int] = set()
        self._next_store = 0
        self.filter_installed = False
        self.refused = 0  # store-backs a deletion refused

    # --- the two sources -------------------------------------------------------------------------
    def on_deletion_request(self, target: str) -> None:
        """Before Orthanc runs a deletion of ``target`` (an id, or ANY_RESOURCE): called by the HTTP filter."""
        with self._condition:
            now = self._clock()
            self._pending.setdefault(target, []).append(now)
            self._deleted.append((now, target))
            before = set(self._stores_under_way)
            deadline = now + STORE_WAIT_SECONDS
            # Store-backs that started before this request finish first; new ones see the mark.
            while before & self._stores_under_way and self._clock() < deadline:
                self._condition.wait(0.5)

    def on_deleted(self, resource_id: str) -> None:
        """Orthanc signalled ``resource_id`` as deleted (its change thread)."""
        with self._condition:
            self._expire()
            if self._forget_own_overwrite(resource_id):
                return  # the Deleted change of the old copy our own overwrite replaced, not a deletion
            self._pending.pop(resource_id, None)
            self._last_deleted_change = self._clock()
            self._deleted.append((self._last_deleted_change, resource_id))

    # --- the pipeline's side ---------------------------------------------------------------------
    def ticket(self) -> float:
        """Taken before reading an instance: deletions after it are the ones a store-back must respect."""
        return self._clock()

    @contextmanager
    def store_back(self, ticket: float, ids: OrthancIds | None, instance_id: str,
                   overwrite: bool = True) -> Iterator[None]:
        """Around the POST that stores the tagged copy; raises DeletedMeanwhile instead of entering.

        ``ids`` None (Orthanc's ids could not be derived from the file): any deletion request counts.
        ``overwrite`` False: the POST stores a new instance beside ``instance_id`` (a heatmap Secondary
        Capture in its study), fenced the same way, but replacing nothing (no Deleted change of ours follows).
        """
        concerned = set(ids.all()) if ids is not None else None
        with self._condition:
            self._expire()
            # Beside an overwrite (a new instance in the study), only the source's own Deleted change counts: the
            # parents' come from our own overwrites too (a one-image study is emptied and created again), and a
            # real deletion of a parent also signals the source (the caller checks that it exists, as well).
            reason = self._deletion_since(ticket, concerned, instance_id,
                                          concerned if overwrite else {instance_id})
            if reason:
                self.refused += 1
                raise DeletedMeanwhile(reason)
            store = self._next_store
            self._next_store += 1
            self._stores_under_way.add(store)
            if overwrite:
                self._own_overwrites.setdefault(instance_id, []).append(self._clock())
        stored = False
        try:
            yield
            stored = True
        finally:
            with self._condition:
                self._stores_under_way.discard(store)
                if not stored and overwrite:  # no overwrite happened, so no Deleted change of ours will come
                    self._forget_own_overwrite(instance_id)
                self._condition.notify_all()

    def _deletion_since(self, ticket: float, concerned: set[str] | None, instance_id: str,
                        deleted_concerned: set[str] | None) -> str | None:
        for target in self._pending:
            if target == ANY_RESOURCE or concerned is None or target in concerned:
                return f"a deletion of {target} is under way"
        for when, resource in self._deleted:
            if when < ticket:
                continue
            if resource == instance_id or resource == ANY_RESOURCE or (
                    deleted_concerned is None or resource in deleted_concerned):
                return f"{resource} was deleted after the instance was read"
        return None

    def _forget_own_overwrite(self, instance_id: str) -> bool:
        """Drop one expected Deleted change of our own overwrite of the instance; whether there was one."""
        expected = self._own_overwrites.get(instance_id)
        if not expected:
            return False
        expected.pop(0)
        if not expected:
            del self._own_overwrites[instance_id]
        return True

    def _expire(self) -> None:
        now = self._clock()
        while self._deleted and self._deleted[0][0] < now - REMEMBERED_SECONDS:
            self._deleted.popleft()
        for instance_id, times in list(self._own_overwrites.items()):
            times[:] = [t for t in times if t >= now - REMEMBERED_SECONDS]
            if not times:
                del self._own_overwrites[instance_id]
        for target, times in list(self._pending.items()):
            if target == ANY_RESOURCE:
                quiet_since = max(times[-1], self._last_deleted_change)
                times[:] = times if now - quiet_since <= QUIET_SECONDS else []
            else:
                times[:] = [t for t in times if t >= now - self._pending_seconds]
            if not times:
                del self._pending[target]
