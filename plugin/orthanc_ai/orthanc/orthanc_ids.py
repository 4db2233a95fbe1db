"""The ids Orthanc gives a DICOM instance and its parents, computed from the identifiers (DicomInstanceHasher).

Orthanc's id of a patient is the SHA-1 of its Patient ID; of a study, of Patient ID and Study Instance UID
joined by '|'; and so on down to the instance, each printed as five groups of eight hexadecimal digits.
Knowing an id before the store lets the plugin recognise the echo of its own stores, fence deletions, and
find the Structured Report it would write.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pydicom.dataset import Dataset

IDENTIFIERS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


@dataclass(frozen=True)
class OrthancIds:
    """Orthanc's public ids of an instance and its parents."""

    patient: str
    study: str
    series: str
    instance: str

    def all(self) -> tuple[str, str, str, str]:
        return self.patient, self.study, self.series, self.instance


def orthanc_ids_of(patient_id: str, study_uid: str, series_uid: str, sop_uid: str) -> OrthancIds:
    """The ids of these identifiers; DCMTK's padding (spaces, NUL) is dropped first, as Orthanc reads them."""
    parts = [value.strip(" \0") for value in (patient_id, study_uid, series_uid, sop_uid)]
    return OrthancIds(*(_sha1_id("|".join(parts[: depth + 1])) for depth in range(4)))


def orthanc_ids(dataset: Dataset) -> OrthancIds:
    """The ids of an instance read with pydicom (an absent identifier counts as empty)."""
    return orthanc_ids_of(*(str(dataset.get(keyword, "") or "") for keyword in IDENTIFIERS))


def _sha1_id(text: str) -> str:
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))
