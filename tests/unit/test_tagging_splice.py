"""The new block is spliced into the original bytes: the same file pydicom would write, without rewriting it."""
from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from orthanc_ai.dicom import tagging
from orthanc_ai.dicom.private_tags import Heatmap, ModelResult, read_results
from tests.support.dicom_files import read, shared_data, synthetic_ct, to_bytes

CREATOR = "ORTHANC AI RESULTS 1"
RESULTS = [
    ModelResult("lung", "1.0.0", "IQ-OTH/NCCD", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                ("Benign", "Malignant", "Normal"), (0.2, 0.7, 0.1), source_file_name="a.dcm",
                heatmap=Heatmap("Malignant", 2, 2, (0.5, 1.0, -2.0, 3.25), (-16.0, 0.0, 80.0, 96.0))),
    ModelResult("other", "2", "x", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), ("a", "b"), (0.4, 0.6)),
]


def both_ways(dicom: bytes) -> tuple[bytes | None, bytes]:
    return (tagging._spliced(dicom, CREATOR, "sw", RESULTS),
            tagging._rewritten(dicom, CREATOR, "sw", RESULTS))


def with_transfer_syntax(uid: str) -> bytes:
    dataset = read(synthetic_ct(seed=3))
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.UID(uid)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, implicit_vr=uid == ImplicitVRLittleEndian,
                     little_endian=uid != ExplicitVRBigEndian, force_encoding=True)
    return buffer.getvalue()


@pytest.mark.parametrize("dicom", [
    synthetic_ct(seed=1),
    with_transfer_syntax(ImplicitVRLittleEndian),
    with_transfer_syntax(ExplicitVRBigEndian),
], ids=["explicit little endian", "implicit little endian", "explicit big endian"])
def test_splice_gives_the_bytes_a_full_rewrite_gives(dicom: bytes):
    spliced, rewritten = both_ways(dicom)
    assert spliced is not None and spliced == rewritten
    assert [r.model for r in read_results(pydicom.dcmread(pydicom.filebase.DicomBytesIO(spliced)), CREATOR)] \
        == ["lung", "other"]


def test_other_vendors_blocks_stay_and_ours_takes_the_next_slot():
    dataset = read(synthetic_ct(seed=2))
    dataset.private_block(0x0055, "VENDOR A", create=True).add_new(0x01, "LO", "a")
    dataset.add_new(0x00570010, "LO", "VENDOR C")
    dataset.add_new(0x00571001, "LO", "c")
    spliced, rewritten = both_ways(to_bytes(dataset))
    assert spliced is not None and spliced == rewritten
    assert read(spliced)[0x00550011].value == CREATOR


def test_an_existing_block_is_replaced_in_place_keeping_other_models():
    once = tagging.add_results(synthetic_ct(seed=4), CREATOR, "sw", RESULTS[:1])
    again = [ModelResult(**{**RESULTS[1].__dict__, "probabilities": (0.9, 0.1)})]
    spliced, rewritten = (tagging._spliced(once, CREATOR, "sw", again), tagging._rewritten(once, CREATOR, "sw", again))
    assert spliced is not None and spliced == rewritten
    assert {r.model: r.top_class for r in read_results(read(spliced), CREATOR)} == {"lung": "Malignant", "other": "a"}


def robustness_files() -> list[Path]:
    folder = Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom-robustness" / "orthanc-tests"
    return sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []


def without_group_0055(dicom: bytes) -> pydicom.Dataset:
    dataset = read(dicom)
    for element in [e for e in dataset if e.tag.group == 0x0055]:
        del dataset[element.tag]
    return dataset


@pytest.mark.parametrize("path", robustness_files() or [None], ids=lambda p: p.name if p else "absent")
def test_every_real_world_file_keeps_its_bytes_around_the_block(path: Path | None):
    """Every byte but our block's is the original's; pydicom's rewrite only promised equal values."""
    if path is None:
        shared_data("dicom-robustness/orthanc-tests")
        return
    dicom = path.read_bytes()
    try:
        spliced = tagging._spliced(dicom, CREATOR, "sw", RESULTS)
    except RecursionError:
        pytest.skip(f"{path.name} nests sequences deeper than Python's recursion limit (the pipeline skips it)")
    if spliced is None:
        pytest.skip(f"{path.name}: no splice (deflated, or no File Meta group length): rewritten by pydicom")
    start = tagging._dataset_start(dicom)
    assert start is not None
    syntax = tagging._transfer_syntax(dicom[tagging.PREAMBLE_AND_PREFIX:start])
    encoding = tagging._Encoding(syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian)
    layout = tagging._GroupLayout.scan(dicom, start, encoding, CREATOR)
    assert layout is not None
    inserted = len(spliced) - len(dicom)
    assert spliced[:layout.creator_offset] == dicom[:layout.creator_offset]
    between = dicom[layout.creator_offset:layout.block_start]  # other creators and blocks of group 0055
    assert between in spliced[layout.creator_offset:layout.block_start + inserted]
    assert spliced[len(spliced) - (len(dicom) - layout.block_end):] == dicom[layout.block_end:]
    assert [r.model for r in read_results(read(spliced), CREATOR)] == ["lung", "other"]
    assert without_group_0055(spliced) == without_group_0055(dicom)
