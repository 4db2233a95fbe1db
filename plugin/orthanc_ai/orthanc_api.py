"""What the core needs from Orthanc, as an interface.

``orthanc_glue.OrthancRestApi`` implements it with the ``orthanc`` module inside
Orthanc; unit tests implement it in memory. Nothing else in the package
imports ``orthanc``.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class ResourceNotFound(LookupError):
    """The instance, series or study does not exist (or was deleted meanwhile)."""


class OrthancApi(Protocol):
    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file (GET /instances/{id}/file)."""

    def store_instance(self, dicom: bytes) -> dict[str, Any]:
        """Store a DICOM file (POST /instances); returns Orthanc's answer (ID, Status …)."""

    def instance_metadata(self, instance_id: str) -> dict[str, str]:
        """All metadata of an instance, by name (GET /instances/{id}/metadata?expand)."""

    def set_instance_metadata(self, instance_id: str, name: str, value: str) -> None:
        """PUT /instances/{id}/metadata/{name}."""

    def decode_frame(self, dicom: bytes, frame_index: int) -> np.ndarray:
        """One frame decoded by Orthanc's own decoders: stored values (H, W) or RGB (H, W, 3)."""

    def child_instances(self, level: str, resource_id: str) -> list[str]:
        """Orthanc ids of the instances of a series or study (level 'series' or 'studies')."""
