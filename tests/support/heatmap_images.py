"""Images with a known bright region, and reading a heatmap's value back from its jet colours."""
from __future__ import annotations

import numpy as np

from orthanc_ai.outputs.heatmap_rendering import jet
from tests.support.dicom_files import ct_from_grey

# The heatmap test model's classes and (slope, bias) per class (tests/support/onnx_models.build_model):
# "bright" is hottest where the image is brightest, "dark" where it is darkest (or padded); the bias makes
# "bright" the top class of the images below, whose padding to a square is black.
HEAT_CLASSES = ["dark", "bright"]
HEAT_WEIGHTS = [(-4.0, 0.0), (4.0, 12.0)]
# Grey levels of the quarters (8-bit, before ct_from_grey maps them to Hounsfield units).
BRIGHT, DARK, MIDDLE = 230, 10, 110
_JET_TABLE = jet(np.linspace(0.0, 1.0, 256)).astype(np.int32)  # (256, 3)


def quarters_grey(rows: int, columns: int) -> np.ndarray:
    """Top-right quarter bright, bottom-left quarter dark, the rest mid-grey (uint8)."""
    grey = np.full((rows, columns), MIDDLE, dtype=np.uint8)
    grey[: rows // 2, columns // 2:] = BRIGHT
    grey[rows // 2:, : columns // 2] = DARK
    return grey


def quarters_ct(rows: int, columns: int, study_uid: str, series_uid: str, instance_number: int = 1) -> bytes:
    """A CT slice (Hounsfield units) of ``quarters_grey``."""
    return ct_from_grey(quarters_grey(rows, columns), study_uid, series_uid, instance_number)


def phantom_grey(rows: int = 256, columns: int = 320) -> tuple[np.ndarray, tuple[int, int]]:
    """A chest-like slice (uint8): air, an elliptic body, two darker lungs, and a bright mass in the
    image's top-right quarter, centred on a cell of the heatmap grid; returns it and the mass's centre
    (row, column)."""
    row, column = np.mgrid[0:rows, 0:columns].astype(np.float64)
    grey = np.zeros((rows, columns))
    body = ((row - rows / 2) / (0.42 * rows)) ** 2 + ((column - columns / 2) / (0.46 * columns)) ** 2 <= 1
    grey[body] = 150
    for centre in (0.3, 0.7):
        lung = (((row - rows * 0.47) / (0.3 * rows)) ** 2 + ((column - columns * centre) / (0.15 * columns)) ** 2
                <= 1)
        grey[lung] = 60
    grey[(row - rows * 0.78) ** 2 + (column - columns / 2) ** 2 <= (0.04 * columns) ** 2] = 215  # vertebra
    mass = (int(rows * 0.34), int(columns * 0.64))
    grey[(row - mass[0]) ** 2 + (column - mass[1]) ** 2 <= (0.095 * columns) ** 2] = 255
    texture = np.random.default_rng(3).normal(0, 5, (rows, columns))
    return (grey + texture * (grey > 0)).clip(0, 255).astype(np.uint8), mass


def heat_from_jet(rgb: np.ndarray) -> np.ndarray:
    """Each pixel's position (0–1) on the jet scale: the nearest colour of the scale (rows × columns)."""
    pixels = np.asarray(rgb, dtype=np.int32)[..., :3].reshape(-1, 1, 3)
    distances = np.abs(pixels - _JET_TABLE[None, :, :]).sum(axis=2)
    return (distances.argmin(axis=1) / 255.0).reshape(rgb.shape[:2])


def hottest(rgb: np.ndarray) -> tuple[float, float]:
    """(row, column) centroid of the pixels within 2 % of the top of the jet scale."""
    heat = heat_from_jet(rgb)
    rows, columns = np.nonzero(heat >= heat.max() - 0.02)
    return float(rows.mean()), float(columns.mean())
