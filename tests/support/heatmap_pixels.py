"""Images whose heatmap is known, and the heat read back from a blended heatmap image (heatmap Secondary Capture)."""
from __future__ import annotations

import numpy as np

from orthanc_ai.outputs.heatmap_rendering import jet
from tests.support.dicom_files import _base, to_bytes

MULTI_FRAME_GREY_BYTE_SC = "1.2.840.10008.5.1.4.1.1.7.2"
CELL = 16  # a 64-pixel frame: each of the test models' 4 × 4 map cells covers 16 × 16 pixels


def multi_frame(bright_cells: list[tuple[int, int]]) -> bytes:
    """A grey multi-frame Secondary Capture, one frame per white cell on light grey."""
    ds = _base(MULTI_FRAME_GREY_BYTE_SC, "OT", None, None, 7)
    frames = np.full((len(bright_cells), 64, 64), 180, dtype=np.uint8)
    for index, (row, column) in enumerate(bright_cells):
        frames[index, row * CELL:(row + 1) * CELL, column * CELL:(column + 1) * CELL] = 255
    ds.NumberOfFrames, ds.Rows, ds.Columns = len(bright_cells), 64, 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.ConversionType = "WSD"
    ds.PixelData = frames.tobytes()
    return to_bytes(ds)


def heat_of(rgb: np.ndarray) -> np.ndarray:
    """The map level (0–1) of each blended pixel, from its colour alone: grey adds the same to R, G and B, so
    (R − B, G − B) are the jet colour's own, which tells its level."""
    levels = np.linspace(0, 1, 256, dtype=np.float32)
    scale = jet(levels).astype(np.float32)
    keys = np.stack([scale[:, 0] - scale[:, 2], scale[:, 1] - scale[:, 2]], axis=1)
    pixels = rgb.astype(np.float32)
    seen = np.stack([pixels[..., 0] - pixels[..., 2], pixels[..., 1] - pixels[..., 2]], axis=-1) / 0.4
    distances = ((seen[..., None, :] - keys) ** 2).sum(axis=-1)
    return levels[distances.argmin(axis=-1)]
