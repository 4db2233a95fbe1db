"""DICOM files for the tests: real ones from ../shared/data and synthetic ones made with pydicom."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

PROJECT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("ORTHANC_AI_DATA", PROJECT.parent / "shared" / "data"))
ROBUSTNESS = DATA / "dicom-robustness" / "orthanc-tests"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def shared_data(relative: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (set ORTHANC_AI_DATA or place ../shared/data beside the project)")
    return path


def synthetic_ct(seed: int = 0, rows: int = 64, columns: int = 64, study_uid: str | None = None,
                 series_uid: str | None = None, instance_number: int = 1, patient_id: str = "AI-TEST-1") -> bytes:
    """A small, valid CT Image Storage instance in Hounsfield units (signed 16-bit, intercept -1024)."""
    rng = np.random.default_rng(seed)
    stored = (rng.normal(1024 - 600, 300, (rows, columns))).clip(0, 4095).astype(np.int16)
    return to_bytes(_ct(stored, 12, study_uid, series_uid, instance_number, patient_id))


def secondary_capture(pixels: np.ndarray, modality: str = "OT", study_uid: str | None = None,
                      series_uid: str | None = None, instance_number: int = 1) -> bytes:
    """An 8-bit Secondary Capture of a grey (H, W) or RGB (H, W, 3) uint8 image."""
    ds = _base(SECONDARY_CAPTURE, modality, study_uid, series_uid, instance_number)
    ds.Rows, ds.Columns = pixels.shape[:2]
    colour = pixels.ndim == 3
    ds.SamplesPerPixel, ds.PhotometricInterpretation = (3, "RGB") if colour else (1, "MONOCHROME2")
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.ConversionType = "WSD"
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return to_bytes(ds)


def _base(sop_class: str, modality: str, study_uid: str | None, series_uid: str | None, number: int,
          patient_id: str = "AI-TEST-1") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.PatientName, ds.PatientID = "TEST^AI", patient_id
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyDate, ds.StudyTime = "20260101", "120000"
    ds.Modality, ds.InstanceNumber = modality, number
    ds.StudyDescription = "AI plugin test"
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def read(dicom: bytes, **options) -> Dataset:
    return pydicom.dcmread(io.BytesIO(dicom), force=True, **options)


def ct_from_grey(grey: np.ndarray, study_uid: str, series_uid: str, instance_number: int,
                 patient_id: str = "AI-TEST-CT", series_number: int = 2) -> bytes:
    """A CT slice in Hounsfield units from a display-windowed 8-bit image (lung CT sets are published so).

    The grey levels are mapped back through the soft-tissue window the lung models apply (centre 40,
    width 400), so the models see the published image again.
    """
    hounsfield = grey.astype(np.float64) / 255.0 * 400.0 - 160.0
    stored = np.round(hounsfield + 1024).astype(np.int16)
    ds = _ct(stored, 16, study_uid, series_uid, instance_number, patient_id)
    ds.SeriesNumber = series_number
    return to_bytes(ds)


def _ct(stored: np.ndarray, bits_stored: int, study_uid: str | None, series_uid: str | None, instance_number: int,
        patient_id: str) -> Dataset:
    """A chest CT Image Storage dataset of these signed stored values (Hounsfield units + 1024)."""
    ds = _base(CT_IMAGE_STORAGE, "CT", study_uid, series_uid, instance_number, patient_id)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.BodyPartExamined = "CHEST"
    ds.PixelData = stored.tobytes()
    return ds
