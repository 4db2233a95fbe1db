"""Read a stored instance and decode the frame the models look at.

Decoding is pydicom's, with the pylibjpeg plugins for JPEG (baseline,
extended, lossless), JPEG-LS, JPEG 2000 and RLE, so every transfer syntax that
Orthanc accepts by default is either decoded or refused with a reason that ends
up in the instance's ``AIStatus`` metadata. Multi-frame images: the middle
frame (``frames // 2``, 0-based) is analysed and its 1-based number recorded.

Everything that can be checked from the header is checked before any pixel is
decoded, so a 46341 × 46341 image or an SR document costs one header parse.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, pixel_array
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..models.preprocessing import PixelAttributes
from .codestream import declared_geometry, has_declared_geometry

SUPPORTED_PHOTOMETRIC = {
    "MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR",
}
# Objects that carry pixel data but are not images to classify.
NON_IMAGE_MODALITIES = {"SEG", "RTDOSE", "RTSTRUCT", "RTPLAN", "RTIMAGE", "SR", "PR", "KO", "DOC", "REG", "OT-PDF"}
PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float Pixel Data
# The plugin's own heatmap Secondary Captures (heatmap_capture.py) are never classified. They are known by three
# attributes together: the SOP class, the Manufacturer the plugin writes into everything it creates
# (structured_report.MANUFACTURER is this constant) and Image Type DERIVED\SECONDARY.
PLUGIN_MANUFACTURER = "orthanc-ai"
SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
PLUGIN_HEATMAP_REASON = "the plugin's own heatmap"
HEADER_KEYWORDS = (
    "Modality", "SOPClassUID", "PhotometricInterpretation", "BodyPartExamined",
    "ImageType", "ViewPosition", "StudyDescription", "SeriesDescription",
)


class InstanceSkipped(Exception):
    """The instance cannot or should not be analysed; the message is the recorded reason."""


class NeedsOrthancDecoding(Exception):
    """pydicom cannot decode the frame, and Orthanc's decoder cannot be called from here (a prediction
    process): the frame is to be predicted where it can (prediction_processes.py)."""


@dataclass(frozen=True)
class InstanceHeader:
    """What the pipeline needs to know about an instance before decoding its pixels."""

    header: dict[str, str]  # keyword → value, for applicability rules and the REST API
    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    bits_allocated: int
    pixels: PixelAttributes
    dataset: Dataset

    @property
    def analysed_frame_index(self) -> int:
        return self.frames // 2


def read_header(dicom: bytes, max_frame_pixels: int) -> InstanceHeader:
    """Parse the instance (pixel data left undecoded) and check it can be analysed.

    Raises only ``InstanceSkipped``: pydicom parses values when first read, so a damaged element can
    raise anywhere below, and whatever it raises is about the file.
    """
    try:
        return _read_header(dicom, max_frame_pixels)
    except InstanceSkipped:
        raise
    except (InvalidDicomError, RecursionError) as error:
        raise InstanceSkipped(f"unreadable DICOM: {error.__class__.__name__}") from error
    except Exception as error:  # pydicom raises many kinds on damaged files
        raise InstanceSkipped(f"unreadable DICOM: {error.__class__.__name__}: {error}") from error


def _read_header(dicom: bytes, max_frame_pixels: int) -> InstanceHeader:
    dataset = pydicom.dcmread(io.BytesIO(dicom), force=True)
    header = {k: _text(dataset.get(k)) for k in HEADER_KEYWORDS}

    _complete_transfer_syntax(dataset)
    if any(tag.group == 0 for tag in dataset.keys()):
        # Command elements belong in DIMSE messages, never in a stored file; pydicom will not write one back.
        raise InstanceSkipped("command set elements (group 0000) in the file: results cannot be written into it")
    if is_plugin_heatmap(dataset):
        raise InstanceSkipped(PLUGIN_HEATMAP_REASON)
    modality = header["Modality"].upper()
    if not any(tag in dataset for tag in PIXEL_DATA_TAGS):
        raise InstanceSkipped(f"no pixel data (Modality {modality or 'absent'}, SOP class {header['SOPClassUID']})")
    if modality in NON_IMAGE_MODALITIES:
        raise InstanceSkipped(f"not an image to classify (Modality {modality})")
    if 0x7FE00010 not in dataset:
        raise InstanceSkipped("float pixel data is not supported")

    rows, columns = _int(dataset, "Rows"), _int(dataset, "Columns")
    frames = max(_int(dataset, "NumberOfFrames", 1), 1)
    if rows <= 0 or columns <= 0:
        raise InstanceSkipped(f"invalid image size {rows} x {columns}")
    if rows * columns > max_frame_pixels:
        raise InstanceSkipped(f"image too large: {rows} x {columns} pixels exceeds MaxFramePixels {max_frame_pixels}")
    photometric = header["PhotometricInterpretation"].upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise InstanceSkipped(f"unsupported photometric interpretation {photometric or '(absent)'}")
    bits_allocated = _int(dataset, "BitsAllocated", 0)
    if bits_allocated not in (8, 16, 32):
        raise InstanceSkipped(f"unsupported BitsAllocated {bits_allocated}")

    pixels = PixelAttributes(
        photometric=photometric,
        bits_stored=_int(dataset, "BitsStored", bits_allocated) or bits_allocated,
        modality=modality,
        rescale_slope=_float(dataset, "RescaleSlope"),
        rescale_intercept=_float(dataset, "RescaleIntercept"),
        window_center=_float(dataset, "WindowCenter"),
        window_width=_float(dataset, "WindowWidth"),
    )
    return InstanceHeader(
        header=header,
        rows=rows,
        columns=columns,
        frames=frames,
        samples_per_pixel=_int(dataset, "SamplesPerPixel", 1),
        bits_allocated=bits_allocated,
        pixels=pixels,
        dataset=dataset,
    )


def is_plugin_heatmap(dataset: Dataset) -> bool:
    """Whether the instance is one of the plugin's heatmap Secondary Captures (see PLUGIN_MANUFACTURER)."""
    image_type = [value.strip().upper() for value in _text(dataset.get("ImageType")).split("\\")]
    return (_text(dataset.get("SOPClassUID")) == SECONDARY_CAPTURE_IMAGE_STORAGE
            and _text(dataset.get("Manufacturer")) == PLUGIN_MANUFACTURER
            and image_type[:2] == ["DERIVED", "SECONDARY"])


def decode_analysed_frame(
    instance: InstanceHeader, fallback: Callable[[int], np.ndarray] | None = None
) -> np.ndarray:
    """Decode the analysed frame: (rows, columns) stored values, or (rows, columns, 3) RGB.

    pydicom decodes first; where it cannot (e.g. 12-bit JPEG Extended, which
    pylibjpeg refuses), ``fallback`` (Orthanc's own DCMTK decoder) is tried.
    """
    dataset = instance.dataset
    index = instance.analysed_frame_index
    _check_codestream_size(instance)
    try:
        frame = pixel_array(dataset, index=index if instance.frames > 1 else None)
        if instance.pixels.photometric == "PALETTE COLOR":
            frame = apply_color_lut(frame, dataset)
    except Exception as error:
        frame = _decode_with_fallback(instance, fallback, error)
    except BaseException as error:
        if not is_extension_panic(error):
            raise
        frame = _decode_with_fallback(instance, fallback, error)
    frame = np.asarray(frame)
    colour = instance.samples_per_pixel == 3 or instance.pixels.photometric == "PALETTE COLOR"
    if frame.ndim != (3 if colour else 2):
        raise InstanceSkipped(f"decoded pixel array has unexpected shape {frame.shape}")
    return frame


def is_extension_panic(error: BaseException) -> bool:
    """A Rust extension's panic (pylibjpeg-rle on damaged RLE data), raised by pyo3 as ``PanicException``,
    a ``BaseException``: left uncaught it would end the worker thread instead of skipping the instance."""
    return type(error).__name__ == "PanicException"


def _check_codestream_size(instance: InstanceHeader) -> None:
    """Refuse a compressed frame whose own header disagrees with Rows, Columns and Samples per Pixel:
    decoders allocate what the codestream declares (codestream.py says why that matters)."""
    syntax = _transfer_syntax(instance.dataset)
    if not has_declared_geometry(syntax):
        return
    try:
        frame = get_frame(instance.dataset.PixelData, instance.analysed_frame_index, number_of_frames=instance.frames)
    except Exception:
        return  # the frame cannot be found: the decoder fails the same way, and says why
    try:
        declared = declared_geometry(frame, syntax)
    except ValueError as error:
        raise InstanceSkipped(f"cannot decode transfer syntax {syntax}: {error}") from error
    expected = (instance.rows, instance.columns, instance.samples_per_pixel)
    if (declared.rows, declared.columns, declared.components) != expected:
        raise InstanceSkipped(
            f"compressed frame declares {declared.rows} x {declared.columns} x {declared.components} samples, "
            f"the header {instance.rows} x {instance.columns} x {instance.samples_per_pixel}: not decoded")


def _complete_transfer_syntax(dataset: Dataset) -> None:
    """A file stored without meta information (allowed by Orthanc) gets the syntax pydicom detected."""
    meta = dataset.file_meta
    if "TransferSyntaxUID" in meta:
        return
    implicit, little_endian = dataset.original_encoding
    if implicit:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian


def _decode_with_fallback(
    instance: InstanceHeader, fallback: Callable[[int], np.ndarray] | None, error: BaseException
) -> np.ndarray:
    reason = f"{error.__class__.__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    if fallback is None or instance.pixels.photometric == "PALETTE COLOR":
        raise InstanceSkipped(f"cannot decode transfer syntax {_transfer_syntax(instance.dataset)}: "
                              f"{reason}") from error
    try:
        return fallback(instance.analysed_frame_index)
    except NeedsOrthancDecoding:
        raise
    except Exception as second:
        raise InstanceSkipped(
            f"cannot decode transfer syntax {_transfer_syntax(instance.dataset)}: pydicom: {reason}; "
            f"Orthanc: {second.__class__.__name__}: {second}"
        ) from second


def _transfer_syntax(dataset: Dataset) -> str:
    meta = getattr(dataset, "file_meta", None)
    return str(getattr(meta, "TransferSyntaxUID", "unknown")) if meta is not None else "unknown"


def _text(value: Any) -> str:  # an element value of any VR, as pydicom gives it
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def int_or_none(value: Any) -> int | None:
    """An IS value (Series Number, Instance Number …) as an int, None where absent or not a number."""
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _int(dataset: Dataset, keyword: str, default: int = 0) -> int:
    try:
        value = dataset.get(keyword)
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _float(dataset: Dataset, keyword: str) -> float | None:
    """First value of a DS attribute (Window Center may hold several), or None."""
    try:
        value = dataset.get(keyword)
        if value in (None, ""):
            return None
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None
