"""What the running Orthanc offers, asked once (``GET /system``) at the first need, from a worker thread.

Asked lazily because the REST API is not called while the plugin loads, and once because the answer does
not change while Orthanc runs.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ..outputs.labels import supports_labels

log = logging.getLogger(__name__)

def has_shared_database(system: Mapping[str, Any]) -> bool:
    """Whether the index is in a database server other nodes can share (a database plugin such as
    PostgreSQL, MySQL or ODBC); Orthanc's built-in SQLite index belongs to one process."""
    return bool(system.get("DatabaseBackendPlugin"))


class OrthancCapabilities:
    def __init__(self, system: Callable[[], Mapping[str, Any]], claims: str = "auto") -> None:
        self._system = system
        self._claims = claims
        self._answer: Mapping[str, Any] | None = None
        self._lock = threading.Lock()

    def _ask(self) -> Mapping[str, Any]:
        with self._lock:
            if self._answer is None:
                answer = self._system()
                log.info("Orthanc %s: labels %s; index %s: claims %s", answer.get("Version"),
                         "yes" if supports_labels(answer) else "no",
                         answer.get("DatabaseBackendPlugin") or "SQLite (this node only)",
                         "on" if self._claims_for(answer) else "off")
                self._answer = answer
            return self._answer

    @property
    def labels(self) -> bool:
        """Labels on patients, studies, series and instances (Orthanc 1.12 and later)."""
        return supports_labels(self._ask())

    @property
    def check_revisions(self) -> bool:
        """Orthanc's ``"CheckRevisions"``: an existing metadata cannot be changed through the plugin SDK."""
        return bool(self._ask().get("CheckRevisions", False))

    @property
    def claims(self) -> bool:
        """Whether a worker claims an instance before predicting it: only where several nodes can share
        the database (``"Claims": "auto"``), so a single node writes no claim at all."""
        return self._claims_for(self._ask())

    def _claims_for(self, system: Mapping[str, Any]) -> bool:
        return has_shared_database(system) if self._claims == "auto" else self._claims == "always"
