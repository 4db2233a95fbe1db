"""The private block layout of PS3.5 §7.8.1, without Orthanc."""
from __future__ import annotations

import io
from datetime import UTC, datetime

import pydicom
import pytest
from pydicom.dataset import Dataset

from orthanc_ai.dicom.private_tags import (
    MAX_MODEL_SLOTS,
    ModelResult,
    PrivateBlockFull,
    as_lo_text,
    format_ds,
    markdown_dictionary,
    orthanc_dictionary,
    read_results,
    write_results,
)
from orthanc_ai.dicom.tagging import add_results
from tests.support.dicom_files import read, synthetic_ct

CREATOR = "ORTHANC AI RESULTS 1"


def result(model: str = "lung", probabilities=(0.2, 0.7, 0.1), **extra) -> ModelResult:
    return ModelResult(model=model, version="1.0.0", dataset="IQ-OTH/NCCD",
                       predicted_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                       classes=("Benign", "Malignant", "Normal"), probabilities=probabilities, **extra)


def roundtrip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def test_first_block_reserves_0055_0010_with_real_vrs():
    ds = read(synthetic_ct())
    write_results(ds, CREATOR, "orthanc-ai test", [result(source_file_name="scan.png", source_file_size=1234)])
    ds = roundtrip(ds)
    assert ds[0x00550010].value == CREATOR
    assert (ds[0x00551010].VR, ds[0x00551010].value) == ("LO", "lung")
    assert ds[0x00551013].VR == "DT" and ds[0x00551013].value.startswith("20260102030405")
    assert ds[0x00551016].VR == "LO" and list(ds[0x00551016].value) == ["Benign", "Malignant", "Normal"]
    assert ds[0x00551017].VR == "DS" and [float(v) for v in ds[0x00551017].value] == [0.2, 0.7, 0.1]
    assert ds[0x00551018].value == "Malignant"
    assert ds[0x00551015].VR == "UL" and ds[0x00551015].value == 1234
    assert ds[0x00551014].value == "scan.png"
    [back] = read_results(ds, CREATOR)
    assert back == result(source_file_name="scan.png", source_file_size=1234)


def test_existing_reservation_is_reused_and_model_replaced_not_appended():
    ds = read(synthetic_ct())
    write_results(ds, CREATOR, "sw", [result("a"), result("b")])
    write_results(ds, CREATOR, "sw", [result("a", probabilities=(0.9, 0.05, 0.05))])
    ds = roundtrip(ds)
    creators = [e.value for e in ds if e.tag.group == 0x55 and 0x10 <= e.tag.element <= 0xFF]
    assert creators == [CREATOR]
    results = {r.model: r for r in read_results(ds, CREATOR)}
    assert sorted(results) == ["a", "b"]
    assert results["a"].top_class == "Benign"


def test_shorter_result_leaves_no_stale_elements():
    ds = read(synthetic_ct())
    write_results(ds, CREATOR, "sw", [result("a", source_file_name="x.png")])
    write_results(ds, CREATOR, "sw", [result("a")])
    assert 0x00551014 not in ds  # the old source file name is gone


def test_other_creators_keep_their_slots_and_we_take_the_next_free_one():
    ds = read(synthetic_ct())
    ds.private_block(0x0055, "VENDOR A", create=True).add_new(0x01, "LO", "a")
    ds.private_block(0x0055, "VENDOR B", create=True).add_new(0x01, "LO", "b")
    write_results(ds, CREATOR, "sw", [result()])
    assert ds[0x00550012].value == CREATOR
    assert ds[0x00551001].value == "a" and ds[0x00551101].value == "b"
    assert read_results(ds, CREATOR)[0].model == "lung"


def test_full_group_is_an_error_never_another_group():
    ds = Dataset()
    for slot in range(0x10, 0x100):
        ds.add_new((0x0055 << 16) | slot, "LO", f"VENDOR {slot}")
    with pytest.raises(PrivateBlockFull):
        write_results(ds, CREATOR, "sw", [result()])
    assert not any(e.tag.group not in (0x0055,) for e in ds)


def test_at_most_15_models():
    ds = Dataset()
    write_results(ds, CREATOR, "sw", [result(f"m{n}") for n in range(MAX_MODEL_SLOTS)])
    with pytest.raises(PrivateBlockFull):
        write_results(ds, CREATOR, "sw", [result("one-too-many")])


def test_untrusted_file_names_become_valid_lo():
    assert as_lo_text("a\\b<script>\n.png") == "a_b<script>_.png"
    assert as_lo_text("é" * 100) == "?" * 64
    assert format_ds(0.123456789) == "0.123457" and len(format_ds(1.0)) <= 16


def test_add_results_changes_nothing_but_our_group():
    original = synthetic_ct(seed=5)
    tagged = add_results(original, CREATOR, "sw", [result()])
    before, after = read(original), read(tagged)
    assert [e for e in after if e.tag.group != 0x55] == [e for e in before if e.tag.group != 0x55]
    assert after.PixelData == before.PixelData


def test_dictionary_matches_the_layout_and_orthanc_json():
    import json
    from pathlib import Path

    entries = orthanc_dictionary(CREATOR)
    assert entries["0055,1010"] == ["LO", "AIModel01Name", 1, 1, CREATOR]
    assert entries["0055,1017"] == ["DS", "AIModel01ClassProbabilities", 1, 0, CREATOR]
    assert entries["0055,10f0"][1] == "AIModel15Name"
    configuration = json.loads((Path(__file__).resolve().parents[2] / "orthanc.json").read_text())
    assert configuration["Dictionary"] == entries, "run `make private-dictionary`"
    docs = (Path(__file__).resolve().parents[2] / "docs" / "private-tags.md").read_text()
    assert markdown_dictionary(CREATOR) in docs, "docs/private-tags.md is out of date with private_tags.py"
