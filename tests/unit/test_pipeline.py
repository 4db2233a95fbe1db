"""The pipeline's store-back rules with an in-memory Orthanc (the real one is in tests/integration)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from orthanc_ai.config import PluginConfig
from orthanc_ai.instance_guards import EchoGuard
from orthanc_ai.orthanc_api import ResourceNotFound
from orthanc_ai.pipeline import PredictionPipeline
from orthanc_ai.registry import ModelRegistry
from orthanc_ai.status import PluginStatus
from tests.support.dicom_files import read, synthetic_ct


class MemoryOrthanc:
    def __init__(self, overwrite: bool = True) -> None:
        self.files: dict[str, bytes] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        self.overwrite = overwrite

    def add(self, dicom: bytes, **metadata: str) -> str:
        instance_id = read(dicom).SOPInstanceUID
        self.files[instance_id] = dicom
        self.metadata[instance_id] = {"Origin": "DicomProtocol", "RemoteAET": "CT01", **metadata}
        return instance_id

    def instance_file(self, instance_id):
        if instance_id not in self.files:
            raise ResourceNotFound(instance_id)
        return self.files[instance_id]

    def store_instance(self, dicom):
        instance_id = read(dicom).SOPInstanceUID
        if instance_id in self.files and not self.overwrite:
            return {"ID": instance_id, "Status": "AlreadyStored"}
        self.files[instance_id] = dicom
        self.metadata[instance_id] = {"Origin": "Plugins"}  # as Orthanc: an overwrite resets metadata
        return {"ID": instance_id, "Status": "Success"}

    def instance_exists(self, instance_id):
        return instance_id in self.files

    def instance_metadata(self, instance_id):
        return dict(self.metadata[instance_id])

    def set_instance_metadata(self, instance_id, name, value):
        self.metadata[instance_id][name] = value

    def claim_instance(self, instance_id, node):
        return self.metadata[instance_id].setdefault("AIClaim", node)

    def decode_frame(self, dicom, frame_index):
        raise NotImplementedError

    def child_instances(self, level, resource_id):
        return list(self.files)


@pytest.fixture
def pipeline_for(test_models: Path):
    def make(api):
        config = PluginConfig(models_directory=test_models)
        return PredictionPipeline(api, ModelRegistry.load(config), config, PluginStatus(), EchoGuard())
    return make


def test_provenance_and_user_metadata_survive_the_overwrite(pipeline_for):
    api = MemoryOrthanc()
    instance_id = api.add(synthetic_ct(seed=1), Workflow="urgent")
    pipeline = pipeline_for(api)
    outcome = pipeline.process(instance_id)
    assert outcome.state == "predicted"
    metadata = api.metadata[instance_id]
    assert metadata["Workflow"] == "urgent"
    provenance = json.loads(metadata["AIProvenance"])
    assert provenance["Origin"] == "DicomProtocol" and provenance["RemoteAET"] == "CT01"
    assert json.loads(metadata["AIStatus"])["state"] == "predicted"
    # A second overwrite keeps the first provenance, not "Plugins".
    assert pipeline.process(instance_id, models=["test-ct"], force=True).state == "predicted"
    assert json.loads(api.metadata[instance_id]["AIProvenance"])["Origin"] == "DicomProtocol"


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
    ds = read(synthetic_ct(seed=4))
    instance_id = ds.SOPInstanceUID
    api.files[instance_id] = synthetic_ct(seed=4)[:600]  # truncated inside the header
    api.metadata[instance_id] = {}
    outcome = pipeline_for(api).process(instance_id)
    assert outcome.state == "skipped" and outcome.reason
    assert json.loads(api.metadata[instance_id]["AIStatus"])["state"] == "skipped"


def test_instance_claimed_by_another_node_is_left_to_it(pipeline_for):
    api = MemoryOrthanc()
    instance_id = api.add(synthetic_ct(seed=5), AIClaim="node-b")
    outcome = pipeline_for(api).process(instance_id, claim=True)
    assert outcome.state == "elsewhere" and "node-b" in outcome.reason
    assert "AIStatus" not in api.metadata[instance_id]
    assert pipeline_for(api).process(instance_id).state == "predicted"  # an explicit request is not claimed
