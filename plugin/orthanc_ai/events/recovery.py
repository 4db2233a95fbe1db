"""Finding again, after a restart, the instances whose prediction was lost with the queue.

The queue lives in memory: if Orthanc is killed (``kill -9``, power loss) with
instances waiting, their NEW_INSTANCE events are gone. Orthanc's own change log
(``/changes``, stored in its database) is not: the plugin keeps a checkpoint,
the sequence number up to which every new instance has an outcome, in a global
property, and at start-up replays the log from there, queueing each instance
that has no ``AIStatus`` yet. An instance that was tagged but not yet marked
(killed between the two) comes out "unchanged" and is marked then: nothing is
tagged twice.

On the very first start there is no checkpoint: the plugin starts from the
current end of the log rather than classifying the whole existing archive
(use the REST API for that).

The checkpoint only moves forward after the queue (and the forwarder) has been
idle for a whole period, so every event up to it has been delivered and
processed, and every send it led to has finished. With routing rules, the replay
also routes again each predicted instance since the checkpoint: the sends that
were queued or running when Orthanc died start again, while those recorded as
sent in ``AIRouting`` are not repeated (forwarding.py).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Protocol

from ..config import METADATA_STATUS
from .background import BackgroundTask

log = logging.getLogger(__name__)

CHECKPOINT_PERIOD_SECONDS = 5.0
CHANGES_PAGE = 1000


class ChangeLog(Protocol):
    def last_change(self) -> int: ...
    def changes(self, since: int, limit: int) -> dict: ...
    def instance_metadata(self, instance_id: str) -> dict[str, str]: ...
    def get_checkpoint(self) -> str | None: ...
    def set_checkpoint(self, value: str) -> None: ...


class BacklogRecovery(BackgroundTask):
    thread_name = "orthanc-ai-recovery"

    def __init__(self, api: ChangeLog, node: str, submit: Callable[[str], bool],
                 is_idle: Callable[[], bool], route_again: Callable[[str], object] | None = None) -> None:
        super().__init__()
        self.api = api
        self.node = node
        self.submit = submit
        self.is_idle = is_idle
        self.route_again = route_again
        self.recovered = 0
        self.routed_again = 0

    def _run(self) -> None:
        try:
            self.replay()
        except Exception:
            log.exception("Replaying Orthanc's change log failed; pending instances may need a manual Predict")
        pending_mark: int | None = None
        while not self._stop.wait(CHECKPOINT_PERIOD_SECONDS):
            try:
                pending_mark = self._advance(pending_mark)
            except Exception as error:  # e.g. during shutdown
                log.debug("Checkpoint not advanced: %s", error)

    def replay(self) -> int:
        """Queue every instance stored since the checkpoint that has no outcome yet."""
        checkpoint = self._read_checkpoint()
        last = self.api.last_change()
        if checkpoint is None:
            self._write_checkpoint(last)
            log.info("First start: change log checkpoint set at %d", last)
            return 0
        candidates: dict[str, None] = {}  # ordered set of instance ids
        since = checkpoint
        while since < last and not self._stop.is_set():
            page = self.api.changes(since, CHANGES_PAGE)
            for change in page.get("Changes", []):
                if change.get("ChangeType") == "NewInstance":
                    candidates[change["ID"]] = None
            if page.get("Done", True) or page.get("Last", since) <= since:
                break
            since = page["Last"]
        queued = routed = 0
        for instance_id in candidates:
            try:
                metadata = self.api.instance_metadata(instance_id)
                if METADATA_STATUS not in metadata:
                    queued += self.submit(instance_id)
                elif self.route_again is not None:
                    self.route_again(instance_id)
                    routed += 1
            except LookupError:
                continue  # deleted since
            except Exception:  # one unreadable instance must not stop the replay of the others
                log.exception("Replay of instance %s failed", instance_id)
        self.recovered, self.routed_again = queued, routed
        if queued:
            log.warning("Recovered %d instance(s) stored since change %d without a prediction", queued, checkpoint)
        if routed:
            log.warning("Routed %d predicted instance(s) since change %d again (sends already made are not "
                        "repeated)", routed, checkpoint)
        return queued

    def _advance(self, pending_mark: int | None) -> int | None:
        if not self.is_idle():
            return None
        if pending_mark is not None:
            self._write_checkpoint(pending_mark)
        return self.api.last_change()

    def _read_checkpoint(self) -> int | None:
        raw = self.api.get_checkpoint()
        if not raw:
            return None
        try:
            return int(json.loads(raw)[self.node])
        except (ValueError, KeyError, TypeError):
            return None

    def _write_checkpoint(self, sequence: int) -> None:
        # One property for all nodes sharing a database, one entry per node name.
        try:
            nodes = json.loads(self.api.get_checkpoint() or "{}")
            if not isinstance(nodes, dict):
                nodes = {}
        except ValueError:
            nodes = {}
        if nodes.get(self.node) == sequence:
            return
        nodes[self.node] = sequence
        self.api.set_checkpoint(json.dumps(nodes, sort_keys=True))
