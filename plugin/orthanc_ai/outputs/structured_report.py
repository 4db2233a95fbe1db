"""The series' DICOM Structured Report: a Comprehensive 3D SR whose root is TID 1500 (IHE AI Results).

Built with highdicom, never by hand. One SR per analysed series and model:

- one measurement group (TID 1501) per analysed image: algorithm identification, the top class as
  the group's Finding, each class's probability as a numeric measurement, the image (and frame) referenced;
- one measurement group for the series summary: per class the number of images where it is the top
  class and its highest probability, the key images referenced, and the series conclusion.

docs/structured-report.md documents the content tree, the codes and the UIDs like a conformance statement.

The SR's UIDs are derived from what it says, not drawn at random: its series from the source series and the
model, its SOP Instance UID from the results it carries. Two nodes that report the same results write the
same instance (Orthanc keeps one), and a report that already exists is not written again.
"""
from __future__ import annotations

import copy
import hashlib
import io
from collections.abc import Mapping
from datetime import datetime

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from .. import __version__
from ..dicom.decoding import PLUGIN_MANUFACTURER, int_or_none
from ..dicom.private_tags import DISCLAIMER
from ..models.model_card import ClassCode, ModelCard
from .series_summary import AnalysedImage, SeriesSummary

MANUFACTURER = PLUGIN_MANUFACTURER
PROBABILITY_UNIT = hd.sr.CodedConcept("{probability}", "UCUM", "probability")
IMAGE_COUNT_UNIT = hd.sr.CodedConcept("{images}", "UCUM", "images")
# The plugin as an observer device: one fixed UID for every node and version (the software version is in
# Contributing Equipment and in each group's Algorithm Identification).
DEVICE_OBSERVER_UID = generate_uid(entropy_srcs=["orthanc-ai device observer"])
SERIES_NUMBER_OFFSET = 9000  # the SR series sorts after the images' (9000 + the source series number)
SUMMARY_TRACKING_IDENTIFIER = "series summary"


def report_series_uid(study_uid: str, series_uid: str, model: str) -> str:
    """The SR series of a source series and model: the same on every node and every re-prediction."""
    return generate_uid(entropy_srcs=["orthanc-ai SR series", study_uid, series_uid, model])


def report_instance_uid(series_uid: str, summary: SeriesSummary) -> str:
    """The SR instance: a function of the results it reports, so equal results give the same UID."""
    return generate_uid(entropy_srcs=["orthanc-ai SR", series_uid, summary.model, summary.version,
                                      results_digest(summary)])


def results_digest(summary: SeriesSummary) -> str:
    digest = hashlib.sha256()
    for image in summary.images:
        result = image.result
        digest.update(repr((image.sop_instance_uid, result.frame, result.predicted_at.isoformat(),
                            result.classes, result.probabilities)).encode())
    return digest.hexdigest()


def build_report(card: ModelCard, summary: SeriesSummary, evidence: Mapping[str, Dataset],
                 created_at: datetime | None = None) -> Dataset:
    """The SR of ``summary``; ``evidence`` maps each analysed image's SOP Instance UID to its header."""
    images = [_with_patient_and_study_attributes(evidence[image.sop_instance_uid]) for image in summary.images]
    first = images[0]
    series_uid = report_series_uid(first.StudyInstanceUID, first.SeriesInstanceUID, card.name)
    algorithm = hd.sr.AlgorithmIdentification(name=card.name, version=summary.version, manufacturer=MANUFACTURER)
    groups = [_image_group(card, image, evidence[image.sop_instance_uid], algorithm, series_uid)
              for image in summary.images]
    groups.append(_summary_group(card, summary, evidence, algorithm, series_uid))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device,
                observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                    uid=DEVICE_OBSERVER_UID, name=MANUFACTURER, manufacturer_name=MANUFACTURER,
                    model_name=card.name,
                ),
            )
        ),
        procedure_reported=_procedure(first),
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    created_at = created_at or datetime.now().astimezone()
    source_number = int_or_none(first.get("SeriesNumber"))
    sr = hd.sr.Comprehensive3DSR(
        evidence=images,
        content=report,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER_OFFSET + (source_number or 0),
        sop_instance_uid=report_instance_uid(first.SeriesInstanceUID, summary),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=f"AI {card.name} {summary.version}"[:64],
        content_date=created_at.date(),
        content_time=created_at.time(),
        contributing_equipment=[
            hd.ContributingEquipment(
                manufacturer=MANUFACTURER,
                purpose_of_reference=codes.DCM.ProcessingEquipment,
                manufacturer_model_name=card.name,
                software_versions=[f"orthanc-ai {__version__}", f"{card.name} {summary.version}"],
                contribution_datetime=created_at,
                contribution_description=f"{card.title}. {DISCLAIMER}"[:1024],
            )
        ],
    )
    return sr


def encode(report: Dataset) -> bytes:
    """The SR as a DICOM file (Part 10, with its file meta information)."""
    buffer = io.BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _image_group(card: ModelCard, image: AnalysedImage, header: Dataset,
                 algorithm: hd.sr.AlgorithmIdentification, series_uid: str
                 ) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    result = image.result
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[series_uid, image.sop_instance_uid]),
            identifier=_tracking_name(image),
        ),
        # TID 1501's Finding row (DCM 121071): the image's top class.
        finding_type=_concept(card.class_code(result.top_class)),
        algorithm_id=algorithm,
        source_images=[_source_image(header, result.frame)],
        measurements=[
            hd.sr.Measurement(name=_concept(card.class_code(name)), value=probability, unit=PROBABILITY_UNIT)
            for name, probability in zip(result.classes, result.probabilities, strict=True)
        ],
    )


def _summary_group(card: ModelCard, summary: SeriesSummary, evidence: Mapping[str, Dataset],
                   algorithm: hd.sr.AlgorithmIdentification, series_uid: str
                   ) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    measurements = []
    for entry in summary.classes:
        concept = _concept(card.class_code(entry.name))
        measurements.append(hd.sr.Measurement(name=concept, value=entry.images_with_top_class,
                                              unit=IMAGE_COUNT_UNIT))
        measurements.append(hd.sr.Measurement(name=concept, value=entry.highest_probability, unit=PROBABILITY_UNIT,
                                              derivation=codes.SCT.Maximum))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[series_uid, SUMMARY_TRACKING_IDENTIFIER]),
            identifier=SUMMARY_TRACKING_IDENTIFIER,
        ),
        finding_type=codes.DCM.Summary,
        algorithm_id=algorithm,
        source_images=[_source_image(evidence[key.sop_instance_uid], key.result.frame)
                       for key in summary.key_images],
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.DCM.Conclusion,
                                        value=_concept(card.class_code(summary.conclusion.class_name)))
        ],
    )


# Type 2 attributes the SR copies from its evidence (Patient and General Study modules): present, maybe empty.
COPIED_TYPE2_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                           "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _with_patient_and_study_attributes(header: Dataset) -> Dataset:
    """The header, with any of those attributes an image lacks added empty (a copy; the header is not changed)."""
    missing = [keyword for keyword in COPIED_TYPE2_ATTRIBUTES if keyword not in header]
    if not missing:
        return header
    completed = copy.copy(header)
    for keyword in missing:
        setattr(completed, keyword, None)
    return completed


def _source_image(header: Dataset, frame: int) -> hd.sr.SourceImageForMeasurementGroup:
    # Frame numbers are referenced only in multi-frame images (PS3.3 C.17.3.2.1 forbids them otherwise).
    multi_frame = int(header.get("NumberOfFrames", 1) or 1) > 1
    return hd.sr.SourceImageForMeasurementGroup.from_source_image(
        header, referenced_frame_numbers=[frame] if multi_frame else None)


def _procedure(header: Dataset) -> hd.sr.CodedConcept:
    modality = str(header.get("Modality", "")).upper()
    if modality == "CT":
        return _concept_of(codes.SCT.ComputedTomography)
    if modality in ("CR", "DX"):
        return _concept_of(codes.SCT.PlainRadiography)
    return _concept_of(codes.SCT.ImagingProcedure)


def _concept(code: ClassCode) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def _concept_of(code: object) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept.from_code(code)  # type: ignore[arg-type]


def _tracking_name(image: AnalysedImage) -> str:
    return f"image {image.instance_number}" if image.instance_number is not None else image.sop_instance_uid
