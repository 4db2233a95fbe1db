"""The image size a compressed frame declares in its own header (JPEG, JPEG-LS, JPEG 2000).

Decoders allocate what the codestream declares, not what Rows and Columns say: a damaged frame whose
JPEG 2000 header claims 16777344 × 384 pixels inside a 384 × 384 image made pydicom's decoder allocate
gigabytes before it failed (found by tests/fuzz). Reading the codestream's header first, and refusing
a frame that disagrees with the DICOM header, keeps decoding bounded by MaxFramePixels.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

JPEG_START_OF_IMAGE = b"\xff\xd8"
# Start-of-frame markers: SOF0–SOF15 except DHT (C4), JPG (C8) and DAC (CC); SOF55 is JPEG-LS's.
JPEG_START_OF_FRAME = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length
J2K_START_OF_CODESTREAM_AND_SIZ = b"\xff\x4f\xff\x51"
JP2_SIGNATURE_BOX = b"\x00\x00\x00\x0c\x6a\x50\x20\x20"
JP2_CODESTREAM_BOX = b"jp2c"


@dataclass(frozen=True)
class FrameGeometry:
    rows: int
    columns: int
    components: int


def has_declared_geometry(transfer_syntax: str) -> bool:
    """Whether frames of this transfer syntax carry their own size (the JPEG and JPEG 2000 families)."""
    return transfer_syntax in (*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes, *JPEG2000TransferSyntaxes)


def declared_geometry(frame: bytes, transfer_syntax: str) -> FrameGeometry:
    """The size the frame's codestream declares; ``ValueError`` where its header cannot be read."""
    try:
        if transfer_syntax in JPEG2000TransferSyntaxes:
            return _jpeg_2000_geometry(frame)
        return _jpeg_geometry(frame)
    except (IndexError, struct.error) as error:
        raise ValueError("the codestream ends inside its header") from error


def _jpeg_geometry(frame: bytes) -> FrameGeometry:
    """JPEG (ISO/IEC 10918-1 B.2.2) and JPEG-LS (ISO/IEC 14495-1 C.2.2) share the frame header's layout."""
    if not frame.startswith(JPEG_START_OF_IMAGE):
        raise ValueError("no JPEG start-of-image marker")
    offset = 2
    while True:
        if frame[offset] != 0xFF:
            raise ValueError(f"no JPEG marker at byte {offset}")
        marker = frame[offset + 1]
        if marker == 0xFF:  # fill byte before a marker
            offset += 1
            continue
        if marker in JPEG_STANDALONE:
            offset += 2
            continue
        if marker in JPEG_START_OF_FRAME:
            # Lf (2 bytes), P (1), Y = rows (2), X = columns (2), Nf = components (1)
            rows, columns = struct.unpack(">HH", frame[offset + 5:offset + 9])
            return FrameGeometry(rows, columns, frame[offset + 9])
        if marker == 0xDA:
            raise ValueError("JPEG scan before any frame header")
        (length,) = struct.unpack(">H", frame[offset + 2:offset + 4])
        offset += 2 + length


def _jpeg_2000_geometry(frame: bytes) -> FrameGeometry:
    """SIZ follows SOC (ISO/IEC 15444-1 A.5.1); a JP2 file wraps the codestream in its jp2c box."""
    offset = 0
    if frame.startswith(JP2_SIGNATURE_BOX):
        offset = 12
        while frame[offset + 4:offset + 8] != JP2_CODESTREAM_BOX:
            (box_length,) = struct.unpack(">I", frame[offset:offset + 4])
            if box_length < 8:
                raise ValueError("a JP2 box with no length before the codestream")
            offset += box_length
        offset += 8
    if frame[offset:offset + 4] != J2K_START_OF_CODESTREAM_AND_SIZ:
        raise ValueError("no JPEG 2000 SOC and SIZ markers")
    # After SIZ's marker: Lsiz, Rsiz (2 bytes each), Xsiz, Ysiz, XOsiz, YOsiz (4 each), then XTsiz, YTsiz,
    # XTOsiz, YTOsiz (4 each) and Csiz (2); the image area is [XOsiz, Xsiz) × [YOsiz, Ysiz).
    width, height, x_origin, y_origin = struct.unpack(">IIII", frame[offset + 8:offset + 24])
    (components,) = struct.unpack(">H", frame[offset + 40:offset + 42])
    return FrameGeometry(height - y_origin, width - x_origin, components)
