"""The heatmap Secondary Capture: one model's class-activation map on one image, as a DICOM image.

Built with highdicom (``SCImage.from_ref_dataset``), never by hand: an 8-bit RGB Secondary Capture of the
analysed frame, rendered grey with the model's own preprocessing window (``frame_to_unit_grey`` with the
card's spec, at the frame's own size), the top class's map laid over it with ``heatmap_rendering.blend``,
and a colour bar (red = the map's highest value, blue = its lowest; no text) to the right of the image.
Any viewer and any PACS that receives the study shows it. docs/heatmaps.md documents it.

- Same patient and study as the source image; its own series per source series and model
  (Series Description ``AI heatmap: <model>``, Series Number 8000 + the source's), Instance Number the
  source's, Image Type DERIVED\\SECONDARY, Manufacturer ``orthanc-ai``.
- The source image in the Source Image Sequence (with the Referenced Frame Number of a multi-frame
  image), and a Derivation Description naming the model, its version, the class and the disclaimer.
- UIDs derived, not drawn: the series from (study, source series, model), the instance from (source SOP
  Instance UID, model, version, prediction date-time). Two nodes write the same instance, and a
  re-prediction gives a new one (the writer then deletes the old: heatmap_writer.py).

The plugin never classifies its own heatmaps: decoding.is_plugin_heatmap recognises them.
"""
from __future__ import annotations

import math
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .. import __version__
from ..dicom.decoding import PLUGIN_MANUFACTURER, int_or_none
from ..dicom.private_tags import DISCLAIMER, Heatmap, ModelResult
from ..models.model_card import ModelCard
from ..models.preprocessing import PixelAttributes, frame_to_unit_grey
from .heatmap_rendering import DEFAULT_OPACITY, blend, jet, normalised, on_frame

SERIES_NUMBER_OFFSET = 8000  # sorts after the images, before the SRs (structured_report: 9000 + the source's)
SERIES_DESCRIPTION_PREFIX = "AI heatmap: "
# Frames larger than this (longest side, pixels) are reduced by the smallest integer step that fits.
MAX_SIDE = 1024


def capture_series_uid(study_uid: str, source_series_uid: str, model: str) -> str:
    """The heatmap series of a source series and model: the same on every node and every re-prediction."""
    return generate_uid(entropy_srcs=["orthanc-ai heatmap series", study_uid, source_series_uid, model])


def capture_instance_uid(source_sop_instance_uid: str, result: ModelResult) -> str:
    """The heatmap of one prediction: a new one for each prediction (its date-time as written in the tags)."""
    return generate_uid(entropy_srcs=["orthanc-ai heatmap", source_sop_instance_uid, result.model, result.version,
                                      prediction_datetime(result)])


def prediction_datetime(result: ModelResult) -> str:
    """The prediction's date-time exactly as the private tags hold it (a DT value, private_tags)."""
    return result.predicted_at.strftime("%Y%m%d%H%M%S.%f%z")


def reduction_step(rows: int, columns: int, max_side: int = MAX_SIDE) -> int:
    """The integer step that brings the longest side to at most ``max_side`` (1 for most images)."""
    return max(1, math.ceil(max(rows, columns) / max_side))


def render(grey: np.ndarray, heatmap: Heatmap, opacity: float = DEFAULT_OPACITY) -> np.ndarray:
    """RGB uint8: the grey frame (0–1, at the frame's size) with the map blended over it and the colour bar."""
    step = reduction_step(*grey.shape)
    if step > 1:
        grey = _box_mean(grey, step)
        left, top, right, bottom = heatmap.region
        heatmap = Heatmap(heatmap.class_name, heatmap.rows, heatmap.columns, heatmap.values,
                          (left / step, top / step, right / step, bottom / step))
    rows, columns = grey.shape
    image = blend(grey, normalised(on_frame(heatmap, rows, columns)), opacity)
    return np.concatenate([image, colour_bar(rows, columns)], axis=1)


def colour_bar(rows: int, columns: int) -> np.ndarray:
    """The legend beside the image: a black gap, then the jet scale from blue (bottom) to red (top)."""
    width = max(4, max(rows, columns) // 32)
    gap = max(2, width // 2)
    margin = rows // 10
    strip = np.zeros((rows, gap + width, 3), dtype=np.uint8)
    span = rows - 2 * margin
    if span > 0:
        levels = np.linspace(1.0, 0.0, span, dtype=np.float32)
        strip[margin:margin + span, gap:] = jet(levels)[:, None, :]
    return strip


def _box_mean(image: np.ndarray, step: int) -> np.ndarray:
    """Mean of each ``step`` × ``step`` block; the last blocks repeat the edge where the size is not a multiple."""
    rows, columns = image.shape
    padded = np.pad(image, ((0, -rows % step), (0, -columns % step)), mode="edge")
    return padded.reshape(padded.shape[0] // step, step, padded.shape[1] // step, step).mean(axis=(1, 3))


def build_capture(card: ModelCard, result: ModelResult, source: Dataset, frame: np.ndarray,
                  pixels: PixelAttributes, created_at: datetime | None = None) -> hd.sc.SCImage:
    """The heatmap Secondary Capture of ``result`` (which must carry a heatmap) on ``source``'s analysed
    ``frame`` (decoded stored values, as the model saw them; ``pixels`` says how to window them)."""
    heatmap = result.heatmap
    if heatmap is None:
        raise ValueError(f"{result.model}: the result has no heatmap")
    created_at = created_at or datetime.now().astimezone()
    grey = frame_to_unit_grey(frame, pixels, card.preprocessing)
    step = reduction_step(*grey.shape)
    rgb = render(grey, heatmap)
    source_series_number = int_or_none(source.get("SeriesNumber"))
    orientation = _patient_orientation(source)
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=capture_series_uid(source.StudyInstanceUID, source.SeriesInstanceUID, card.name),
        series_number=SERIES_NUMBER_OFFSET + (source_series_number or 0),
        sop_instance_uid=capture_instance_uid(source.SOPInstanceUID, result),
        instance_number=int_or_none(source.get("InstanceNumber")) or 1,
        manufacturer=PLUGIN_MANUFACTURER,
        # highdicom wants single letters here; the source's own orientation (or none) is set below.
        patient_orientation=("L", "P"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=f"{SERIES_DESCRIPTION_PREFIX}{card.name}"[:64],
        manufacturer_model_name=card.name[:64],
        software_versions=f"orthanc-ai {__version__}",
        content_date=created_at.date(),
        content_time=created_at.time(),
        contributing_equipment=[
            hd.ContributingEquipment(
                manufacturer=PLUGIN_MANUFACTURER,
                purpose_of_reference=codes.DCM.ProcessingEquipment,
                manufacturer_model_name=card.name,
                software_versions=[f"orthanc-ai {__version__}", f"{card.name} {result.version}"],
                contribution_datetime=created_at,
                contribution_description=f"{card.title}. {DISCLAIMER}"[:1024],
            )
        ],
    )
    # Patient Orientation is Type 2 in a Secondary Capture (PS3.3 C.7.6.1.1.1): the rows and columns are the
    # frame's, so its orientation is the source's, several letters per value allowed; empty when unknown.
    capture.PatientOrientation = orientation  # type: ignore[assignment]  # None: present and empty
    _copy_anatomy(source, capture)
    # What highdicom's SCImage does not set: where the image comes from and what it shows.
    capture.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    capture.BurnedInAnnotation = "NO"  # the colour bar has no text: nothing identifies the patient or date
    capture.SourceImageSequence = [_source_reference(source, result.frame)]
    capture.DerivationDescription = derivation_description(card, result, step)[:1024]
    capture.ImageComments = (f"Class-activation map of {card.name} {result.version}: {heatmap.class_name} "
                             f"{result.top_probability:.2f}")[:10240]
    return capture


def derivation_description(card: ModelCard, result: ModelResult, step: int = 1) -> str:
    heatmap = result.heatmap
    class_name = heatmap.class_name if heatmap is not None else result.top_class
    reduced = f" reduced by {step} in each direction," if step > 1 else ""
    return (f"Class-activation map of AI model {card.name} version {result.version} for class {class_name} "
            f"(probability {result.top_probability:.2f}), predicted {result.predicted_at.isoformat(timespec='seconds')}"
            f" on frame {result.frame} of the source image, rendered on that frame with the model's window,"
            f"{reduced} in jet colours (red: where the model's evidence for the class is strongest; blue: weakest; "
            f"relative to the map's own range) at {DEFAULT_OPACITY:.0%} opacity; colour bar on the right. "
            f"{DISCLAIMER}")


def _copy_anatomy(source: Dataset, capture: Dataset) -> None:
    """Body Part Examined and Laterality (General Series) as the source has them.

    Laterality is Type 2C: required for a paired body part. Without the source's body part it is sent
    empty (unknown); with an unpaired one (CHEST) it stays absent, as in the source.
    """
    body_part = str(source.get("BodyPartExamined", "") or "").strip()
    laterality = str(source.get("Laterality", "") or "").strip()
    if body_part:
        capture.BodyPartExamined = body_part
    if laterality:
        capture.Laterality = laterality
    elif not body_part:
        capture.Laterality = None


def _source_reference(source: Dataset, frame: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    # Frame numbers are referenced only in multi-frame images (PS3.3 C.7.6.1.1.3 / C.12.1.1.3).
    if (int_or_none(source.get("NumberOfFrames")) or 1) > 1:
        item.ReferencedFrameNumber = int(frame)
    item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(
        codes.DCM.SourceImageForImageProcessingOperation)]
    return item


_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # +x, -x; +y, -y; +z, -z of the patient coordinate system


def _patient_orientation(source: Dataset) -> list[str] | None:
    """The source's Patient Orientation, else the one its Image Orientation (Patient) gives, else None."""
    given = [str(value) for value in (source.get("PatientOrientation") or [])]
    if len(given) == 2 and all(given):
        return given
    cosines = source.get("ImageOrientationPatient")
    try:
        values = [float(v) for v in cosines] if cosines is not None else []
    except (TypeError, ValueError):
        return None
    if len(values) != 6:
        return None
    return [_direction(values[:3]), _direction(values[3:])]


def _direction(vector: list[float]) -> str:
    """Letters of a direction, most significant first (PS3.3 C.7.6.1.1.1), ignoring components under 0.1."""
    order = sorted(range(3), key=lambda axis: -abs(vector[axis]))
    letters = [_LETTERS[axis][0 if vector[axis] > 0 else 1] for axis in order if abs(vector[axis]) >= 0.1]
    return "".join(letters[:3]) or "L"
