"""Seeded mutations of real DICOM files, for fuzzing what the plugin reads (tests/integration/test_fuzz_files.py).

Each mutation is a pure function of (file bytes, random generator): the same seed gives the same files, so
a failure is reproduced from its seed and index alone.
"""
from __future__ import annotations

import io
import random
import struct
import warnings
from collections.abc import Callable

import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from orthanc_ai.config import DEFAULT_PRIVATE_CREATOR

PREAMBLE = 132  # 128-byte preamble and "DICM"
# Mutations of a parsed dataset need a file pydicom can read; the byte-level ones take anything.
Mutation = Callable[[bytes, random.Random], bytes]


def truncate(dicom: bytes, rng: random.Random) -> bytes:
    return dicom[: rng.randrange(PREAMBLE, max(PREAMBLE + 1, len(dicom)))]


def flip_bytes(dicom: bytes, rng: random.Random) -> bytes:
    data = bytearray(dicom)
    for _ in range(rng.randint(1, 16)):
        position = rng.randrange(min(PREAMBLE, len(data) - 1), len(data))
        data[position] ^= 1 << rng.randrange(8)
    return bytes(data)


def _element_headers(data: bytearray) -> list[int]:
    """Offsets of what look like explicit-VR element headers (tag, then two capital letters) in the first
    20 kB: the header elements, where a damaged length or VR matters most."""
    return [i for i in range(PREAMBLE, min(len(data) - 8, 20_000))
            if data[i + 4:i + 6].isalpha() and data[i + 4:i + 6].isupper()]


def wrong_length(dicom: bytes, rng: random.Random) -> bytes:
    """An element's 16-bit length replaced, often by something absurd."""
    data = bytearray(dicom)
    offsets = _element_headers(data)
    if not offsets:
        return flip_bytes(dicom, rng)
    struct.pack_into("<H", data, rng.choice(offsets) + 6, rng.choice([0, 1, 0xFFFF, rng.randrange(0x10000)]))
    return bytes(data)


def wrong_vr(dicom: bytes, rng: random.Random) -> bytes:
    data = bytearray(dicom)
    offsets = _element_headers(data)
    if not offsets:
        return flip_bytes(dicom, rng)
    offset = rng.choice(offsets)
    data[offset + 4:offset + 6] = rng.choice([b"UN", b"OB", b"SQ", b"US", b"FD", b"ZZ", b"XX"])
    return bytes(data)


def _rewrite(dicom: bytes, change: Callable[[Dataset, random.Random], None], rng: random.Random) -> bytes:
    try:
        # Invalid values are the point here: pydicom's value checks (raising in the tests) are off.
        with warnings.catch_warnings(), pydicom.config.disable_value_validation():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(io.BytesIO(dicom), force=True)
            change(dataset, rng)
            buffer = io.BytesIO()
            dataset.save_as(buffer, enforce_file_format=False)
            return buffer.getvalue()
    except Exception:  # not parseable, or not writable as changed: mutate the bytes instead
        return flip_bytes(dicom, rng)


def huge_size(dicom: bytes, rng: random.Random) -> bytes:
    def change(dataset: Dataset, rng: random.Random) -> None:
        dataset.Rows = rng.choice([0, 1, 46341, 65535])
        dataset.Columns = rng.choice([0, 1, 46341, 65535])
        if rng.random() < 0.5:
            dataset.NumberOfFrames = str(rng.choice([0, 2, 1000000]))
        if rng.random() < 0.5:
            dataset.BitsAllocated = rng.choice([1, 7, 12, 64])
    return _rewrite(dicom, change, rng)


def garbage_private_block(dicom: bytes, rng: random.Random) -> bytes:
    """Our own private creator in group 0055, with garbage where the plugin's results would be."""
    def change(dataset: Dataset, rng: random.Random) -> None:
        slot = rng.randrange(0x10, 0x20)
        dataset.add_new((0x0055, slot), "LO", DEFAULT_PRIVATE_CREATOR)
        for _ in range(rng.randint(1, 12)):
            element = (slot << 8) | rng.randrange(0x100)
            vr = rng.choice(["LO", "DS", "FD", "UN", "LT", "US", "SH"])
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
            value: object = raw if vr == "UN" else raw.decode("latin-1").replace("\\", "/")
            if vr in ("FD", "US"):
                value = rng.random() * 1e6 if vr == "FD" else rng.randrange(0x10000)
            try:
                dataset.add_new((0x0055, element), vr, value)
            except Exception:
                continue
    return _rewrite(dicom, change, rng)


def nested_sequences(dicom: bytes, rng: random.Random) -> bytes:
    def change(dataset: Dataset, rng: random.Random) -> None:
        inner = Dataset()
        inner.CodeValue = "x"
        for _ in range(rng.randint(2, 24)):
            outer = Dataset()
            outer.ContentSequence = Sequence([inner])
            inner = outer
        dataset.ContentSequence = Sequence([inner])
    return _rewrite(dicom, change, rng)


MUTATIONS: list[Mutation] = [truncate, flip_bytes, wrong_length, wrong_vr, huge_size, garbage_private_block,
                             nested_sequences]


def with_own_instance_uid(dicom: bytes, index: int) -> bytes:
    """The file with its SOP Instance UID changed in place (same length) to one of its own, so that every
    mutation is a new instance in Orthanc rather than an overwrite of the previous one."""
    try:
        uid = str(pydicom.dcmread(io.BytesIO(dicom), force=True, stop_before_pixels=True).SOPInstanceUID)
    except Exception:
        return dicom
    digits = str(index)
    if len(uid) <= len(digits) + 2:
        return dicom
    own = uid[: len(uid) - len(digits) - 1] + "9" + digits  # a component ending "9<index>": no leading zero
    return dicom.replace(uid.encode("ascii"), own.encode("ascii"))


def mutate(dicom: bytes, seed: int, index: int) -> tuple[str, bytes]:
    """The ``index``-th mutation of a run with ``seed``: its name and the mutated bytes."""
    rng = random.Random(f"{seed}:{index}")
    mutation = MUTATIONS[index % len(MUTATIONS)]
    return mutation.__name__, mutation(with_own_instance_uid(dicom, index), rng)
