"""The heatmap Secondary Capture with a real Orthanc: written beside each predicted image when the setting is on.

A test model with an exact map output ("bright" wins on light images and is hottest on their whitest cell)
applies to CT and OT: the plugin's own captures (OT) would be candidates too, so the test sees them skipped
by identity, not by a header rule. ``StableAge`` 2 s, so the capture's series becomes stable during the
test and the Structured Report writer is seen to leave it alone.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset

from orthanc_ai.outputs.structured_report import MANUFACTURER
from tests.support.dicom_files import read, synthetic_ct, to_bytes
from tests.support.heatmap_pixels import CELL, heat_of, multi_frame
from tests.support.onnx_models import build_model
from tests.support.orthanc_process import OrthancProcess, stop_all

MODEL = "heat"
SERIES_DESCRIPTION = f"AI heatmap: {MODEL}"
ON = {"Outputs": {"HeatmapSecondaryCapture": True}}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    build_model(folder, MODEL, ["dark", "bright"], {"Modality": ["CT", "OT"]}, brightness_weights=[(-4, 0), (4, 0)],
                heatmap=True, ct_window={"center": 40, "width": 400})
    return folder


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, models: Path) -> Iterator[OrthancProcess]:
    server = OrthancProcess(tmp_path_factory.mktemp("orthanc"), models, {"StableAge": 2}, ON)
    server.start()
    yield server
    stop_all([server])


def ct(row_cell: int, column_cell: int) -> bytes:
    """A 64 × 64 CT at 150 HU with one white 16-pixel cell (400 HU)."""
    ds = read(synthetic_ct(seed=row_cell))
    stored = np.full((64, 64), 1024 + 150, dtype=np.int16)
    stored[row_cell * CELL:(row_cell + 1) * CELL, column_cell * CELL:(column_cell + 1) * CELL] = 1024 + 400
    ds.PixelData, ds.SeriesNumber = stored.tobytes(), 5
    return to_bytes(ds)


def outcomes(orthanc: OrthancProcess) -> int:
    status = orthanc.status()
    return sum(status[key] for key in ("predicted", "unchanged", "skipped", "failed", "gone"))


def capture_series(orthanc: OrthancProcess, study_id: str) -> list[dict[str, Any]]:
    return [s for s in orthanc.get(f"/studies/{study_id}/series")
            if s["MainDicomTags"].get("SeriesDescription") == SERIES_DESCRIPTION]


def wait_for_capture(orthanc: OrthancProcess, study_id: str, other_than: str | None = None) -> dict[str, Any]:
    def found() -> bool:
        series = capture_series(orthanc, study_id)
        return len(series) == 1 and any(i != other_than for i in series[0]["Instances"])
    orthanc.wait_until(found, 60, "the heatmap Secondary Capture")
    return capture_series(orthanc, study_id)[0]


def download(orthanc: OrthancProcess, instance_id: str, folder: Path) -> tuple[Path, Dataset]:
    path = folder / f"{instance_id}.dcm"
    path.write_bytes(orthanc.get_bytes(f"/instances/{instance_id}/file"))
    return path, read(path.read_bytes())


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """dciodvfy's errors, and its warnings (printed: the SC's only warnings are about what its source lacks)."""
    if not shutil.which("dciodvfy"):
        pytest.fail("dciodvfy missing: make test installs Debian's dicom3tools")
    checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    lines = (checked.stdout + checked.stderr).splitlines()
    warnings = [line for line in lines if line.startswith("Warning")]
    print(f"dciodvfy {path.name}: {len(warnings)} warning(s): {warnings}")
    return [line for line in lines if line.startswith("Error")], warnings


def hottest_cell(capture: Dataset) -> tuple[int, int]:
    heat = heat_of(capture.pixel_array[:, :64])  # the colour bar is to the right of the image
    row, column = np.unravel_index(int(heat.argmax()), heat.shape)
    return int(row) // CELL, int(column) // CELL


def test_a_predicted_ct_gets_a_valid_capture_in_its_own_series_that_is_never_classified(orthanc, tmp_path):
    source = ct(row_cell=1, column_cell=2)
    source_uids = read(source)
    stored = orthanc.store_http(source)
    series = wait_for_capture(orthanc, stored["ParentStudy"])
    # The series: its own, in the same study, known as the plugin's by Orthanc's main tags.
    tags = series["MainDicomTags"]
    assert (tags["Modality"], tags["Manufacturer"], tags["SeriesNumber"]) == ("OT", MANUFACTURER, "8005")
    assert series["ID"] != stored["ParentSeries"] and len(series["Instances"]) == 1
    capture_id = series["Instances"][0]
    path, capture = download(orthanc, capture_id, tmp_path)
    errors, _ = dciodvfy(path)
    assert errors == []
    assert (capture.PatientID, capture.StudyInstanceUID) == (source_uids.PatientID, source_uids.StudyInstanceUID)
    reference = capture.SourceImageSequence[0]
    assert (reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID) == (
        source_uids.SOPClassUID, source_uids.SOPInstanceUID)
    assert "ReferencedFrameNumber" not in reference
    assert f"AI model {MODEL} version 1.0.0 for class bright" in capture.DerivationDescription
    assert hottest_cell(capture) == (1, 2), "hottest where the image is brightest"

    # Never classified: not queued (its store's echo), and skipped by identity when asked.
    assert "AIStatus" not in orthanc.get(f"/instances/{capture_id}/metadata")
    status, answer = orthanc.post_json(f"/ai/instances/{capture_id}/predict", {"force": True})
    assert status == 200 and (answer["state"], answer["reason"]) == ("skipped", "the plugin's own heatmap")
    shown = orthanc.get(f"/ai/instances/{capture_id}/predictions")
    assert shown["predictions"] == [] and shown["status"]["reason"] == "the plugin's own heatmap"
    orthanc.wait_until(lambda: orthanc.status()["heatmapSecondaryCaptures"]["outcomes"].get("written", 0) >= 1, 10,
                       "the capture counted")
    assert orthanc.status()["heatmapSecondaryCaptures"]["enabled"] is True

    # A study-level Predict leaves the capture series out (as series_reports.why_not_images), so no capture of a
    # capture is written.
    # (Without "force": Predict re-runs models by default, which would replace the capture: the next test.)
    status, answer = orthanc.post_json(f"/ai/studies/{stored['ParentStudy']}/predict", {"force": False})
    assert status == 200, answer
    states = {item["instance"]: (item["state"], item["reason"]) for item in answer["instances"]}
    assert capture_id not in states
    assert states[stored["ID"]][0] == "unchanged"
    # Its series becomes stable (StableAge 2 s) and is not reported on, nor waited for.
    time.sleep(4)
    orthanc.wait_until(lambda: orthanc.status()["structuredReports"]["seriesWaiting"] == 0, 30,
                       "no series waiting for a Structured Report")
    study_series = orthanc.get(f"/studies/{stored['ParentStudy']}/series")
    reports = [s for s in study_series if s["MainDicomTags"].get("Modality") == "SR"]
    assert len(reports) == 1, "one SR, of the CT series"
    assert [s["ID"] for s in capture_series(orthanc, stored["ParentStudy"])] == [series["ID"]]
    assert capture_series(orthanc, stored["ParentStudy"])[0]["Instances"] == [capture_id]


def test_re_prediction_replaces_the_capture(orthanc, tmp_path):
    stored = orthanc.store_http(ct(row_cell=2, column_cell=0))
    first = wait_for_capture(orthanc, stored["ParentStudy"])["Instances"][0]

    status, answer = orthanc.post_json(f"/ai/instances/{stored['ID']}/predict", {"force": True})
    assert status == 200 and answer["state"] == "predicted", answer
    series = wait_for_capture(orthanc, stored["ParentStudy"], other_than=first)
    assert len(series["Instances"]) == 1, "one capture per source image and model"
    assert orthanc.request("GET", f"/instances/{first}")[0] == 404, "the older capture is deleted"
    _, capture = download(orthanc, series["Instances"][0], tmp_path)
    assert hottest_cell(capture) == (2, 0)


def test_a_multi_frame_image_gets_the_capture_of_its_middle_frame(orthanc, tmp_path):
    dicom = multi_frame([(0, 0), (3, 1), (0, 3)])
    stored = orthanc.store_http(dicom)
    series = wait_for_capture(orthanc, stored["ParentStudy"])
    path, capture = download(orthanc, series["Instances"][0], tmp_path)
    errors, _ = dciodvfy(path)
    assert errors == []
    reference = capture.SourceImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == read(dicom).SOPInstanceUID
    assert reference.ReferencedFrameNumber == 2
    assert hottest_cell(capture) == (3, 1), "the middle frame's white cell"


def test_off_by_default(tmp_path_factory, models):
    server = OrthancProcess(tmp_path_factory.mktemp("orthanc"), models)
    try:
        server.start()
        stored = server.store_http(ct(row_cell=0, column_cell=1))
        server.wait_idle(1)
        assert server.status()["predicted"] == 1
        time.sleep(1)
        assert capture_series(server, stored["ParentStudy"]) == []
        assert len(server.get(f"/studies/{stored['ParentStudy']}/instances")) == 1
        assert server.status()["heatmapSecondaryCaptures"] == {"enabled": False, "outcomes": {}}
    finally:
        stop_all([server])
