"""Turn a decoded image into the tensor a model expects.

This is the single preprocessing implementation of the project: the training
scripts in ``training/`` import it too, so what a model saw while it was
trained is exactly what it sees inside Orthanc (no train/serve skew).

Two steps:

1. ``frame_to_unit_grey`` brings a decoded DICOM frame (stored values) to a
   grey image in [0, 1], in the order of PS3.3 C.7.6.3.1 / C.11: modality LUT
   (Rescale Slope/Intercept, giving Hounsfield units for CT), then a VOI window
   (the model's CT window, else the file's own window, else the full range of
   the stored bits or robust percentiles), then MONOCHROME1 inversion.
   Training images (8-bit JPEG/PNG that were windowed by their publishers) skip
   this step: ``grey_from_8bit`` divides them by 255.
2. ``unit_grey_to_tensor`` fits the grey image to the model's input size
   (stretch, or pad to a square first so the aspect ratio is no cue), with an
   antialiased bilinear resampling, replicates channels and normalises.

Only numpy is needed, so the plugin carries no image library.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

RESIZE_MODES = ("stretch", "pad")


@dataclass(frozen=True)
class Preprocessing:
    """The preprocessing section of a model card (``model.json``)."""

    height: int
    width: int
    channels: int = 1
    resize: str = "pad"
    # (centre, width) in Hounsfield units, used when the image is a CT in HU.
    ct_window: tuple[float, float] | None = None
    mean: float = 0.5
    std: float = 0.25

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> Preprocessing:
        """Build from a model card's ``input`` and ``preprocessing`` sections."""
        model_input = card["input"]
        section = card.get("preprocessing", {})
        window = section.get("ct_window")
        spec = cls(
            height=int(model_input["height"]),
            width=int(model_input["width"]),
            channels=int(model_input.get("channels", 1)),
            resize=str(section.get("resize", "pad")),
            ct_window=(float(window["center"]), float(window["width"])) if window else None,
            mean=float(section.get("normalize", {}).get("mean", 0.5)),
            std=float(section.get("normalize", {}).get("std", 0.25)),
        )
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"preprocessing.resize must be one of {RESIZE_MODES}, not {self.resize!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"input.channels must be 1 or 3, not {self.channels}")
        if not (8 <= self.height <= 1024 and 8 <= self.width <= 1024):
            raise ValueError(f"input size {self.height}x{self.width} is out of range 8..1024")
        if self.std <= 0:
            raise ValueError("preprocessing.normalize.std must be positive")
        if self.ct_window is not None and self.ct_window[1] <= 0:
            raise ValueError("preprocessing.ct_window.width must be positive")


@dataclass(frozen=True)
class PixelAttributes:
    """The header attributes that decide how stored values become grey levels."""

    photometric: str = "MONOCHROME2"
    bits_stored: int = 8
    modality: str = ""
    rescale_slope: float | None = None
    rescale_intercept: float | None = None
    window_center: float | None = None
    window_width: float | None = None

    @property
    def in_hounsfield_units(self) -> bool:
        # A CT with a modality LUT is in HU (PS3.3 C.8.2.1.1.6); a secondary
        # capture of a CT has no rescale and holds display-ready grey levels.
        return self.modality.upper() == "CT" and self.rescale_intercept is not None


def grey_from_8bit(image: np.ndarray) -> np.ndarray:
    """An 8-bit grey (H, W) or colour (H, W, 3) image as grey in [0, 1]."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = luminance(image)
    return (image.astype(np.float32) / 255.0).clip(0.0, 1.0)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an (H, W, 3) image, in the input's value range."""
    rgb = rgb.astype(np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def frame_to_unit_grey(frame: np.ndarray, attributes: PixelAttributes, spec: Preprocessing) -> np.ndarray:
    """Stored pixel values of one frame → grey image in [0, 1].

    ``frame`` is (H, W) for monochrome images or (H, W, 3) RGB for colour ones
    (the decoder has already converted YBR and palette colour to RGB).

    Notes
    -----
    PS3.3 C.7.6.3.1.2 defines MONOCHROME1 as "minimum value displayed white",
    hence the inversion after windowing. PS3.3 C.11.2.1.2 gives the linear
    VOI LUT function used for the window.
    """
    if frame.ndim == 3:
        # Colour images carry no modality or VOI LUT; palette lookups give 16-bit values.
        full_scale = float(np.iinfo(frame.dtype).max) if frame.dtype.kind in "iu" else 1.0
        grey: np.ndarray = luminance(frame) / full_scale
        return grey.clip(0.0, 1.0).astype(np.float32)

    values = frame.astype(np.float32)
    has_rescale = attributes.rescale_intercept is not None or attributes.rescale_slope is not None
    if has_rescale:
        values = values * float(attributes.rescale_slope or 1.0) + float(attributes.rescale_intercept or 0.0)

    if spec.ct_window is not None and attributes.in_hounsfield_units:
        grey = apply_window(values, *spec.ct_window)
    elif attributes.window_center is not None and attributes.window_width and attributes.window_width > 0:
        grey = apply_window(values, attributes.window_center, attributes.window_width)
    elif attributes.bits_stored <= 8 and not has_rescale:
        grey = values / 255.0
    else:
        grey = robust_min_max(values)

    grey = grey.clip(0.0, 1.0)
    if attributes.photometric.upper() == "MONOCHROME1":
        grey = 1.0 - grey
    return grey.astype(np.float32)


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear VOI window of PS3.3 C.11.2.1.2.1, mapped to [0, 1]."""
    low = center - 0.5 - (width - 1.0) / 2.0
    span = max(width - 1.0, 1e-6)
    return ((values - low) / span).clip(0.0, 1.0)


def robust_min_max(values: np.ndarray) -> np.ndarray:
    """Scale between the 0.5th and 99.5th percentiles (ignores burnt-in text and outliers)."""
    low, high = np.percentile(values, (0.5, 99.5))
    if high <= low:
        return np.zeros_like(values, dtype=np.float32)
    return ((values - low) / (high - low)).clip(0.0, 1.0)


def unit_grey_to_tensor(grey: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Grey image in [0, 1] → float32 tensor (1, C, H, W) for the model."""
    if spec.resize == "pad":
        grey = pad_to_square(grey)
    resized = resize_antialiased(grey, spec.height, spec.width)
    normalised = (resized - spec.mean) / spec.std
    tensor = np.repeat(normalised[None, None, :, :], spec.channels, axis=1)
    return np.ascontiguousarray(tensor, dtype=np.float32)


class InputTensors:
    """The model inputs made from one frame, each computed once per distinct preprocessing.

    Models that share a specification (the two lung-CT models: 160 × 160, padded, the same window) get the
    same tensor, so a frame is windowed and resized once for both.
    """

    def __init__(self, frame: np.ndarray, attributes: PixelAttributes) -> None:
        self.frame = frame
        self.attributes = attributes
        self._tensors: dict[Preprocessing, np.ndarray] = {}

    @property
    def frame_shape(self) -> tuple[int, int]:
        return int(self.frame.shape[0]), int(self.frame.shape[1])

    def tensor(self, spec: Preprocessing) -> np.ndarray:
        if spec not in self._tensors:
            self._tensors[spec] = unit_grey_to_tensor(frame_to_unit_grey(self.frame, self.attributes, spec), spec)
        return self._tensors[spec]


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Centre the image on a black square whose side is its longer side."""
    rows, cols = image.shape
    side = max(rows, cols)
    if rows == cols:
        return image
    square = np.zeros((side, side), dtype=image.dtype)
    top, left = (side - rows) // 2, (side - cols) // 2
    square[top:top + rows, left:left + cols] = image
    return square


def input_region(rows: int, columns: int, spec: Preprocessing) -> tuple[float, float, float, float]:
    """The frame's area that the model's input shows: (left, top, right, bottom) in the frame's pixels.

    The inverse of ``unit_grey_to_tensor``'s geometry: padding centres the frame on a square (the area
    extends past the frame), and the box reduction of ``resize_antialiased`` drops the last few rows or
    columns that do not fill a whole box.
    """
    height, width = (max(rows, columns),) * 2 if spec.resize == "pad" else (rows, columns)
    top, left = (height - rows) // 2, (width - columns) // 2
    factor_rows, factor_columns = _box_factors(height, width, spec.height, spec.width)
    used_rows, used_columns = height // factor_rows * factor_rows, width // factor_columns * factor_columns
    return (float(-left), float(-top), float(used_columns - left), float(used_rows - top))


def resize_antialiased(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resampling with a widened triangle filter when shrinking (as PIL's BILINEAR).

    Large images are first reduced by an integer box average, which keeps the
    cost of a 3000-pixel radiograph close to that of a 512-pixel CT slice.
    """
    image = np.asarray(image, dtype=np.float32)
    image = _box_reduce(image, height, width)
    rows = _resampling_matrix(image.shape[0], height)
    cols = _resampling_matrix(image.shape[1], width)
    return rows @ image @ cols.T


def _box_factors(rows: int, columns: int, height: int, width: int) -> tuple[int, int]:
    """Integer reduction factors that bring an image to at most 4× the output size before resampling."""
    return max(1, rows // (4 * height)), max(1, columns // (4 * width))


def _box_reduce(image: np.ndarray, height: int, width: int) -> np.ndarray:
    factor_rows, factor_cols = _box_factors(image.shape[0], image.shape[1], height, width)
    if factor_rows == 1 and factor_cols == 1:
        return image
    rows = image.shape[0] // factor_rows * factor_rows
    cols = image.shape[1] // factor_cols * factor_cols
    cropped = image[:rows, :cols]
    return cropped.reshape(rows // factor_rows, factor_rows, cols // factor_cols, factor_cols).mean(axis=(1, 3))


@lru_cache(maxsize=64)
def _resampling_matrix(size_in: int, size_out: int) -> np.ndarray:
    scale = size_in / size_out
    support = max(scale, 1.0)
    centres = (np.arange(size_out) + 0.5) * scale - 0.5
    positions = np.arange(size_in)
    weights = np.maximum(0.0, 1.0 - np.abs(positions[None, :] - centres[:, None]) / support)
    weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    weights.setflags(write=False)  # shared by every caller through the cache
    return weights


def softmax(logits: Sequence[float] | np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a 1-D vector of logits."""
    values = np.asarray(logits, dtype=np.float64)
    values = values - values.max()
    exp = np.exp(values)
    return exp / exp.sum()
