"""What Orthanc would drop when the plugin stores the tagged file back, read before and put back after.

Orthanc's overwrite (``POST /instances`` with ``"OverwriteInstances": true``) deletes the stored
instance and stores the new file: the instance's metadata, its attachments other than the DICOM file and
its labels go with it. A parent left without children on the way is deleted and created again as well
(seen on 1.10.1: a one-image study loses its metadata, and ``/changes`` shows NewSeries, NewStudy and
NewPatient), so its metadata, attachments and labels go too. The plugin puts back what users and other
software keep there:

- user metadata: the names declared in Orthanc's ``"UserMetadata"`` (the plugin's own status, claim and
  provenance excepted: the pipeline writes those afresh);
- custom attachments: the names declared in ``"UserContentType"``;
- labels, where Orthanc has them (1.12 and later).

Orthanc's own metadata (Origin, ReceptionDate, LastUpdate …) Orthanc sets again itself; where the image
came from is kept in ``AIProvenance`` (pipeline.py).
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from ..config import METADATA_CLAIM, METADATA_PROVENANCE, METADATA_STATUS
from .orthanc_api import OrthancApi, ResourceNotFound
from .orthanc_ids import OrthancIds

# Written afresh by the pipeline after each store-back, never carried over.
PIPELINE_METADATA = frozenset({METADATA_STATUS, METADATA_PROVENANCE, METADATA_CLAIM})
# Each level and the key of its children in Orthanc's JSON of the parent (GET /series/{id} → "Instances").
PARENTS = (("series", "Instances"), ("studies", "Series"), ("patients", "Studies"))
PARENT_KEY = {"series": "ParentStudy", "studies": "ParentPatient"}


@dataclass(frozen=True)
class CarryoverSettings:
    """From Orthanc's configuration (and ``/system`` for labels): what can exist to be carried over."""

    user_metadata: frozenset[str] = frozenset()
    user_attachments: frozenset[str] = frozenset()
    labels: bool = False


@dataclass
class ResourceKeepings:
    """One resource's user metadata, custom attachments and labels."""

    level: str
    resource_id: str
    metadata: dict[str, str] = field(default_factory=dict)
    attachments: dict[str, bytes] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)


@dataclass
class Carryover:
    """Everything the overwrite of one instance drops; ``restore`` once the tagged file is stored."""

    resources: list[ResourceKeepings]

    def restore(self, api: OrthancApi) -> None:
        # Patient, study, series, then the instance: all exist again once the tagged file is stored.
        for kept in reversed(self.resources):
            for name, value in kept.metadata.items():
                api.set_metadata(kept.level, kept.resource_id, name, value)
            for name, data in kept.attachments.items():
                api.put_attachment(kept.level, kept.resource_id, name, data)
            for label in kept.labels:
                api.add_label(kept.level, kept.resource_id, label)


def read_carryover(api: OrthancApi, instance_id: str, ids: OrthancIds | None,
                   instance_metadata: Mapping[str, str], settings: CarryoverSettings) -> Carryover:
    """What the overwrite of ``instance_id`` would drop: its own keepings, and those of each parent that
    has no other child (and so is deleted and created again).

    ``ids``: the instance's and its parents' ids where computed from its file (else asked of Orthanc);
    ``instance_metadata``: already read by the pipeline.
    """
    resources = [_keepings(api, "instances", instance_id, settings, instance_metadata)]
    parent_id = ids.series if ids is not None else str(api.resource("instances", instance_id)["ParentSeries"])
    for parent_level, children_key in PARENTS:
        parent = api.resource(parent_level, parent_id)
        if len(parent.get(children_key, [])) > 1:
            break  # this parent keeps another child: the overwrite leaves it, and its ancestors, alone
        resources.append(_keepings(api, parent_level, parent_id, settings, None))
        if parent_level in PARENT_KEY:
            parent_id = str(parent[PARENT_KEY[parent_level]])
    return Carryover(resources)


def _keepings(api: OrthancApi, level: str, resource_id: str, settings: CarryoverSettings,
              metadata: Mapping[str, str] | None) -> ResourceKeepings:
    kept = ResourceKeepings(level, resource_id)
    if settings.user_metadata:
        values = metadata if metadata is not None else api.metadata(level, resource_id)
        kept.metadata = _user_metadata(values, settings.user_metadata, level)
    if settings.user_attachments:
        for name in api.attachment_names(level, resource_id):
            if name in settings.user_attachments:
                try:
                    kept.attachments[name] = api.attachment(level, resource_id, name)
                except ResourceNotFound:
                    continue  # removed meanwhile
    if settings.labels:
        kept.labels = api.labels(level, resource_id)
    return kept


def _user_metadata(values: Mapping[str, str], declared: Collection[str], level: str) -> dict[str, str]:
    skipped = PIPELINE_METADATA if level == "instances" else frozenset()
    return {name: value for name, value in values.items() if name in declared and name not in skipped}
