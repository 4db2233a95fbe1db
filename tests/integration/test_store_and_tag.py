"""A modality stores an image; a moment later its results are in private tags of that very instance."""
from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from orthanc_ai.config import DEFAULT_PRIVATE_CREATOR
from orthanc_ai.dicom.decoding import decode_analysed_frame, read_header
from orthanc_ai.dicom.private_tags import GROUP, read_results
from orthanc_ai.models.preprocessing import Preprocessing, frame_to_unit_grey, softmax, unit_grey_to_tensor
from tests.support.dicom_files import read, synthetic_ct
from tests.support.onnx_models import linear_weights


def public_elements(ds: pydicom.Dataset) -> dict:
    """Every element outside our private group, with its raw value bytes (pixel data included)."""
    return {
        elem.tag: (elem.VR, ds.get_item(elem.tag).value)
        for elem in ds
        if elem.tag.group != GROUP
    }


def our_slots(ds: pydicom.Dataset) -> list[str]:
    return [r.model for r in read_results(ds, DEFAULT_PRIVATE_CREATOR)]


def instance_id_of(orthanc, sop_uid: str) -> str:
    matches = orthanc.request("POST", "/tools/lookup", sop_uid.encode())[1]
    return [m["ID"] for m in json.loads(matches) if m["Type"] == "Instance"][0]


def test_cstore_instance_gets_results_and_keeps_everything_else(orthanc, tmp_path):
    original = synthetic_ct(seed=1)
    path = tmp_path / "ct.dcm"
    path.write_bytes(original)
    before = orthanc.status()

    result = orthanc.store_cstore([path])
    assert result.returncode == 0, result.stderr

    instance_id = instance_id_of(orthanc, read(original).SOPInstanceUID)
    orthanc.wait_idle(before["predicted"] + before["skipped"] + before["unchanged"] + before["failed"] + 1)
    stored = read(orthanc.get_bytes(f"/instances/{instance_id}/file"))

    # The results are in the instance itself, under our private creator.
    results = {r.model: r for r in read_results(stored, DEFAULT_PRIVATE_CREATOR)}
    assert set(results) == {"test-ct", "test-any"}
    ct = results["test-ct"]
    assert ct.classes == ("Benign", "Malignant", "Normal")
    assert abs(sum(ct.probabilities) - 1.0) < 1e-4
    assert ct.top_class == ct.classes[int(np.argmax(ct.probabilities))]

    # The probabilities are what the model computes on this image (recomputed here with numpy).
    header = read_header(original, 10**8)
    spec = Preprocessing(height=32, width=32, ct_window=(-600, 1500))
    tensor = unit_grey_to_tensor(frame_to_unit_grey(decode_analysed_frame(header), header.pixels, spec), spec)
    pooled = tensor.reshape(4, 8, 4, 8).mean(axis=(1, 3)).reshape(16)
    weights, bias = linear_weights(3, seed=0)
    expected = softmax(pooled @ weights + bias)
    assert np.allclose(ct.probabilities, expected, atol=1e-5)

    # Every other element, pixel data included, is unchanged; same UIDs, same Orthanc id.
    assert public_elements(stored) == public_elements(read(original))
    assert stored.file_meta.TransferSyntaxUID == read(original).file_meta.TransferSyntaxUID

    # The private creator is reserved in (0055,0010-00FF) and Orthanc knows the names (no UN).
    tags = orthanc.get(f"/instances/{instance_id}/tags?simplify")
    assert tags["AIModel01Name"] in ("test-ct", "test-any")
    assert stored[0x00550010].value == DEFAULT_PRIVATE_CREATOR

    # Where the image came from is kept although the overwrite reset Orthanc's metadata.
    metadata = orthanc.get(f"/instances/{instance_id}/metadata?expand")
    provenance = json.loads(metadata["AIProvenance"])
    assert provenance["Origin"] == "DicomProtocol"
    assert provenance["RemoteAET"] == "MODALITY"
    # Orthanc stores a C-STORE'd file with its own meta header: a few bytes more than sent.
    assert len(original) <= provenance["ReceivedSize"] < len(orthanc.get_bytes(f"/instances/{instance_id}/file"))
    assert json.loads(metadata["AIStatus"])["state"] == "predicted"


def test_http_store_is_predicted_once_without_loop(orthanc):
    before = orthanc.status()
    original = synthetic_ct(seed=2)
    instance_id = orthanc.store_http(original)["ID"]
    after = orthanc.wait_idle(sum(before[k] for k in ("predicted", "skipped", "unchanged", "failed")) + 1)

    # Let any echo of our own re-store arrive: it must not be predicted again.
    orthanc.wait_until(lambda: orthanc.status()["echoesIgnored"] >= before["echoesIgnored"] + 1, 10, "the echo")
    settled = orthanc.status()
    assert settled["predicted"] == before["predicted"] + 1
    assert settled["unchanged"] == before["unchanged"]
    assert settled["queueLength"] == 0
    stored = read(orthanc.get_bytes(f"/instances/{instance_id}/file"))
    assert sorted(our_slots(stored)) == ["test-any", "test-ct"]
    assert json.loads(orthanc.get_bytes(f"/instances/{instance_id}/metadata/AIProvenance"))["Origin"] == "RestApi"
    assert after["latencySeconds"]["count"] >= 1


def test_repredict_replaces_entries_instead_of_appending(orthanc):
    original = synthetic_ct(seed=3)
    instance_id = orthanc.store_http(original)["ID"]
    orthanc.wait_until(lambda: "AIStatus" in orthanc.get(f"/instances/{instance_id}/metadata"), 30, "first prediction")
    first = read(orthanc.get_bytes(f"/instances/{instance_id}/file"))
    first_time = {r.model: r.predicted_at for r in read_results(first, DEFAULT_PRIVATE_CREATOR)}

    status, answer = orthanc.post_json(f"/ai/instances/{instance_id}/predict", {"models": ["test-ct"]})
    assert status == 200, answer
    assert answer["state"] == "predicted"
    assert [p["model"] for p in answer["predictions"]] == ["test-any", "test-ct"]

    again = read(orthanc.get_bytes(f"/instances/{instance_id}/file"))
    assert sorted(our_slots(again)) == ["test-any", "test-ct"]  # one entry per model, never two
    times = {r.model: r.predicted_at for r in read_results(again, DEFAULT_PRIVATE_CREATOR)}
    assert times["test-ct"] > first_time["test-ct"]
    assert times["test-any"] == first_time["test-any"]
    assert public_elements(again) == public_elements(read(original))
    # Only one private creator of ours in the group.
    creators = [e.value for e in again if e.tag.group == GROUP and 0x10 <= e.tag.element <= 0xFF]
    assert creators.count(DEFAULT_PRIVATE_CREATOR) == 1
    # The provenance survives a second overwrite (Origin stays the original one).
    assert json.loads(orthanc.get_bytes(f"/instances/{instance_id}/metadata/AIProvenance"))["Origin"] == "RestApi"


def test_predictions_route_reads_back_the_tags(orthanc):
    instance_id = orthanc.store_http(synthetic_ct(seed=4))["ID"]
    orthanc.wait_until(lambda: "AIStatus" in orthanc.get(f"/instances/{instance_id}/metadata"), 30, "prediction")
    answer = orthanc.get(f"/ai/instances/{instance_id}/predictions")
    stored = read(orthanc.get_bytes(f"/instances/{instance_id}/file"))
    from_tags = {r.model: r for r in read_results(stored, DEFAULT_PRIVATE_CREATOR)}
    assert answer["status"]["state"] == "predicted"
    for prediction in answer["predictions"]:
        tagged = from_tags[prediction["model"]]
        assert list(prediction["classes"]) == list(tagged.classes)
        assert pytest.approx(list(prediction["classes"].values()), abs=1e-6) == list(tagged.probabilities)
        assert prediction["topClass"] == tagged.top_class
