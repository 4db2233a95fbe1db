"""A heatmap made visible: placed on the analysed frame's pixels, coloured, blended, encoded as PNG.

One rendering for every output that shows a heatmap (the Explorer's overlay through the REST API and the
DICOM Secondary Capture), so a reader sees the same colours everywhere. The colour scale is the classic
"jet" (blue = lowest value of the map, red = highest), relative to the map's own range: a class-activation
map says where the model looked, its absolute level is already in the probabilities.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

from ..dicom.private_tags import Heatmap

# What an overlay shows by default (the Explorer's slider starts here; the Secondary Capture uses it).
DEFAULT_OPACITY = 0.4


def on_frame(heatmap: Heatmap, rows: int, columns: int) -> np.ndarray:
    """The map resampled onto a ``rows`` × ``columns`` frame (bilinear between cell centres), float32.

    The grid covers ``heatmap.region`` of the frame; pixels beyond the outermost cell centres take the
    edge cell's value.
    """
    left, top, right, bottom = heatmap.region
    along_rows = _interpolation(rows, top, bottom, heatmap.rows)
    along_columns = _interpolation(columns, left, right, heatmap.columns)
    return (along_rows @ heatmap.grid() @ along_columns.T).astype(np.float32)


def _interpolation(pixels: int, start: float, stop: float, cells: int) -> np.ndarray:
    """(pixels × cells) weights of linear interpolation between cell centres, for pixel centres."""
    position = ((np.arange(pixels) + 0.5) - start) / (stop - start) * cells - 0.5
    position = position.clip(0, cells - 1)
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, cells - 1)
    fraction = (position - lower).astype(np.float32)
    weights = np.zeros((pixels, cells), dtype=np.float32)
    np.add.at(weights, (np.arange(pixels), lower), 1 - fraction)
    np.add.at(weights, (np.arange(pixels), upper), fraction)
    return weights


def normalised(values: np.ndarray) -> np.ndarray:
    """Values scaled to 0–1 over their own range (a flat map is all 0)."""
    low, high = float(values.min()), float(values.max())
    if not high > low:
        return np.zeros_like(values, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def jet(unit: np.ndarray) -> np.ndarray:
    """RGB uint8 of the jet colour scale for values in 0–1 (the same formula as the Explorer's legend)."""
    unit = np.asarray(unit, dtype=np.float32)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # red, green, blue peak at 3/4, 1/2, 1/4
    return (np.clip(1.5 - np.abs(4 * unit - centres), 0, 1) * 255 + 0.5).astype(np.uint8)


def blend(grey: np.ndarray, heat: np.ndarray, opacity: float = DEFAULT_OPACITY) -> np.ndarray:
    """RGB uint8 of a grey image (0–1) with the coloured heat (0–1) laid over it at ``opacity``."""
    base = np.repeat((np.clip(grey, 0, 1) * 255)[..., None], 3, axis=-1)
    mixed = (1 - opacity) * base + opacity * jet(heat).astype(np.float32)
    return (mixed + 0.5).astype(np.uint8)


def encode_png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB image (rows × columns × 3) as a PNG file (PNG specification, 2nd edition)."""
    rows, columns, _ = rgb.shape
    scanlines = np.concatenate([np.zeros((rows, 1), dtype=np.uint8), rgb.reshape(rows, columns * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", columns, rows, 8, 2, 0, 0, 0)  # 8-bit truecolour, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6)) + chunk(b"IEND", b""))
