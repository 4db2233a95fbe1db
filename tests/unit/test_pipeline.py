"""The pipeline's store-back rules with an in-memory Orthanc (the real one is in tests/integration)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from orthanc_ai.config import PluginConfig
from orthanc_ai.events.instance_guards import EchoGuard
from orthanc_ai.models.registry import ModelRegistry
from orthanc_ai.orthanc.capabilities import OrthancCapabilities
from orthanc_ai.orthanc.orthanc_api import ResourceNotFound
from orthanc_ai.orthanc.orthanc_ids import orthanc_ids
from orthanc_ai.pipeline import PredictionPipeline
from orthanc_ai.status import PluginStatus
from tests.support.dicom_files import read, synthetic_ct


class MemoryOrthanc:
    """Instances by Orthanc id with their parents; an overwrite drops what Orthanc's drops (seen on 1.10.1):
    the instance's metadata, attachments and labels, and those of each parent it leaves without children."""

    def __init__(self, overwrite: bool = True) -> None:
        self.files: dict[str, bytes] = {}
        self.parents: dict[str, tuple[str, str, str]] = {}  # instance → (series, study, patient)
        self.meta: dict[str, dict[str, str]] = {}  # any level's resource id → its metadata
        self.attachments: dict[str, dict[str, bytes]] = {}
        self.resource_labels: dict[str, list[str]] = {}
        self.overwrite = overwrite

    def add(self, dicom: bytes, **metadata: str) -> str:
        ids = orthanc_ids(read(dicom))
        self.files[ids.instance] = dicom
        self.parents[ids.instance] = (ids.series, ids.study, ids.patient)
        self.meta[ids.instance] = {"Origin": "DicomProtocol", "RemoteAET": "CT01", **metadata}
        return ids.instance

    def instance_file(self, instance_id):
        if instance_id not in self.files:
            raise ResourceNotFound(instance_id)
        return self.files[instance_id]

    def store_instance(self, dicom):
        ids = orthanc_ids(read(dicom))
        if ids.instance in self.files and not self.overwrite:
            return {"ID": ids.instance, "Status": "AlreadyStored"}
        if ids.instance in self.files:
            for resource in self._dropped_by_overwrite(ids.instance):
                self.meta.pop(resource, None)
                self.attachments.pop(resource, None)
                self.resource_labels.pop(resource, None)
        self.add(dicom)
        self.meta[ids.instance] = {"Origin": "Plugins"}
        return {"ID": ids.instance, "Status": "Success"}

    def _dropped_by_overwrite(self, instance_id):
        dropped = [instance_id]
        siblings = {other for other in self.files if other != instance_id}
        for depth, parent in enumerate(self.parents[instance_id]):
            if any(self.parents[other][depth] == parent for other in siblings):
                break
            dropped.append(parent)
        return dropped

    def instance_exists(self, instance_id):
        return instance_id in self.files

    def instance_metadata(self, instance_id):
        return self.metadata("instances", instance_id)

    def set_instance_metadata(self, instance_id, name, value):
        self.set_metadata("instances", instance_id, name, value)

    def claim_instance(self, instance_id, node):
        return self.meta[instance_id].setdefault("AIClaim", node)

    def decode_frame(self, dicom, frame_index):
        raise NotImplementedError

    def child_instances(self, level, resource_id):
        return list(self.files)

    def resource(self, level, resource_id):
        depth = {"series": 0, "studies": 1, "patients": 2}.get(level)
        if depth is None:
            series, study, patient = self.parents[resource_id]
            return {"ParentSeries": series}
        children = {self.parents[i][depth - 1] if depth else i for i in self.files
                    if self.parents[i][depth] == resource_id}
        parent_key = {0: "ParentStudy", 1: "ParentPatient"}
        answer = {{0: "Instances", 1: "Series", 2: "Studies"}[depth]: sorted(children)}
        if depth in parent_key:
            first = next(i for i in self.files if self.parents[i][depth] == resource_id)
            answer[parent_key[depth]] = self.parents[first][depth + 1]
        return answer

    def metadata(self, level, resource_id):
        if level == "instances" and resource_id not in self.files:
            raise ResourceNotFound(resource_id)
        return dict(self.meta.get(resource_id, {}))

    def set_metadata(self, level, resource_id, name, value):
        self.meta.setdefault(resource_id, {})[name] = value

    def attachment_names(self, level, resource_id):
        return ["dicom", *self.attachments.get(resource_id, {})]

    def attachment(self, level, resource_id, name):
        return self.attachments[resource_id][name]

    def put_attachment(self, level, resource_id, name, data):
        self.attachments.setdefault(resource_id, {})[name] = data

    def labels(self, level, resource_id):
        return list(self.resource_labels.get(resource_id, []))

    def add_label(self, level, resource_id, label):
        self.resource_labels.setdefault(resource_id, []).append(label)


DECLARED_METADATA = frozenset({"Workflow", "AIStatus", "AIProvenance", "AISourceFileName", "AIClaim", "AIRouting"})


@pytest.fixture
def pipeline_for(test_models: Path):
    def make(api, **settings):
        config = PluginConfig(models_directory=test_models, user_metadata=DECLARED_METADATA,
                              user_attachments=frozenset({"report-pdf"}), **settings)
        capabilities = OrthancCapabilities(lambda: {"Version": "1.12.7", "DatabaseBackendPlugin": None},
                                           config.claims)
        return PredictionPipeline(api, ModelRegistry.load(config), config, PluginStatus(), EchoGuard(),
                                  capabilities=capabilities)
    return make


def test_provenance_and_user_metadata_survive_the_overwrite(pipeline_for):
    api = MemoryOrthanc()
    instance_id = api.add(synthetic_ct(seed=1), Workflow="urgent")
    pipeline = pipeline_for(api)
    outcome = pipeline.process(instance_id)
    assert outcome.state == "predicted"
    metadata = api.meta[instance_id]
    assert metadata["Workflow"] == "urgent"
    provenance = json.loads(metadata["AIProvenance"])
    assert provenance["Origin"] == "DicomProtocol" and provenance["RemoteAET"] == "CT01"
    assert json.loads(metadata["AIStatus"])["state"] == "predicted"
    # A second overwrite keeps the first provenance, not "Plugins".
    assert pipeline.process(instance_id, models=["test-ct"], force=True).state == "predicted"
    assert json.loads(api.meta[instance_id]["AIProvenance"])["Origin"] == "DicomProtocol"


def test_what_the_overwrite_drops_is_put_back_on_the_instance_and_on_parents_it_recreates(pipeline_for):
    api = MemoryOrthanc()
    instance_id = api.add(synthetic_ct(seed=7), Workflow="urgent")
    series, study, patient = api.parents[instance_id]
    api.put_attachment("instances", instance_id, "report-pdf", b"%PDF-1.4 ...")
    api.add_label("instances", instance_id, "teaching")
    api.set_metadata("studies", study, "Workflow", "second reading")
    api.add_label("studies", study, "research")
    api.add_label("patients", patient, "vip")
    assert pipeline_for(api).process(instance_id).state == "predicted"
    assert api.meta[instance_id]["Workflow"] == "urgent"
    assert api.attachment("instances", instance_id, "report-pdf") == b"%PDF-1.4 ..."
    assert api.labels("instances", instance_id) == ["teaching"]
    # The only image of its study: the overwrite recreated series, study and patient.
    assert api.metadata("studies", study) == {"Workflow": "second reading"}
    assert api.labels("studies", study) == ["research"] and api.labels("patients", patient) == ["vip"]


def test_parents_with_other_children_are_left_alone(pipeline_for):
    api = MemoryOrthanc()
    first = api.add(synthetic_ct(seed=8, study_uid="1.2.3.4", series_uid="1.2.3.4.1"))
    api.add(synthetic_ct(seed=9, study_uid="1.2.3.4", series_uid="1.2.3.4.1"))
    series, study, _ = api.parents[first]
    api.add_label("series", series, "qa")
    writes: list[tuple] = []
    api.add_label = lambda *args: writes.append(args)
    assert pipeline_for(api).process(first).state == "predicted"
    assert api.labels("series", series) == ["qa"] and writes == []


def test_a_study_whose_series_keeps_another_image_is_left_alone_though_it_has_one_series(pipeline_for):
    # Only the study keeps something; whether the overwrite deletes it depends on the series below it.
    api = MemoryOrthanc()
    first = api.add(synthetic_ct(seed=10, study_uid="1.2.3.5", series_uid="1.2.3.5.1"))
    api.add(synthetic_ct(seed=11, study_uid="1.2.3.5", series_uid="1.2.3.5.1"))
    _, study, _ = api.parents[first]
    api.set_metadata("studies", study, "Workflow", "second reading")
    writes: list[tuple] = []
    api.set_metadata = lambda *args: writes.append(args)
    assert pipeline_for(api).process(first).state == "predicted"
    assert [write for write in writes if write[0] != "instances"] == []


def test_a_study_or_patient_is_listed_only_where_it_keeps_something(pipeline_for):
    # Listing a parent's children costs Orthanc O(children) per image: a patient with 1000 studies. The
    # series' images are listed (one call settles the usual case, several images); above it, only where a
    # parent keeps something.
    api = MemoryOrthanc()
    lonely = api.add(synthetic_ct(seed=12))
    listed: list[str] = []
    list_children = api.resource
    api.resource = lambda level, resource_id: listed.append(level) or list_children(level, resource_id)
    assert pipeline_for(api).process(lonely).state == "predicted"
    assert listed == ["series"]
    listed.clear()
    # A label on the patient: series, study and patient are each listed once to learn the patient goes too.
    _, _, patient = api.parents[lonely]
    api.add_label("patients", patient, "vip")
    assert pipeline_for(api).process(lonely, force=True).state == "predicted"
    assert listed == ["series", "studies", "patients"] and api.labels("patients", patient) == ["vip"]


def test_a_predicted_outcome_names_the_study_orthanc_stored_the_instance_in(pipeline_for):
    api = MemoryOrthanc()
    instance_id = api.add(synthetic_ct(seed=13))
    assert pipeline_for(api).process(instance_id).study_id == api.parents[instance_id][1]


def test_same_model_version_is_not_run_twice_unless_forced(pipeline_for):
    api = MemoryOrthanc()
    instance_id = api.add(synthetic_ct(seed=2))
    pipeline = pipeline_for(api)
    assert pipeline.process(instance_id).state == "predicted"
    assert pipeline.process(instance_id).state == "unchanged"
    assert pipeline.process(instance_id, force=True).state == "predicted"


def test_overwrite_off_fails_loudly_and_keeps_the_original(pipeline_for):
    api = MemoryOrthanc(overwrite=False)
    original = synthetic_ct(seed=3)
    instance_id = api.add(original)
    outcome = pipeline_for(api).process(instance_id)
    assert outcome.state == "failed" and "OverwriteInstances" in outcome.reason
    assert api.files[instance_id] == original


def test_deleted_instance_is_gone_not_failed(pipeline_for):
    outcome = pipeline_for(MemoryOrthanc()).process("no-such-instance")
    assert outcome.state == "gone"


def test_corrupt_file_is_skipped_with_reason_and_untouched(pipeline_for):
    api = MemoryOrthanc()
    instance_id = api.add(synthetic_ct(seed=4))
    api.files[instance_id] = synthetic_ct(seed=4)[:600]  # truncated inside the header
    before = api.metadata("instances", instance_id)
    pipeline = pipeline_for(api)
    outcome = pipeline.process(instance_id)
    assert outcome.state == "skipped" and outcome.reason
    # Nothing written in Orthanc: the outcome is remembered by the plugin instead.
    assert api.metadata("instances", instance_id) == before
    assert pipeline.status.unwritten_outcome(instance_id) == {"state": "skipped", "reason": outcome.reason}


def test_instance_claimed_by_another_node_is_left_to_it(pipeline_for):
    api = MemoryOrthanc()
    instance_id = api.add(synthetic_ct(seed=5), AIClaim="node-b")
    outcome = pipeline_for(api, claims="always").process(instance_id, claim=True)
    assert outcome.state == "elsewhere" and "node-b" in outcome.reason
    assert "AIStatus" not in api.meta[instance_id]
    assert pipeline_for(api).process(instance_id).state == "predicted"  # an explicit request is not claimed


def test_a_single_node_writes_no_claim(pipeline_for):
    api = MemoryOrthanc()
    instance_id = api.add(synthetic_ct(seed=6))
    api.claim_instance = lambda *args: pytest.fail("claimed on a node with its own SQLite index")
    assert pipeline_for(api).process(instance_id, claim=True).state == "predicted"
