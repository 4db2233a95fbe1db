"""What the core needs from Orthanc, as an interface.

``orthanc_glue.OrthancRestApi`` implements it with the ``orthanc`` module inside
Orthanc; unit tests implement it in memory. Nothing else in the package
imports ``orthanc``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from ..outputs.routing import Destination


class ResourceNotFound(LookupError):
    """The instance, series or study does not exist (or was deleted meanwhile)."""


class MetadataConflict(RuntimeError):
    """With "CheckRevisions": true, Orthanc refuses to create a metadata that already exists."""


class OrthancApi(Protocol):
    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file (GET /instances/{id}/file)."""

    def store_instance(self, dicom: bytes) -> dict[str, Any]:
        """Store a DICOM file (POST /instances); returns Orthanc's answer (ID, Status …)."""

    def instance_exists(self, instance_id: str) -> bool:
        """Whether Orthanc's index has the instance now (GET /instances/{id})."""

    def instance_metadata(self, instance_id: str) -> dict[str, str]:
        """All metadata of an instance, by name (GET /instances/{id}/metadata?expand)."""

    def set_instance_metadata(self, instance_id: str, name: str, value: str) -> None:
        """PUT /instances/{id}/metadata/{name}; raises MetadataConflict (see there)."""

    def claim_instance(self, instance_id: str, node: str) -> str:
        """Create the AIClaim metadata with this node's name unless it exists; returns the holder."""

    # --- any level ('patients', 'studies', 'series', 'instances'): what an overwrite drops -------------
    def resource(self, level: str, resource_id: str) -> dict[str, Any]:
        """GET /{level}/{id}: main DICOM tags, parent and children ids."""

    def metadata(self, level: str, resource_id: str) -> dict[str, str]:
        """All metadata of a resource, by name (GET /{level}/{id}/metadata?expand)."""

    def set_metadata(self, level: str, resource_id: str, name: str, value: str) -> None:
        """PUT /{level}/{id}/metadata/{name}; raises MetadataConflict (see there)."""

    def attachment_names(self, level: str, resource_id: str) -> list[str]:
        """GET /{level}/{id}/attachments."""

    def attachment(self, level: str, resource_id: str, name: str) -> bytes:
        """The attachment's content, uncompressed (GET /{level}/{id}/attachments/{name}/data)."""

    def put_attachment(self, level: str, resource_id: str, name: str, data: bytes) -> None:
        """PUT /{level}/{id}/attachments/{name}."""

    def labels(self, level: str, resource_id: str) -> list[str]:
        """GET /{level}/{id}/labels (Orthanc 1.12 and later)."""

    def add_label(self, level: str, resource_id: str, label: str) -> None:
        """PUT /{level}/{id}/labels/{label} (Orthanc 1.12 and later)."""

    def decode_frame(self, dicom: bytes, frame_index: int) -> np.ndarray:
        """One frame decoded by Orthanc's own decoders: stored values (H, W) or RGB (H, W, 3)."""

    def last_change(self) -> int:
        """Sequence number of the last entry of Orthanc's change log (GET /changes?last)."""

    def changes(self, since: int, limit: int) -> dict:
        """A page of Orthanc's change log: {"Changes": [...], "Done": bool, "Last": int}."""

    def get_checkpoint(self) -> str:
        """The plugin's change-log checkpoint (a global property in Orthanc's database), or ''."""

    def set_checkpoint(self, value: str) -> None:
        """Store the checkpoint."""

    def list_instances(self) -> list[dict[str, Any]]:
        """Every instance with its parents (GET /instances?expand)."""

    def list_series(self) -> list[dict[str, Any]]:
        """Every series with its parent study (GET /series?expand)."""

    def find_labelled_studies(self, labels: list[str]) -> list[str]:
        """Ids of the studies with any of these labels (POST /tools/find; Orthanc 1.12 and later)."""

    def study_instances(self, study_id: str) -> list[dict[str, Any]]:
        """The instances of a study with their parent series (GET /studies/{id}/instances)."""

    def destinations(self) -> tuple[list[str], list[str]]:
        """Names of the DICOM modalities and the Orthanc peers that Orthanc knows."""

    def series(self, series_id: str) -> dict[str, Any]:
        """GET /series/{id}: its main DICOM tags, parent study and instance ids."""

    def study_series(self, study_id: str) -> list[str]:
        """Orthanc ids of the series of a study."""

    def delete_instance(self, instance_id: str) -> None:
        """DELETE /instances/{id} (an outdated Structured Report of ours)."""

    def child_instances(self, level: str, resource_id: str) -> list[str]:
        """Orthanc ids of the instances of a series or study (level 'series' or 'studies')."""

    # --- Orthanc Explorer: upload, labels -------------------------------------
    def create_dicom(self, request: dict[str, Any]) -> dict[str, Any]:
        """POST /tools/create-dicom (stores the new instance); returns Orthanc's answer (ID, Parent…)."""

    def system(self) -> dict[str, Any]:
        """GET /system (Version, ApiVersion, HasLabels …)."""

    def instance_study(self, instance_id: str) -> str:
        """Orthanc id of the study holding the instance."""

    def add_study_label(self, study_id: str, label: str) -> None:
        """PUT /studies/{id}/labels/{label} (Orthanc 1.12 and later)."""

    # --- Routing: forwarding to modalities and peers ---------------------------
    def start_store_job(self, destination: Destination, instance_id: str) -> str:
        """Start an asynchronous job sending one instance (C-STORE to a modality, HTTP to a peer); its id."""

    def job_state(self, job_id: str) -> tuple[str, str]:
        """State of an Orthanc job (GET /jobs/{id}) and its error description, if any."""

    def cancel_job(self, job_id: str) -> None:
        """POST /jobs/{id}/cancel."""
