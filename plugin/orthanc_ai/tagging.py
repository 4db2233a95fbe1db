"""Add the results to a copy of the instance's bytes, leaving everything else as it was.

The copy is parsed afresh and no existing element is touched: pydicom writes
elements it has not decoded back from their raw bytes, so every public
element, every other private block and the pixel data stay byte-identical.
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import pydicom

from .private_tags import ModelResult, read_results, write_results


class ResultsNotWritable(ValueError):
    """pydicom cannot write this file back (an unknown VR, command set elements …): it is left as it is."""


def add_results(dicom: bytes, creator: str, software: str, results: Sequence[ModelResult]) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(dicom), force=True)
    write_results(dataset, creator, software, results)
    output = io.BytesIO()
    try:
        # Keep the file's own transfer syntax and meta information as received.
        dataset.save_as(output, enforce_file_format=False)
    except Exception as error:  # what pydicom raises here is about the damaged file, not our block
        raise ResultsNotWritable(f"{error.__class__.__name__}: {error}") from error
    return output.getvalue()


def stored_results(dicom: bytes, creator: str) -> list[ModelResult]:
    """Results already stored in an instance (the pixel data is not read)."""
    dataset = pydicom.dcmread(io.BytesIO(dicom), force=True, stop_before_pixels=True)
    return read_results(dataset, creator)
