"""``POST /ai/upload``: a file chosen in Orthanc Explorer, stored as DICOM (pure logic, no Orthanc).

The Explorer sends JSON ``{"fileName", "content", "patientName", "patientId",
"patientBirthDate", "patientSex", "studyDescription", "accessionNumber"}`` where
``content`` is a data URI or plain base64. A DICOM file is stored as it is; a
PNG or JPEG becomes a Secondary Capture through Orthanc's own
``POST /tools/create-dicom``. Orthanc 1.10.1's create-dicom alone writes neither
SOP Class UID (its meta header names DCMTK's private class) nor Modality, so
``create_dicom_request`` names them, with the other attributes a Secondary
Capture needs, and UIDs of its own: knowing the UIDs before storing gives the
Orthanc id in advance (``orthanc_ids``), so the glue can set the
``AISourceFileName`` metadata before the instance is predicted.
"""
from __future__ import annotations

import base64
import binascii
import io
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from ..orthanc.orthanc_ids import orthanc_ids_of
from .request_body import SMALL_BODY_BYTES, BadRequest, BodyTooLarge, json_object

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
UPLOAD_KEYS = {
    "fileName", "content", "patientName", "patientId", "patientBirthDate", "patientSex",
    "studyDescription", "accessionNumber",
}
# What an upload without patient details gets: visibly not a real patient.
DEFAULT_PATIENT_NAME = "UNKNOWN^UPLOADED IMAGE"
DEFAULT_PATIENT_ID = "AI-UPLOAD"
DEFAULT_STUDY_DESCRIPTION = "Uploaded image"
MAX_FILE_NAME = 64  # the AIModelNNSourceFileName tag is LO

# PNG colour types Orthanc 1.10.1 converts: 0 grey, 2 RGB, 6 RGBA (alpha dropped); 8 or 16 bits.
_PNG_COLOUR_TYPES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey with alpha", 6: "RGBA"}
_PNG_CONVERTED = {0, 2, 6}


class UploadError(BadRequest):
    """A request the upload route refuses (answered with 400 and the message).

    ``convertible`` tells the Explorer that the browser can redraw the image as an
    RGB PNG and try again (palette, grey+alpha, 1-bit PNGs, CMYK JPEGs).
    """

    def __init__(self, message: str, convertible: bool = False) -> None:
        super().__init__(message)
        self.convertible = convertible


@dataclass(frozen=True)
class Upload:
    kind: str  # "dicom", "png" or "jpeg"
    file_name: str
    data: bytes
    fields: Mapping[str, str] = field(default_factory=dict)


def parse_upload(body: bytes, max_bytes: int) -> Upload:
    """Validate the JSON body of ``POST /ai/upload``; raises ``UploadError`` with a clear message."""
    try:
        request = json_object(body, UPLOAD_KEYS, '{"fileName": "x.png", "content": "data:…"}',
                              limit=max_bytes * 4 // 3 + SMALL_BODY_BYTES)
    except BodyTooLarge:
        raise  # 413, not the upload form's 400
    except BadRequest as error:
        raise UploadError(str(error)) from error
    for key, value in request.items():
        if value is not None and not isinstance(value, str):
            raise UploadError(f'"{key}" must be a string')
    content = request.get("content")
    if not content:
        raise UploadError('"content" is missing: the file as a data URI or base64')
    data = decode_content(content, max_bytes)
    kind = sniff(data)
    file_name = clean_file_name(request.get("fileName") or "")
    fields = patient_fields(request) if kind != "dicom" else {}
    if kind == "png":
        check_png(data)
    elif kind == "jpeg":
        check_jpeg(data)
    return Upload(kind, file_name, data, fields)


def decode_content(content: str, max_bytes: int) -> bytes:
    if content.startswith("data:"):
        header, _, content = content.partition(",")
        if not header.endswith(";base64"):
            raise UploadError('"content" data URI must be base64-encoded (data:…;base64,…)')
    if len(content) > (max_bytes * 4) // 3 + 4:
        raise UploadError(f"file too large (more than {max_bytes // (1024 * 1024)} MB)")
    try:
        data = base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError) as error:
        raise UploadError(f'"content" is not valid base64: {error}') from error
    if not data:
        raise UploadError("the file is empty")
    return data


def sniff(data: bytes) -> str:
    """The kind of file from its first bytes, not from its name."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[128:132] == b"DICM":
        return "dicom"
    raise UploadError("not a DICOM, PNG or JPEG file (DICOM files need the 128-byte preamble and 'DICM')")


def check_png(data: bytes) -> None:
    if len(data) < 29 or data[12:16] != b"IHDR":
        raise UploadError("damaged PNG file (no IHDR chunk)")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if width == 0 or height == 0:
        raise UploadError("PNG image has no pixels")
    if colour not in _PNG_CONVERTED or depth not in (8, 16):
        kind = _PNG_COLOUR_TYPES.get(colour, f"colour type {colour}")
        raise UploadError(f"Orthanc cannot convert a {depth}-bit {kind} PNG; re-save it as 8-bit grey or RGB",
                          convertible=True)


def check_jpeg(data: bytes) -> None:
    """Refuse what Orthanc's create-dicom cannot convert (CMYK); the rest is left to Orthanc."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise UploadError("damaged JPEG file")
        marker = data[position + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            position += 2
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            components = data[position + 9] if position + 9 < len(data) else 0
            if components not in (1, 3):
                raise UploadError(f"Orthanc cannot convert a JPEG with {components} colour components (CMYK?); "
                                  "re-save it as grey or RGB", convertible=True)
            return
        position += 2 + length
    raise UploadError("damaged JPEG file (no frame header)")


def clean_file_name(name: str) -> str:
    """The file's base name as a DICOM LO value: no path, no backslash or control characters, ≤ 64."""
    base = re.split(r"[\\/]", name)[-1]
    base = "".join(c for c in base if c.isprintable()).strip()
    if len(base) > MAX_FILE_NAME:
        stem, dot, extension = base.rpartition(".")
        keep = extension if dot and len(extension) <= 8 else ""
        base = base[: MAX_FILE_NAME - len(keep) - 2] + "…" + ("." + keep if keep else "")
        base = base[:MAX_FILE_NAME]
    return base


def _text(request: Mapping[str, Any], key: str, default: str, limit: int, label: str) -> str:
    value = (request.get(key) or "").strip()
    if not value:
        return default
    if "\\" in value or any(not c.isprintable() for c in value):
        raise UploadError(f"{label} must not contain a backslash or control characters")
    if len(value) > limit:
        raise UploadError(f"{label} is longer than {limit} characters")
    return value


def patient_fields(request: Mapping[str, Any]) -> dict[str, str]:
    """DICOM attributes from the form; defaults that are visibly not a real patient."""
    name = _text(request, "patientName", DEFAULT_PATIENT_NAME, 64, "Patient name")
    if name.count("^") > 4 or "=" in name:
        raise UploadError("Patient name: up to five parts separated by ^ (Family^Given^Middle^Prefix^Suffix)")
    fields = {
        "PatientName": name,
        "PatientID": _text(request, "patientId", DEFAULT_PATIENT_ID, 64, "Patient ID"),
        "StudyDescription": _text(request, "studyDescription", DEFAULT_STUDY_DESCRIPTION, 64, "Study description"),
        "AccessionNumber": _text(request, "accessionNumber", "", 16, "Accession number"),
        "PatientBirthDate": "",
        "PatientSex": "",
    }
    birth = (request.get("patientBirthDate") or "").strip().replace("-", "")
    if birth:
        try:
            datetime.strptime(birth, "%Y%m%d")
        except ValueError as error:
            raise UploadError("Birth date must be a date such as 1970-01-31") from error
        fields["PatientBirthDate"] = birth
    sex = (request.get("patientSex") or "").strip().upper()
    if sex not in ("", "M", "F", "O"):
        raise UploadError("Sex must be M, F, O or empty")
    fields["PatientSex"] = sex
    return fields


def create_dicom_request(upload: Upload, now: datetime | None = None) -> dict[str, Any]:
    """The body of ``POST /tools/create-dicom`` that makes a Secondary Capture of a PNG/JPEG."""
    now = now or datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    tags = dict(upload.fields)
    tags.update(
        {
            "SpecificCharacterSet": "ISO_IR 192",  # UTF-8: names typed in the Explorer keep their accents
            "SOPClassUID": SECONDARY_CAPTURE,
            "StudyInstanceUID": generate_uid(),
            "SeriesInstanceUID": generate_uid(),
            "SOPInstanceUID": generate_uid(),
            "Modality": "OT",
            "ConversionType": "WSD",  # workstation
            "StudyDate": date,
            "StudyTime": time,
            "StudyID": "",
            "ReferringPhysicianName": "",
            "SeriesNumber": "1",
            "InstanceNumber": "1",
            "PatientOrientation": "",
            "SeriesDescription": upload.file_name or "Uploaded image",
            "ImageComments": f"Uploaded through Orthanc Explorer from {upload.file_name or 'a file'}",
        }
    )
    mime = "image/png" if upload.kind == "png" else "image/jpeg"
    return {
        # Force: Orthanc 1.10.1 refuses our own UIDs ("inherited from a parent module") without it.
        "Force": True,
        "Tags": tags,
        "Content": f"data:{mime};base64,{base64.b64encode(upload.data).decode('ascii')}",
    }


def dicom_instance_id(data: bytes) -> str | None:
    """The Orthanc id a DICOM file will get, or None where the file cannot tell (Orthanc decides)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True,
                             specific_tags=["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
        values = [str(ds.get(k, "") or "") for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                                                      "SOPInstanceUID")]
    except Exception:
        return None
    if not all(values[1:]):
        return None
    return orthanc_ids_of(*values).instance


def created_instance_id(request: Mapping[str, Any]) -> str:
    tags = request["Tags"]
    return orthanc_ids_of(tags["PatientID"], tags["StudyInstanceUID"], tags["SeriesInstanceUID"],
                          tags["SOPInstanceUID"]).instance
