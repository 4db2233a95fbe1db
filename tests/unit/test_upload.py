"""The upload route's pure logic: validating the request, the create-dicom body, Orthanc ids."""
from __future__ import annotations

import base64
import io
import json
from datetime import datetime

import numpy as np
import pytest
from PIL import Image

from orthanc_ai.orthanc.orthanc_ids import orthanc_ids_of
from orthanc_ai.web import upload
from orthanc_ai.web.request_body import BodyTooLarge
from orthanc_ai.web.upload import UploadError, parse_upload
from tests.support.dicom_files import read, synthetic_ct

MB = 1024 * 1024


def image_bytes(mode: str, fmt: str = "PNG", size=(20, 10)) -> bytes:
    grey = (np.arange(size[0] * size[1]) % 256).astype(np.uint8).reshape(size[1], size[0])
    buffer = io.BytesIO()
    Image.fromarray(grey).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


def body(content: bytes, data_uri: str = "data:image/png;base64,", **fields) -> bytes:
    return json.dumps({"content": data_uri + base64.b64encode(content).decode(), **fields}).encode()


def test_png_with_defaults_that_are_visibly_not_a_patient():
    parsed = parse_upload(body(image_bytes("L"), fileName="C:\\Users\\me\\chest 1.png"), MB)
    assert parsed.kind == "png" and parsed.file_name == "chest 1.png"
    assert parsed.fields["PatientName"] == "UNKNOWN^UPLOADED IMAGE"
    assert parsed.fields["PatientID"] == "AI-UPLOAD"
    assert parsed.fields["StudyDescription"] == "Uploaded image"


def test_kind_comes_from_the_bytes_not_the_name():
    assert parse_upload(body(image_bytes("RGB", "JPEG"), "", fileName="x.png"), MB).kind == "jpeg"
    dicom_body = body(synthetic_ct(), "data:application/octet-stream;base64,", fileName="x.png")
    assert parse_upload(dicom_body, MB).kind == "dicom"
    with pytest.raises(UploadError, match="not a DICOM, PNG or JPEG"):
        parse_upload(body(b"GIF89a" + b"\0" * 200), MB)


@pytest.mark.parametrize("mode, convertible", [("L", None), ("RGB", None), ("RGBA", None), ("I;16", None),
                                               ("P", True), ("LA", True), ("1", True)])
def test_png_colour_types_orthanc_cannot_convert_are_refused_as_convertible(mode, convertible):
    data = image_bytes(mode)
    if convertible is None:
        parse_upload(body(data), MB)
    else:
        with pytest.raises(UploadError, match="Orthanc cannot convert") as refused:
            parse_upload(body(data), MB)
        assert refused.value.convertible


def test_cmyk_jpeg_is_refused_as_convertible():
    with pytest.raises(UploadError, match="CMYK") as refused:
        parse_upload(body(image_bytes("CMYK", "JPEG")), MB)
    assert refused.value.convertible
    parse_upload(body(image_bytes("L", "JPEG")), MB)


@pytest.mark.parametrize(
    "request_body, message",
    [
        (b"not json", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"content": "AAAA", "patientname": "x"}', "unknown key"),
        (b'{"fileName": "x.png"}', '"content" is missing'),
        (b'{"content": 5}', "must be a string"),
        (b'{"content": "data:image/png,abc"}', "base64"),
        (b'{"content": "%%%%"}', "not valid base64"),
    ],
)
def test_bad_requests(request_body, message):
    with pytest.raises(UploadError, match=message):
        parse_upload(request_body, MB)


def test_too_large_before_decoding():
    # A body far above the limit is refused before it is parsed (413), one just above it before decoding.
    with pytest.raises(BodyTooLarge, match="larger than this route accepts"):
        parse_upload(body(b"\0" * (2 * MB)), 1 * MB)
    with pytest.raises(UploadError, match="too large"):
        parse_upload(body(b"\0" * (MB + 3000)), 1 * MB)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"patientName": "A\\B"}, "backslash"),
        ({"patientName": "x" * 65}, "longer than 64"),
        ({"patientName": "A^B^C^D^E^F"}, "five parts"),
        ({"patientId": "line\nbreak"}, "control characters"),
        ({"accessionNumber": "12345678901234567"}, "longer than 16"),
        ({"patientBirthDate": "31/01/1970"}, "Birth date"),
        ({"patientSex": "X"}, "Sex"),
    ],
)
def test_patient_fields_are_validated(fields, message):
    with pytest.raises(UploadError, match=message):
        parse_upload(body(image_bytes("L"), **fields), MB)


def test_patient_fields_as_typed():
    parsed = parse_upload(body(image_bytes("L"), patientName="Müller^Zoë", patientId=" P-1 ",
                               patientBirthDate="1970-01-31", patientSex="f", accessionNumber="A1"), MB)
    assert parsed.fields == {"PatientName": "Müller^Zoë", "PatientID": "P-1", "StudyDescription": "Uploaded image",
                             "AccessionNumber": "A1", "PatientBirthDate": "19700131", "PatientSex": "F"}


def test_file_names_become_lo_values():
    assert upload.clean_file_name("/tmp/a/b.png") == "b.png"
    assert upload.clean_file_name("tab\there.png") == "tabhere.png"
    long = upload.clean_file_name("x" * 100 + ".jpeg")
    assert len(long) <= 64 and long.endswith(".jpeg")


def test_create_dicom_request_makes_a_secondary_capture():
    parsed = parse_upload(body(image_bytes("L"), fileName="scan.png", patientName="DOE^JANE"), MB)
    request = upload.create_dicom_request(parsed, now=datetime(2026, 11, 22, 5, 6, 7))
    tags = request["Tags"]
    assert request["Force"] is True
    assert request["Content"].startswith("data:image/png;base64,")
    assert base64.b64decode(request["Content"].split(",", 1)[1]) == parsed.data
    assert tags["SOPClassUID"] == upload.SECONDARY_CAPTURE
    assert tags["Modality"] == "OT" and tags["ConversionType"] == "WSD"
    assert tags["SpecificCharacterSet"] == "ISO_IR 192"
    assert tags["PatientName"] == "DOE^JANE" and tags["SeriesDescription"] == "scan.png"
    assert (tags["StudyDate"], tags["StudyTime"]) == ("20261122", "050607")
    uids = [tags[k] for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    assert len(set(uids)) == 3 and all(len(uid) <= 64 for uid in uids)
    again = upload.create_dicom_request(parsed)["Tags"]
    assert again["SOPInstanceUID"] != tags["SOPInstanceUID"]  # fresh UIDs per upload


def test_orthanc_ids():
    # Checked against a real Orthanc in tests/integration/test_explorer_routes.py.
    identifier = orthanc_ids_of("P", "1.2", "1.2.3", "1.2.3.4").instance
    assert len(identifier) == 44 and identifier.count("-") == 4
    assert identifier == orthanc_ids_of(" P ", "1.2", "1.2.3", "1.2.3.4 ").instance
    dicom = synthetic_ct(seed=1)
    ds = read(dicom)
    assert upload.dicom_instance_id(dicom) == orthanc_ids_of(
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID).instance
    assert upload.dicom_instance_id(b"\0" * 132) is None
