"""A stored CT comes back with the top class's heatmap in its private block; a model without a map writes none."""
from __future__ import annotations

import numpy as np

from orthanc_ai.config import DEFAULT_PRIVATE_CREATOR
from orthanc_ai.dicom.decoding import decode_analysed_frame, read_header
from orthanc_ai.dicom.private_tags import read_results
from orthanc_ai.models.preprocessing import Preprocessing, frame_to_unit_grey, unit_grey_to_tensor
from tests.support.dicom_files import read, synthetic_ct
from tests.support.onnx_models import linear_weights

ROWS, COLUMNS = 96, 64  # not square: the model's input is the frame padded to 96 × 96


def expected_maps(dicom: bytes) -> np.ndarray:
    """test-ct's class maps computed here with numpy: cell p of class c is 16·W[p, c]·pooled[p] + B[c]."""
    header = read_header(dicom, 10**8)
    spec = Preprocessing(height=32, width=32, ct_window=(-600, 1500))
    tensor = unit_grey_to_tensor(frame_to_unit_grey(decode_analysed_frame(header), header.pixels, spec), spec)
    pooled = tensor.reshape(4, 8, 4, 8).mean(axis=(1, 3)).reshape(16)
    weights, bias = linear_weights(3, seed=0)
    return (16 * weights * pooled[:, None] + bias).T.reshape(3, 4, 4)


def test_heatmap_is_stored_in_the_instance_and_replaced_on_re_prediction(orthanc):
    original = synthetic_ct(seed=7, rows=ROWS, columns=COLUMNS)
    before = orthanc.status()
    instance_id = orthanc.store_http(original)["ID"]
    orthanc.wait_idle(sum(before[k] for k in ("predicted", "skipped", "unchanged", "failed", "gone")) + 1)

    stored = read(orthanc.get_bytes(f"/instances/{instance_id}/file"))
    results = {r.model: r for r in read_results(stored, DEFAULT_PRIVATE_CREATOR)}
    ct, other = results["test-ct"], results["test-any"]
    assert other.heatmap is None, "a model without a map output writes no heatmap"
    heatmap = ct.heatmap
    assert heatmap is not None and heatmap.class_name == ct.top_class
    assert (heatmap.rows, heatmap.columns) == (4, 4)
    assert heatmap.region == (-16.0, 0.0, 80.0, 96.0)
    np.testing.assert_allclose(heatmap.grid(), expected_maps(original)[ct.classes.index(ct.top_class)], atol=1e-4)

    # Orthanc knows the elements by name (orthanc.json's "Dictionary"), so no viewer shows them as UN.
    tags = orthanc.get(f"/instances/{instance_id}/tags?simplify")
    slot = next(n for n in ("01", "02") if tags[f"AIModel{n}Name"] == "test-ct")
    assert tags[f"AIModel{slot}HeatmapRows"] == "4" and tags[f"AIModel{slot}HeatmapColumns"] == "4"
    assert [float(v) for v in tags[f"AIModel{slot}HeatmapRegion"].split("\\")] == [-16, 0, 80, 96]
    # The values exceed the 256 characters Orthanc puts in its tag JSON ("TooLong"): they are read from the file
    # or the REST API below; Orthanc still names the element.
    assert f"AIModel{slot}HeatmapValues" in tags
    full = orthanc.get(f"/instances/{instance_id}/tags")
    ours = {key: entry for key, entry in full.items() if key.startswith("0055,")}
    assert {entry["Type"] for entry in ours.values()} <= {"String", "TooLong"}
    assert all(entry["Name"].startswith("AI") for key, entry in ours.items() if key != "0055,0010")

    # The REST API gives the same map.
    predictions = orthanc.get(f"/ai/instances/{instance_id}/predictions")
    answered = {r["model"]: r for r in predictions["predictions"]}
    assert answered["test-any"]["heatmap"] is None
    assert answered["test-ct"]["heatmap"]["values"] == list(heatmap.values)

    # Re-prediction rewrites the slot: still one heatmap for the model, from the new prediction.
    status, _ = orthanc.post_json(f"/ai/instances/{instance_id}/predict", {"force": True})
    assert status == 200
    again = read(orthanc.get_bytes(f"/instances/{instance_id}/file"))
    [ct_again] = [r for r in read_results(again, DEFAULT_PRIVATE_CREATOR) if r.model == "test-ct"]
    assert ct_again.predicted_at > ct.predicted_at and ct_again.heatmap == heatmap
    heatmap_elements = [e for e in again if e.tag.group == 0x55 and (e.tag.element & 0xFF) % 16 == 0xB]
    assert len(heatmap_elements) == 1
