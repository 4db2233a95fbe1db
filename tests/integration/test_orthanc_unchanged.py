"""Orthanc unchanged beyond what the plugin documents: nothing written about images it does not predict,
no claim on a single node, no revision errors, and what users keep on an instance survives the re-store."""
from __future__ import annotations

import json

import numpy as np

from orthanc_ai.outputs.labels import supports_labels
from tests.support.dicom_files import secondary_capture, synthetic_ct
from tests.support.orthanc_process import OrthancProcess, project_configuration

PLUGIN_METADATA = {"AIStatus", "AIProvenance", "AIClaim", "AIRouting", "AISourceFileName"}
# A site with metadata and attachments of its own, and revisions checked.
SITE_SETTINGS = {
    "CheckRevisions": True,
    "UserMetadata": dict(project_configuration()["UserMetadata"], Workflow=2101),
    "UserContentType": {"report-pdf": [2100, "application/pdf"]},
}


def changes_since(server: OrthancProcess, since: int) -> list[str]:
    changes = server.get(f"/changes?since={since}&limit=1000")["Changes"]
    return [f"{change['ChangeType']} {change['ResourceType']}" for change in changes]


def test_an_image_no_model_applies_to_gets_no_write_at_all(start_orthanc):
    server = start_orthanc(plugin={"EnabledModels": ["test-ct"]}, **SITE_SETTINGS)
    last = server.get("/changes?last")["Last"]
    mr = secondary_capture(np.full((32, 32), 100, np.uint8), modality="MR")
    instance_id = server.store_http(mr)["ID"]
    status = server.wait_idle(1)
    assert status["skipped"] == 1
    assert not PLUGIN_METADATA & set(server.get(f"/instances/{instance_id}/metadata"))
    assert changes_since(server, last) == ["NewInstance Instance", "NewSeries Series", "NewStudy Study",
                                           "NewPatient Patient"]
    # Still answerable: the outcome (from the plugin's memory) and why no model applies.
    outcome = server.get(f"/ai/instances/{instance_id}/predictions")["status"]
    assert outcome["state"] == "skipped" and "no model applies" in outcome["reason"]
    assert server.get(f"/ai/instances/{instance_id}/applicable")["applicable"] == []
    assert "A bad revision number" not in server.log_text()


def test_a_single_node_claims_nothing_and_logs_no_revision_error(start_orthanc):
    server = start_orthanc(**SITE_SETTINGS)
    instance_id = server.store_http(synthetic_ct(seed=41))["ID"]
    server.wait_idle(1)
    metadata = server.get(f"/instances/{instance_id}/metadata")
    assert "AIStatus" in metadata and "AIClaim" not in metadata
    # Predicted again twice (the second finds its results there: "unchanged"): still no revision error.
    assert server.post_json(f"/ai/instances/{instance_id}/predict")[1]["state"] == "predicted"
    assert server.post_json(f"/ai/instances/{instance_id}/predict", {"force": False})[1]["state"] == "unchanged"
    assert "A bad revision number" not in server.log_text()
    assert "Exception while invoking plugin service" not in server.log_text()


def test_metadata_attachments_and_labels_survive_the_re_store(start_orthanc):
    server = start_orthanc(plugin={"AutoPredict": False}, **SITE_SETTINGS)
    answer = server.store_http(synthetic_ct(seed=42))  # the only image of its study
    instance_id, study_id, series_id = answer["ID"], answer["ParentStudy"], answer["ParentSeries"]
    pdf = b"%PDF-1.4 a report kept beside the image"
    assert server.request("PUT", f"/instances/{instance_id}/attachments/report-pdf", pdf)[0] == 200
    assert server.request("PUT", f"/instances/{instance_id}/metadata/Workflow", b"urgent")[0] == 200
    assert server.request("PUT", f"/studies/{study_id}/metadata/Workflow", b"second reading")[0] == 200
    labels = supports_labels(server.get("/system"))
    if labels:
        for level, resource in (("instances", instance_id), ("series", series_id), ("studies", study_id)):
            assert server.request("PUT", f"/{level}/{resource}/labels/kept-{level}", b"")[0] == 200

    status, outcome = server.post_json(f"/ai/instances/{instance_id}/predict")
    assert status == 200 and outcome["state"] == "predicted"
    assert server.get_bytes(f"/instances/{instance_id}/attachments/report-pdf/data") == pdf
    assert server.get_bytes(f"/instances/{instance_id}/metadata/Workflow") == b"urgent"
    assert server.get_bytes(f"/studies/{study_id}/metadata/Workflow") == b"second reading"
    assert json.loads(server.get_bytes(f"/instances/{instance_id}/metadata/AIStatus"))["state"] == "predicted"
    if labels:
        assert "kept-instances" in server.get(f"/instances/{instance_id}/labels")
        assert "kept-series" in server.get(f"/series/{series_id}/labels")
        assert "kept-studies" in server.get(f"/studies/{study_id}/labels")
    assert "A bad revision number" not in server.log_text()
