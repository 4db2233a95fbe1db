"""The plugin's REST API, as the Explorer button and scripts use it."""
from __future__ import annotations

import json

import numpy as np

from tests.support.dicom_files import secondary_capture, synthetic_ct


def test_models_route_lists_loaded_models(orthanc):
    answer = orthanc.get("/ai/models")
    names = {m["name"]: m for m in answer["models"]}
    assert set(names) == {"test-ct", "test-any"}
    assert names["test-ct"]["classes"] == ["Benign", "Malignant", "Normal"]
    assert names["test-ct"]["version"] == "1.0.0"
    assert names["test-ct"]["appliesTo"] == {"Modality": ["CT"]}
    assert answer["failedToLoad"] == {}


def test_predict_unknown_model_is_a_clear_400(orthanc):
    instance_id = orthanc.store_http(synthetic_ct(seed=10))["ID"]
    status, answer = orthanc.post_json(f"/ai/instances/{instance_id}/predict", {"models": ["no-such-model"]})
    assert status == 400
    assert "unknown model 'no-such-model'" in answer["error"]
    assert "test-ct" in answer["error"]  # tells what is available


def test_predict_bad_bodies_are_400(orthanc):
    instance_id = orthanc.store_http(synthetic_ct(seed=11))["ID"]
    for body, message in [(b"not json", "not JSON"), (b'{"model": ["x"]}', "unknown key"),
                          (b'{"models": "test-ct"}', "list of model names"), (b'{"models": []}', "empty")]:
        status, answer = orthanc.request("POST", f"/ai/instances/{instance_id}/predict", body)
        assert status == 400, body
        assert message in json.loads(answer)["error"], body


def test_predict_unknown_instance_is_404(orthanc):
    status, _ = orthanc.post_json("/ai/instances/00000000-00000000-00000000-00000000-00000000/predict")
    assert status == 404
    status, _ = orthanc.request("GET", "/ai/instances/00000000-00000000-00000000-00000000-00000000/predictions")
    assert status == 404


def test_malformed_ids_and_oversized_bodies_get_json_errors(orthanc):
    status, answer = orthanc.request("GET", "/ai/instances/not-an-id/predictions")
    assert status == 404 and "not an Orthanc id" in json.loads(answer)["error"]
    instance_id = orthanc.store_http(synthetic_ct(seed=12))["ID"]
    status, answer = orthanc.request("POST", f"/ai/instances/{instance_id}/predict", b" " * (65 * 1024))
    assert status == 413 and "larger than this route accepts" in json.loads(answer)["error"]


def test_an_upload_above_max_file_megabytes_is_413(start_orthanc):
    server = start_orthanc(plugin={"MaxFileMegabytes": 1})
    # 1 MiB in base64 is about 1.4 MB: 1.5 MB of it is refused before it is parsed.
    status, answer = server.request("POST", "/ai/upload", b'{"content": "' + b"A" * 1_500_000 + b'"}')
    assert status == 413 and "larger than this route accepts" in json.loads(answer)["error"]
    assert server.get("/instances") == []


def test_wrong_method_is_refused(orthanc):
    status, _ = orthanc.request("GET", "/ai/instances/00000000-00000000-00000000-00000000-00000000/predict")
    assert status == 405


def test_chosen_model_runs_even_where_rules_would_not_choose_it(orthanc):
    # An 8-bit secondary capture is not a CT: automatic prediction runs only test-any.
    grey = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
    instance_id = orthanc.store_http(secondary_capture(grey))["ID"]
    orthanc.wait_until(lambda: "AIStatus" in orthanc.get(f"/instances/{instance_id}/metadata"), 30, "prediction")
    auto = orthanc.get(f"/ai/instances/{instance_id}/predictions")
    assert [p["model"] for p in auto["predictions"]] == ["test-any"]
    # A radiologist may still choose the CT model explicitly.
    status, answer = orthanc.post_json(f"/ai/instances/{instance_id}/predict", {"models": ["test-ct"]})
    assert status == 200 and answer["state"] == "predicted"
    assert sorted(p["model"] for p in answer["predictions"]) == ["test-any", "test-ct"]


def test_series_and_study_predict(orthanc):
    study, series = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.1.1"
    ids = [orthanc.store_http(synthetic_ct(seed=20 + n, study_uid=study, series_uid=series, instance_number=n))["ID"]
           for n in range(3)]
    info = orthanc.get(f"/instances/{ids[0]}")
    series_id = info["ParentSeries"]
    study_id = orthanc.get(f"/series/{series_id}")["ParentStudy"]
    orthanc.wait_until(lambda: all("AIStatus" in orthanc.get(f"/instances/{i}/metadata") for i in ids), 30, "auto")

    status, answer = orthanc.post_json(f"/ai/series/{series_id}/predict", {"models": ["test-ct"]})
    assert status == 200
    assert answer["counts"] == {"predicted": 3}
    assert sorted(o["instance"] for o in answer["instances"]) == sorted(ids)
    # Then the series' Structured Reports, one per model in its tags.
    [report] = answer["reports"]
    assert report["series"] == series_id and report["state"] == "written"
    assert set(report["reports"]) == {"test-ct", "test-any"}

    # Without force, models whose current version already predicted are not re-run; the study's SR series
    # are not predicted (no images), and the reports stand as they are.
    status, answer = orthanc.post_json(f"/ai/studies/{study_id}/predict", {"force": False})
    assert status == 200
    assert answer["counts"] == {"unchanged": 3}
    by_series = {r["series"]: r for r in answer["reports"]}
    assert by_series[series_id]["state"] == "unchanged" and by_series[series_id]["reports"] == report["reports"]


def test_status_route_reports_counts(orthanc):
    status = orthanc.status()
    for key in ("predicted", "skipped", "failed", "queueLength", "inProgress", "latencySeconds", "reasons"):
        assert key in status
    assert status["models"] == ["test-any", "test-ct"]
