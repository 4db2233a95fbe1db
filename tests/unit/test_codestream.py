"""A compressed frame whose own header disagrees with Rows and Columns is refused before any decoder
allocates what it declares (the fuzzer's 16777344 × 384 JPEG 2000 frame made pydicom allocate gigabytes)."""
from __future__ import annotations

import resource
import struct

import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import JPEG2000Lossless

from orthanc_ai.dicom.codestream import FrameGeometry, declared_geometry
from orthanc_ai.dicom.decoding import InstanceSkipped, decode_analysed_frame, read_header
from tests.support.dicom_files import read, synthetic_ct, to_bytes

MAX_FRAME_PIXELS = 1_000_000
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"


def j2k_ct(rows: int = 64, columns: int = 64) -> Dataset:
    ds = read(synthetic_ct(seed=3, rows=rows, columns=columns))
    ds.compress(JPEG2000Lossless)
    return ds


def with_codestream(ds: Dataset, codestream: bytes) -> bytes:
    ds.PixelData = encapsulate([codestream])
    return to_bytes(ds)


def siz_patched(codestream: bytes, offset: int, value: bytes) -> bytes:
    """The codestream with bytes changed at ``offset`` counted from SIZ's marker (SOC comes first)."""
    start = 2 + offset
    return codestream[:start] + value + codestream[start + len(value):]


def jpeg_header(rows: int, columns: int, components: int, marker: int = 0xC0) -> bytes:
    """SOI, an APP0 segment, a fill byte, then a frame header: all a reader needs, no scan."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    frame = struct.pack(">BHHB", 8, rows, columns, components) + b"\x01\x11\x00" * components
    return b"\xff\xd8" + app0 + b"\xff" + bytes([0xFF, marker]) + struct.pack(">H", 2 + len(frame)) + frame


def test_a_real_jpeg_2000_frame_declares_the_size_of_its_image():
    ds = j2k_ct(rows=48, columns=80)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    assert declared_geometry(frame, JPEG2000Lossless) == FrameGeometry(48, 80, 1)
    assert decode_analysed_frame(read_header(to_bytes(ds), MAX_FRAME_PIXELS)).shape == (48, 80)


def test_a_jp2_wrapped_codestream_is_read_inside_its_box():
    frame = get_frame(j2k_ct(rows=32, columns=40).PixelData, 0, number_of_frames=1)
    ftyp = struct.pack(">I", 20) + b"ftypjp2 \x00\x00\x00\x00jp2 "
    wrapped = b"\x00\x00\x00\x0cjP  \r\n\x87\n" + ftyp + struct.pack(">I", 8 + len(frame)) + b"jp2c" + frame
    assert declared_geometry(wrapped, JPEG2000Lossless) == FrameGeometry(32, 40, 1)


def test_a_jpeg_2000_frame_larger_than_its_header_says_is_refused_without_decoding():
    ds = j2k_ct()
    codestream = get_frame(ds.PixelData, 0, number_of_frames=1)
    hostile = siz_patched(codestream, 6, struct.pack(">I", 16_777_344))  # Xsiz, as the fuzzer found it
    instance = read_header(with_codestream(ds, hostile), MAX_FRAME_PIXELS)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InstanceSkipped, match=r"declares 64 x 16777344 x 1 samples, the header 64 x 64 x 1"):
        decode_analysed_frame(instance)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mib < 50, f"peak memory grew by {grown_mib:.0f} MiB"


def test_a_jpeg_2000_frame_with_more_components_than_samples_per_pixel_is_refused():
    ds = j2k_ct()
    codestream = get_frame(ds.PixelData, 0, number_of_frames=1)
    instance = read_header(with_codestream(ds, siz_patched(codestream, 38, struct.pack(">H", 3000))), MAX_FRAME_PIXELS)
    with pytest.raises(InstanceSkipped, match="64 x 64 x 3000 samples"):
        decode_analysed_frame(instance)


def test_a_frame_with_no_codestream_header_is_refused_with_the_reason():
    instance = read_header(with_codestream(j2k_ct(), b"\x00" * 64), MAX_FRAME_PIXELS)
    with pytest.raises(InstanceSkipped, match="no JPEG 2000 SOC and SIZ markers"):
        decode_analysed_frame(instance)


@pytest.mark.parametrize("marker", [0xC0, 0xC3, 0xF7])  # baseline, lossless, JPEG-LS
def test_jpeg_frame_headers_are_read_past_other_segments_and_fill_bytes(marker: int):
    assert declared_geometry(jpeg_header(512, 384, 3, marker), JPEG_BASELINE) == FrameGeometry(512, 384, 3)


@pytest.mark.parametrize("damaged, reason", [
    (b"\x00\x00", "no JPEG start-of-image marker"),
    (b"\xff\xd8\xff\xda\x00\x02", "JPEG scan before any frame header"),
    (jpeg_header(512, 384, 1)[:-6], "the codestream ends inside its header"),
    (b"\xff\xd8\x12\x34", "no JPEG marker at byte 2"),
])
def test_damaged_jpeg_headers_raise_value_error(damaged: bytes, reason: str):
    with pytest.raises(ValueError, match=reason):
        declared_geometry(damaged, JPEG_LS_LOSSLESS)

