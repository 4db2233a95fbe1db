"""Add the results to a copy of the instance's bytes, leaving everything else as it was.

The results go in by a splice: our private creator element (when new) and our block are encoded alone, in
the file's transfer syntax, and put into the original bytes at their place in the element order; an existing
block of ours is replaced as a whole, with the slots of other models kept. Nothing past group 0055 is parsed
or written again, so every other byte of the file, pixel data included, is the original's by construction,
and a 500 kB CT costs a scan of its first elements.

Where a splice cannot be made safely (a deflated transfer syntax, no File Meta group length, a group length
in group 0055, elements of our block's range out of order), the file is parsed and written again by pydicom,
which keeps the values but not always the bytes: it drops group length elements and, in explicit VR files,
replaces UN by the dictionary's VR.
"""
from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_dataset
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from .private_tags import GROUP, ModelResult, read_results, register_with_pydicom, write_results

PREAMBLE_AND_PREFIX = 132  # PS3.10 §7.1: 128-byte preamble, then "DICM"
FIRST_CREATOR_SLOT, LAST_CREATOR_SLOT = 0x10, 0xFF


class ResultsNotWritable(ValueError):
    """pydicom cannot write this file back (an unknown VR, command set elements …): it is left as it is."""


def add_results(dicom: bytes, creator: str, software: str, results: Sequence[ModelResult]) -> bytes:
    try:
        spliced = _spliced(dicom, creator, software, results)
    except Exception:  # a damaged header: the full parse below reports it, or copes
        spliced = None
    return spliced if spliced is not None else _rewritten(dicom, creator, software, results)


def stored_results(dicom: bytes, creator: str) -> list[ModelResult]:
    """Results already stored in an instance (the pixel data is not read)."""
    dataset = pydicom.dcmread(io.BytesIO(dicom), force=True, stop_before_pixels=True)
    return read_results(dataset, creator)


def _rewritten(dicom: bytes, creator: str, software: str, results: Sequence[ModelResult]) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(dicom), force=True)
    write_results(dataset, creator, software, results)
    output = io.BytesIO()
    try:
        # Keep the file's own transfer syntax and meta information as received.
        dataset.save_as(output, enforce_file_format=False)
    except Exception as error:  # what pydicom raises here is about the damaged file, not our block
        raise ResultsNotWritable(f"{error.__class__.__name__}: {error}") from error
    return output.getvalue()


@dataclass(frozen=True)
class _Encoding:
    implicit_vr: bool
    little_endian: bool


def _spliced(dicom: bytes, creator: str, software: str, results: Sequence[ModelResult]) -> bytes | None:
    """The file with our block written in place, or None where only a full rewrite is safe."""
    start = _dataset_start(dicom)
    if start is None:
        return None
    transfer_syntax = _transfer_syntax(dicom[PREAMBLE_AND_PREFIX:start])
    if transfer_syntax is None or transfer_syntax == DeflatedExplicitVRLittleEndian:
        return None
    encoding = _Encoding(transfer_syntax == ImplicitVRLittleEndian, transfer_syntax != ExplicitVRBigEndian)
    register_with_pydicom(creator)  # an implicit VR block of ours is decoded with our private dictionary
    layout = _GroupLayout.scan(dicom, start, encoding, creator)
    if layout is None:
        return None
    block = Dataset(layout.our_elements)  # our creator and our block as stored (raw), or nothing yet
    if layout.creator_tag not in block:
        block.add_new(layout.creator_tag, "LO", creator)
    write_results(block, creator, software, results)
    creator_bytes = b"" if layout.creator_stored else _encoded([block[layout.creator_tag]], encoding)
    block_bytes = _encoded([element for element in block if element.tag != layout.creator_tag], encoding)
    return (dicom[:layout.creator_offset] + creator_bytes + dicom[layout.creator_offset:layout.block_start]
            + block_bytes + dicom[layout.block_end:])


def _dataset_start(dicom: bytes) -> int | None:
    """Where the data set begins: after the preamble and the File Meta group, whose length it states."""
    if dicom[128:PREAMBLE_AND_PREFIX] != b"DICM" or dicom[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
        return None
    (group_length,) = struct.unpack("<I", dicom[140:144])
    return 144 + group_length


def _transfer_syntax(file_meta: bytes) -> str | None:
    """The Transfer Syntax UID of a File Meta group (always explicit VR little endian, PS3.10 §7.1)."""
    for element in data_element_generator(io.BytesIO(file_meta), False, True):
        if element.tag == 0x00020010:
            return bytes(element.value or b"").rstrip(b" \x00").decode("ascii")
    return None


@dataclass(frozen=True)
class _GroupLayout:
    """Where our creator and our block are, or go, in a file's bytes (offsets of element headers)."""

    creator_tag: int
    creator_stored: bool
    creator_offset: int  # where a new creator element goes (unused when stored)
    block_start: int  # the block's bytes are [block_start, block_end): empty for a new block
    block_end: int
    our_elements: dict[BaseTag, RawDataElement | DataElement]  # our creator and block as stored, by tag

    @classmethod
    def scan(cls, dicom: bytes, start: int, encoding: _Encoding, creator: str) -> _GroupLayout | None:
        """Scan the data set's top-level elements up to the end of group 0055 (values over 1 kB skipped).

        None where a splice would be unsafe: a group length in group 0055, or elements out of tag order.
        """
        stream = io.BytesIO(dicom)
        stream.seek(start)
        headers: list[tuple[int, int]] = []  # (tag, offset of the element's header), in file order
        elements: dict[BaseTag, RawDataElement | DataElement] = {}
        position = start
        for element in data_element_generator(stream, encoding.implicit_vr, encoding.little_endian,
                                              defer_size=1024):
            headers.append((element.tag, position))
            if element.tag >= ((GROUP + 1) << 16):
                break
            if element.tag.group == GROUP:
                elements[element.tag] = element
            position = stream.tell()
        else:
            headers.append((0xFFFFFFFF, len(dicom)))  # nothing after group 0055: append at the end
        tags = [tag for tag, _ in headers]
        if tags != sorted(tags) or (GROUP << 16) in elements:
            return None  # unsorted elements, or a group length that would have to change with the group
        slots = {tag & 0xFF: _text(raw.value) for tag, raw in elements.items()
                 if FIRST_CREATOR_SLOT <= tag & 0xFFFF <= LAST_CREATOR_SLOT}
        slot = next((s for s, name in slots.items() if name == creator), None)
        if slot is None:
            slot = next((s for s in range(FIRST_CREATOR_SLOT, LAST_CREATOR_SLOT + 1) if s not in slots), None)
        if slot is None:
            return None  # the full rewrite reports the full group
        creator_tag = (GROUP << 16) | slot
        first, last = (GROUP << 16) | (slot << 8), (GROUP << 16) | (slot << 8) | 0xFF
        ours = {tag: raw for tag, raw in elements.items() if tag == creator_tag or first <= tag <= last}
        return cls(
            creator_tag=creator_tag,
            creator_stored=creator_tag in ours,
            creator_offset=next(offset for tag, offset in headers if tag > creator_tag),
            block_start=next(offset for tag, offset in headers if tag >= first),
            block_end=next(offset for tag, offset in headers if tag > last),
            our_elements=ours,
        )


def _text(value: Any) -> str:
    raw = value if isinstance(value, bytes) else str(value).encode("ascii", "replace")
    return raw.rstrip(b" \x00").decode("ascii", "replace")


def _encoded(elements: list, encoding: _Encoding) -> bytes:
    dataset = Dataset()
    for element in elements:
        dataset.add(element)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = encoding.implicit_vr
    buffer.is_little_endian = encoding.little_endian
    write_dataset(buffer, dataset)
    return buffer.getvalue()
