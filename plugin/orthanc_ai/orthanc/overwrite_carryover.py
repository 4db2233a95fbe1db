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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import METADATA_CLAIM, METADATA_PROVENANCE, METADATA_STATUS, REQUIRED_USER_METADATA
from .orthanc_api import OrthancApi, ResourceNotFound
from .orthanc_ids import OrthancIds

# Written afresh by the pipeline after each store-back, never carried over.
PIPELINE_METADATA = frozenset({METADATA_STATUS, METADATA_PROVENANCE, METADATA_CLAIM})
PARENT_LEVELS = ("series", "studies", "patients")
# The key of a parent's children, and of its own parent, in Orthanc's JSON of it (GET /series/{id}).
CHILDREN_KEY = {"series": "Instances", "studies": "Series", "patients": "Studies"}
PARENT_KEY = {"series": "ParentStudy", "studies": "ParentPatient"}
# The plugin's own metadata live on instances only: a parent has none of them to lose.
PLUGIN_METADATA = frozenset(REQUIRED_USER_METADATA)


@dataclass(frozen=True)
class CarryoverSettings:
    """From Orthanc's configuration (and ``/system`` for labels): what can exist to be carried over."""

    user_metadata: frozenset[str] = frozenset()
    user_attachments: frozenset[str] = frozenset()
    labels: bool = False

    def kept_metadata(self, level: str) -> frozenset[str]:
        """The metadata names carried over at this level: the pipeline writes its own instance metadata
        afresh, and parents never hold any of the plugin's."""
        return self.user_metadata - (PIPELINE_METADATA if level == "instances" else PLUGIN_METADATA)

    @property
    def parent_keepings_possible(self) -> bool:
        """Whether a series, study or patient can hold anything to carry over."""
        return bool(self.kept_metadata("series") or self.user_attachments or self.labels)


@dataclass
class ResourceKeepings:
    """One resource's user metadata, custom attachments and labels."""

    level: str
    resource_id: str
    metadata: dict[str, str] = field(default_factory=dict)
    attachments: dict[str, bytes] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.metadata or self.attachments or self.labels)


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

    The series' images are listed first: most often there are several, and that one call settles that no
    parent is deleted. A study's or patient's children (which grow with its history) are listed only where
    it keeps something: its keepings are read first, in a few constant-cost calls.
    """
    resources = [_keepings(api, "instances", instance_id, settings, instance_metadata)]
    if not settings.parent_keepings_possible:
        return Carryover(resources)
    lineage = _Lineage(api, instance_id, ids)
    if not lineage.deleted_with_instance(0):
        return Carryover(resources)  # the series keeps other images: the overwrite leaves every parent alone
    for depth, level in enumerate(PARENT_LEVELS):
        kept = _keepings(api, level, lineage.ids[depth], settings, None)
        if kept.is_empty():
            continue  # nothing to lose, whether the overwrite deletes it or not
        if not lineage.deleted_with_instance(depth):
            break  # it keeps another child: the overwrite leaves it, and its ancestors, alone
        resources.append(kept)
    return Carryover(resources)


class _Lineage:
    """The ids of the instance's series, study and patient (depth 0, 1, 2), and whether each has this instance
    as its only descendant. A parent's JSON (which lists its children) is read at most once."""

    def __init__(self, api: OrthancApi, instance_id: str, ids: OrthancIds | None) -> None:
        self.api = api
        self.resources: dict[int, dict[str, Any]] = {}
        if ids is not None:
            self.ids = [ids.series, ids.study, ids.patient]
        else:  # not derivable from the file: each JSON names the next parent
            self.ids = [str(api.resource("instances", instance_id)["ParentSeries"])]
            for depth, level in enumerate(PARENT_LEVELS[:-1]):
                self.ids.append(str(self._resource(depth)[PARENT_KEY[level]]))

    def deleted_with_instance(self, depth: int) -> bool:
        return all(len(self._resource(d).get(CHILDREN_KEY[PARENT_LEVELS[d]], [])) <= 1 for d in range(depth + 1))

    def _resource(self, depth: int) -> dict[str, Any]:
        if depth not in self.resources:
            self.resources[depth] = self.api.resource(PARENT_LEVELS[depth], self.ids[depth])
        return self.resources[depth]


def _keepings(api: OrthancApi, level: str, resource_id: str, settings: CarryoverSettings,
              metadata: Mapping[str, str] | None) -> ResourceKeepings:
    kept = ResourceKeepings(level, resource_id)
    kept_names = settings.kept_metadata(level)
    if kept_names:
        values = metadata if metadata is not None else api.metadata(level, resource_id)
        kept.metadata = {name: value for name, value in values.items() if name in kept_names}
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
