"""The heatmap Secondary Capture without Orthanc: attributes, references, UIDs, pixels; and its writer.

The real Orthanc (store, echo, replacement, skip, dciodvfy on what Orthanc serves): tests/integration.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset

from orthanc_ai.dicom.decoding import InstanceSkipped, decode_analysed_frame, is_plugin_heatmap, read_header
from orthanc_ai.dicom.private_tags import DISCLAIMER, ModelResult
from orthanc_ai.events.deletion_fence import DeletionFence
from orthanc_ai.events.instance_guards import EchoGuard
from orthanc_ai.models.inference import LoadedModel
from orthanc_ai.models.model_card import ModelCard
from orthanc_ai.models.preprocessing import InputTensors, frame_to_unit_grey
from orthanc_ai.orthanc.orthanc_api import ResourceNotFound
from orthanc_ai.orthanc.orthanc_ids import orthanc_ids
from orthanc_ai.outputs.heatmap_capture import (
    MAX_SIDE,
    build_capture,
    capture_instance_uid,
    capture_series_uid,
    colour_bar,
    render,
)
from orthanc_ai.outputs.heatmap_rendering import blend, jet, normalised, on_frame
from orthanc_ai.outputs.heatmap_writer import HeatmapCaptureWriter, capture_ids
from orthanc_ai.outputs.series_reports import SeriesReporter
from orthanc_ai.outputs.structured_report import MANUFACTURER, encode
from orthanc_ai.status import Outcome, PluginStatus
from tests.support.dicom_files import SECONDARY_CAPTURE, read, synthetic_ct, to_bytes
from tests.support.heatmap_pixels import CELL, heat_of, multi_frame

BRIGHTNESS = [(-4.0, 0.0), (4.0, 0.0)]  # "dark" and "bright": the bright class's map is hot where the image is
WINDOW = {"center": 40, "width": 400}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    from tests.support.onnx_models import build_model

    folder = build_model(tmp_path_factory.mktemp("models"), "mapper", ["dark", "bright"], {"Modality": ["CT"]},
                         brightness_weights=BRIGHTNESS, heatmap=True, ct_window=WINDOW)
    return LoadedModel(ModelCard.load(folder))


def ct_with_bright_cell(row_cell: int = 1, column_cell: int = 2, **options: Any) -> bytes:
    """A 64 × 64 CT at 150 HU (light grey in the model's window: the "bright" class wins) with one 16-pixel
    cell at 400 HU (white): the bright class's map is hottest there."""
    ds = read(synthetic_ct(**options))
    stored = np.full((64, 64), 1024 + 150, dtype=np.int16)
    stored[row_cell * CELL:(row_cell + 1) * CELL, column_cell * CELL:(column_cell + 1) * CELL] = 1024 + 400
    ds.PixelData, ds.SeriesNumber = stored.tobytes(), 3
    return to_bytes(ds)


def predicted(model: LoadedModel, dicom: bytes) -> tuple[ModelResult, Any, np.ndarray]:
    instance = read_header(dicom, 10**8)
    frame = decode_analysed_frame(instance)
    result = model.predict(InputTensors(frame, instance.pixels), frame_number=instance.analysed_frame_index + 1)
    return result, instance, frame


def dciodvfy_errors(dataset: Dataset, folder: Path) -> list[str]:
    if not shutil.which("dciodvfy"):
        pytest.fail("dciodvfy missing: make test installs Debian's dicom3tools")
    path = folder / "capture.dcm"
    path.write_bytes(encode(dataset))
    checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]


def test_the_capture_is_a_valid_rgb_secondary_capture_in_its_own_series_of_the_same_study(model, tmp_path):
    result, instance, frame = predicted(model, ct_with_bright_cell())
    source = instance.dataset
    capture = build_capture(model.card, result, source, frame, instance.pixels)
    assert dciodvfy_errors(capture, tmp_path) == []
    assert (capture.SOPClassUID, capture.Modality, capture.Manufacturer) == (SECONDARY_CAPTURE, "OT", MANUFACTURER)
    assert list(capture.ImageType)[:2] == ["DERIVED", "SECONDARY"] and capture.BurnedInAnnotation == "NO"
    assert (capture.PhotometricInterpretation, capture.SamplesPerPixel, capture.BitsAllocated) == ("RGB", 3, 8)
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime", "BodyPartExamined"):
        assert str(capture.get(keyword)) == str(source.get(keyword)), keyword
    assert capture.SeriesInstanceUID not in (source.SeriesInstanceUID, "")
    assert capture.SeriesDescription == "AI heatmap: mapper"
    assert (capture.SeriesNumber, capture.InstanceNumber) == (8003, source.InstanceNumber)
    # The image keeps the frame's size; the colour bar is added to its right.
    assert (capture.Rows, capture.Columns) == (64, 64 + colour_bar(64, 64).shape[1])
    description = capture.DerivationDescription
    for expected in ("Class-activation map", "mapper", "version 1.0.0", "class bright", DISCLAIMER):
        assert expected in description, expected
    assert is_plugin_heatmap(capture)
    with pytest.raises(InstanceSkipped, match="^the plugin's own heatmap$"):
        read_header(encode(capture), 10**8)


def test_the_source_image_is_referenced_and_the_frame_of_a_multi_frame_one(model, tmp_path):
    result, instance, frame = predicted(model, ct_with_bright_cell())
    reference = build_capture(model.card, result, instance.dataset, frame, instance.pixels).SourceImageSequence
    assert len(reference) == 1 and "ReferencedFrameNumber" not in reference[0]
    assert (reference[0].ReferencedSOPClassUID, reference[0].ReferencedSOPInstanceUID) == (
        instance.dataset.SOPClassUID, instance.dataset.SOPInstanceUID)
    assert reference[0].PurposeOfReferenceCodeSequence[0].CodeValue == "121322"

    result, instance, frame = predicted(model, multi_frame([(0, 0), (2, 3), (3, 0)]))
    assert result.frame == 2
    capture = build_capture(model.card, result, instance.dataset, frame, instance.pixels)
    assert capture.SourceImageSequence[0].ReferencedFrameNumber == 2
    assert "frame 2 of the source image" in capture.DerivationDescription
    assert dciodvfy_errors(capture, tmp_path) == []
    # The middle frame's bright cell (row 2, column 3) is where the map is hottest.
    row, column = np.unravel_index(int(heat_of(capture.pixel_array[:, :64]).argmax()), (64, 64))
    assert (row // CELL, column // CELL) == (2, 3)


def test_uids_are_derived_from_the_study_source_model_and_prediction(model):
    result, instance, frame = predicted(model, ct_with_bright_cell())
    source = instance.dataset
    first = build_capture(model.card, result, source, frame, instance.pixels)
    again = build_capture(model.card, result, source, frame, instance.pixels)
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    assert first.SOPInstanceUID == capture_instance_uid(source.SOPInstanceUID, result)
    assert first.SeriesInstanceUID == capture_series_uid(source.StudyInstanceUID, source.SeriesInstanceUID, "mapper")
    later = replace(result, predicted_at=result.predicted_at + timedelta(seconds=1))
    assert capture_instance_uid(source.SOPInstanceUID, later) != first.SOPInstanceUID
    assert capture_instance_uid(source.SOPInstanceUID, replace(result, version="2.0.0")) != first.SOPInstanceUID
    assert capture_series_uid(source.StudyInstanceUID, source.SeriesInstanceUID, "other") != first.SeriesInstanceUID
    # Another image of the same series: same heatmap series, its own instance.
    other = read(ct_with_bright_cell(study_uid=source.StudyInstanceUID, series_uid=source.SeriesInstanceUID))
    assert capture_series_uid(other.StudyInstanceUID, other.SeriesInstanceUID, "mapper") == first.SeriesInstanceUID
    assert capture_instance_uid(other.SOPInstanceUID, result) != first.SOPInstanceUID


def test_the_pixels_are_the_windowed_frame_with_the_map_blended_hot_where_the_image_is_bright(model):
    result, instance, frame = predicted(model, ct_with_bright_cell(row_cell=1, column_cell=2))
    assert result.top_class == "bright" and result.heatmap is not None
    capture = build_capture(model.card, result, instance.dataset, frame, instance.pixels)
    image = capture.pixel_array[:, :64]
    grey = frame_to_unit_grey(frame, instance.pixels, model.card.preprocessing)
    np.testing.assert_array_equal(image, blend(grey, normalised(on_frame(result.heatmap, 64, 64))))
    heat = heat_of(image)
    row, column = np.unravel_index(int(heat.argmax()), heat.shape)
    assert (row // CELL, column // CELL) == (1, 2)
    assert heat[CELL:2 * CELL, 2 * CELL:3 * CELL].mean() > heat.mean() + 0.2
    # The colour bar: a black gap, then red at the top down to blue at the bottom.
    bar = capture.pixel_array[:, 64:]
    assert bar[:, 0].max() == 0
    assert tuple(bar[64 // 10, -1]) == tuple(jet(np.float32(1.0))) and bar[55, -1][2] > bar[55, -1][0]


def test_very_large_frames_are_reduced_by_an_integer_step():
    from orthanc_ai.dicom.private_tags import Heatmap

    grey = np.zeros((2100, 1500), dtype=np.float32)
    grey[:700, 1000:] = 1.0
    heatmap = Heatmap("x", 2, 2, (0.0, 5.0, 0.0, 0.0), (0.0, 0.0, 1500.0, 2100.0))
    rgb = render(grey, heatmap)
    assert rgb.shape[0] == 700 and rgb.shape[0] <= MAX_SIDE  # 2100 / 3
    assert rgb.shape[1] == 500 + colour_bar(700, 500).shape[1]
    heat = heat_of(rgb[:, :500])
    row, column = np.unravel_index(int(heat.argmax()), heat.shape)
    assert row < 350 and column >= 250, "the map's top right cell stays top right"


# --- the writer ---------------------------------------------------------------------------------------

class MemoryOrthanc:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.deleted: list[str] = []
        self.fail_store = False

    def add(self, dicom: bytes) -> str:
        instance_id = orthanc_ids(read(dicom)).instance
        self.files[instance_id] = dicom
        return instance_id

    def instance_file(self, instance_id: str) -> bytes:
        if instance_id not in self.files:
            raise ResourceNotFound(instance_id)
        return self.files[instance_id]

    def instance_exists(self, instance_id: str) -> bool:
        return instance_id in self.files

    def store_instance(self, dicom: bytes) -> dict[str, Any]:
        if self.fail_store:
            raise RuntimeError("Orthanc refused")
        return {"ID": self.add(dicom), "Status": "Success"}

    def delete_instance(self, instance_id: str) -> None:
        if instance_id not in self.files:
            raise ResourceNotFound(instance_id)
        del self.files[instance_id]
        self.deleted.append(instance_id)

    def decode_frame(self, dicom: bytes, frame_index: int) -> np.ndarray:
        raise AssertionError("pydicom decodes these")


def writer_for(model: LoadedModel, orthanc: MemoryOrthanc) -> tuple[HeatmapCaptureWriter, EchoGuard, PluginStatus]:
    echoes, status = EchoGuard(), PluginStatus()
    registry = SimpleNamespace(models={model.card.name: model})
    return HeatmapCaptureWriter(orthanc, registry, echoes, DeletionFence(), status, 10**8), echoes, status  # type: ignore[arg-type]


def test_the_writer_stores_once_announces_the_echo_and_replaces_the_older_capture(model):
    orthanc = MemoryOrthanc()
    dicom = ct_with_bright_cell()
    source_id = orthanc.add(dicom)
    writer, echoes, status = writer_for(model, orthanc)
    result, instance, _ = predicted(model, dicom)
    writer(Outcome(source_id, "predicted", results=[result]))
    first = capture_ids(instance.dataset, result).instance
    assert set(orthanc.files) == {source_id, first}
    assert echoes.consume(first) and not echoes.consume(first)
    assert is_plugin_heatmap(read(orthanc.files[first]))

    writer(Outcome(source_id, "predicted", results=[result]))  # the same result: nothing new
    assert set(orthanc.files) == {source_id, first}

    again = replace(result, predicted_at=datetime.now(UTC))
    writer(Outcome(source_id, "predicted", results=[again], replaced=[result]))
    second = capture_ids(instance.dataset, again).instance
    assert set(orthanc.files) == {source_id, second} and orthanc.deleted == [first]
    snapshot = status.snapshot()["heatmapSecondaryCaptures"]
    assert snapshot["outcomes"] == {"written": 2, "unchanged": 1}


def test_each_capture_written_is_handed_to_the_after_write_hooks_whose_errors_are_only_logged(model):
    orthanc = MemoryOrthanc()
    dicom = ct_with_bright_cell()
    source_id = orthanc.add(dicom)
    writer, _, status = writer_for(model, orthanc)
    handed: list[tuple[str, Outcome]] = []

    def failing_hook(capture_id: str, outcome: Outcome) -> None:
        raise RuntimeError("a destination is misconfigured")

    writer.after_write += [failing_hook, lambda capture_id, outcome: handed.append((capture_id, outcome))]
    result, instance, _ = predicted(model, dicom)
    outcome = Outcome(source_id, "predicted", results=[result])
    writer(outcome)
    writer(outcome)  # the capture exists: not written, not handed again
    assert handed == [(capture_ids(instance.dataset, result).instance, outcome)]
    assert status.snapshot()["heatmapSecondaryCaptures"]["outcomes"] == {"written": 1, "unchanged": 1}


def test_writer_errors_are_counted_never_raised(model):
    orthanc = MemoryOrthanc()
    dicom = ct_with_bright_cell()
    source_id = orthanc.add(dicom)
    writer, echoes, status = writer_for(model, orthanc)
    result, instance, _ = predicted(model, dicom)
    orthanc.fail_store = True
    writer(Outcome(source_id, "predicted", results=[result]))
    assert not echoes.consume(capture_ids(instance.dataset, result).instance), "the announcement is withdrawn"
    del orthanc.files[source_id]
    writer(Outcome(source_id, "predicted", results=[result]))
    without_map = replace(result, heatmap=None)
    writer(Outcome(source_id, "predicted", results=[without_map]))
    assert status.snapshot()["heatmapSecondaryCaptures"]["outcomes"] == {"failed": 1, "gone": 1}


def test_the_series_reporter_leaves_the_plugins_own_series_alone():
    class Series:
        def series(self, series_id: str) -> dict[str, Any]:
            return {"MainDicomTags": {"Modality": "OT", "Manufacturer": MANUFACTURER,
                                      "SeriesDescription": "AI heatmap: mapper"}, "Instances": ["a"]}

    reporter = SeriesReporter(Series(), SimpleNamespace(models={}), "X", EchoGuard())
    outcome = reporter.report("s", require_complete=True)
    assert (outcome.state, outcome.reason) == ("not reported", "the plugin's own series are not reported on")
