"""The routes Orthanc Explorer's extension uses: applicable models, series/study summaries, upload."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from orthanc_ai.orthanc.orthanc_ids import orthanc_ids
from orthanc_ai.web import upload
from tests.support.dicom_files import _base, read, secondary_capture, synthetic_ct, to_bytes

UNKNOWN = "00000000-00000000-00000000-00000000-00000000"


def image(mode: str, fmt: str) -> bytes:
    grey = (np.random.default_rng(3).random((48, 64)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def predictions(orthanc, instance_id):
    orthanc.wait_until(lambda: orthanc.get(f"/ai/instances/{instance_id}/predictions")["status"] is not None,
                       what=f"prediction of {instance_id}")
    return orthanc.get(f"/ai/instances/{instance_id}/predictions")


@pytest.mark.parametrize("mode, fmt, mime, photometric", [
    ("L", "PNG", "image/png", "MONOCHROME2"),
    ("RGB", "JPEG", "image/jpeg", "RGB"),
    ("RGBA", "PNG", "image/png", "RGB"),
])
def test_upload_image_becomes_a_predicted_secondary_capture(orthanc, mode, fmt, mime, photometric):
    name = f"photo-{mode}.{fmt.lower()}"
    status, answer = orthanc.post_json("/ai/upload", {"fileName": name, "content": data_uri(image(mode, fmt), mime),
                                                      "patientName": "Zoë^Müller", "patientId": "UP1"})
    assert status == 200, answer
    assert answer["kind"] == fmt.lower() and answer["fileName"] == name
    instance_id = answer["instance"]
    result = predictions(orthanc, instance_id)
    assert [p["model"] for p in result["predictions"]] == ["test-any"]
    assert result["predictions"][0]["sourceFileName"] == name
    ds = read(orthanc.get_bytes(f"/instances/{instance_id}/file"))
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == upload.SECONDARY_CAPTURE
    assert ds.Modality == "OT" and ds.ConversionType == "WSD"
    assert ds.PhotometricInterpretation == photometric and ds.BitsAllocated == 8
    assert str(ds.PatientName) == "Zoë^Müller" and ds.PatientID == "UP1"
    for keyword in ("StudyID", "ReferringPhysicianName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                    "PatientOrientation"):
        assert keyword in ds  # type 2 attributes present
    # The UIDs chosen by the plugin give the Orthanc id in advance (the glue recognises the upload's event).
    assert instance_id == orthanc_ids(ds).instance


def test_upload_dicom_keeps_it_and_records_the_file_name(orthanc):
    dicom = synthetic_ct(seed=60)
    status, answer = orthanc.post_json("/ai/upload",
                                       {"fileName": "slice 7.dcm", "content": data_uri(dicom, "application/dicom")})
    assert status == 200 and answer["kind"] == "dicom"
    assert answer["instance"] == upload.dicom_instance_id(dicom)
    result = predictions(orthanc, answer["instance"])
    assert {p["model"] for p in result["predictions"]} == {"test-ct", "test-any"}
    assert {p["sourceFileName"] for p in result["predictions"]} == {"slice 7.dcm"}


@pytest.mark.parametrize("payload, message", [
    ({"content": data_uri(b"hello", "text/plain")}, "not a DICOM, PNG or JPEG"),
    ({"content": data_uri(image("P", "PNG"), "image/png")}, "palette PNG"),
    ({"file": "x"}, "unknown key"),
])
def test_upload_refusals_are_400(orthanc, payload, message):
    status, answer = orthanc.post_json("/ai/upload", payload)
    assert status == 400 and message in answer["error"]


def test_upload_of_a_damaged_dicom_is_400(orthanc):
    broken = synthetic_ct(seed=61)[:400]
    status, answer = orthanc.post_json("/ai/upload", {"fileName": "b.dcm", "content": data_uri(broken, "")})
    assert status == 400 and "Orthanc refused" in answer["error"]


def test_applicable_route(orthanc):
    ct = orthanc.store_http(synthetic_ct(seed=62))["ID"]
    answer = orthanc.get(f"/ai/instances/{ct}/applicable")
    assert sorted(answer["applicable"]) == ["test-any", "test-ct"] and answer["cannotPredict"] is None
    assert {m["name"] for m in answer["models"]} == {"test-any", "test-ct"}

    sc = orthanc.store_http(secondary_capture(np.zeros((32, 32), np.uint8)))["ID"]
    answer = orthanc.get(f"/ai/instances/{sc}/applicable")
    assert answer["applicable"] == ["test-any"]
    assert answer["notApplicable"] == {"test-ct": "Modality OT not in [CT]"}

    ds: Dataset = _base("1.2.840.10008.5.1.4.1.1.88.11", "SR", None, None, 1)  # no pixel data
    sr = orthanc.store_http(to_bytes(ds))["ID"]
    answer = orthanc.get(f"/ai/instances/{sr}/applicable")
    assert answer["applicable"] == [] and answer["cannotPredict"].startswith("no pixel data")

    status, _ = orthanc.request("GET", f"/ai/instances/{UNKNOWN}/applicable")
    assert status == 404


def test_series_and_study_summaries(orthanc):
    study_uid, series_uid = "1.2.826.0.1.3680043.8.498.77", "1.2.826.0.1.3680043.8.498.78"
    ids = [orthanc.store_http(synthetic_ct(seed=70 + n, study_uid=study_uid, series_uid=series_uid,
                                           instance_number=n))["ID"] for n in (3, 1, 2)]
    for instance_id in ids:
        status, _ = orthanc.post_json(f"/ai/instances/{instance_id}/predict", {"models": ["test-ct"]})
        assert status == 200
    series = orthanc.get(f"/instances/{ids[0]}/series")["ID"]
    study = orthanc.get(f"/instances/{ids[0]}/study")["ID"]
    for level, resource in (("series", series), ("studies", study)):
        answer = orthanc.get(f"/ai/{level}/{resource}/predictions")
        assert answer["level"] == level and answer["instanceCount"] == 3 and not answer["truncated"]
        assert [row["instanceNumber"] for row in answer["instances"]] == [1, 2, 3]
        assert "test-ct" in answer["models"]
        for row in answer["instances"]:
            stored = orthanc.get(f"/ai/instances/{row['instance']}/predictions")["predictions"]
            ct = next(p for p in stored if p["model"] == "test-ct")
            summary = next(p for p in row["predictions"] if p["model"] == "test-ct")
            assert (summary["topClass"], summary["topProbability"]) == (ct["topClass"], ct["topProbability"])
    status, _ = orthanc.request("GET", f"/ai/series/{UNKNOWN}/predictions")
    assert status == 404
