"""Configuration errors, models that fail to load, automatic prediction off, clean shutdown."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from tests.support.dicom_files import synthetic_ct


def test_unknown_key_refuses_to_start_with_a_clear_message(start_orthanc):
    server = start_orthanc(expect_failure=True, plugin={"Workerz": 3})
    assert server.process.wait(30) != 0
    assert 'unknown key(s) in "OrthancAI": Workerz' in server.log_text()


def test_bad_value_refuses_to_start(start_orthanc):
    server = start_orthanc(expect_failure=True, plugin={"Workers": "four"})
    server.process.wait(30)
    assert """"OrthancAI.Workers" must be a whole number, not 'four'""" in server.log_text()


def test_overwrite_off_refuses_to_start(start_orthanc):
    server = start_orthanc(expect_failure=True, OverwriteInstances=False)
    server.process.wait(30)
    assert '"OverwriteInstances" must be true' in server.log_text()


def test_model_that_fails_to_load_is_reported_and_skipped(start_orthanc, test_models: Path, tmp_path: Path):
    models = tmp_path / "models"
    shutil.copytree(test_models, models)
    broken = models / "broken"
    shutil.copytree(models / "test-ct", broken)
    (broken / "model.json").write_text((broken / "model.json").read_text().replace('"test-ct"', '"broken"'))
    (broken / "model.onnx").write_bytes(b"this is not an ONNX file")
    (models / "bad-card").mkdir()
    (models / "bad-card" / "model.json").write_text("{ not json")

    server = start_orthanc(models=models)
    answer = server.get("/ai/models")
    assert sorted(m["name"] for m in answer["models"]) == ["test-any", "test-ct"]
    assert "ONNX Runtime cannot load it" in answer["failedToLoad"]["broken"]
    assert "cannot read the model card" in answer["failedToLoad"]["bad-card"]
    assert "Model broken skipped" in server.log_text()
    # The others still work.
    instance_id = server.store_http(synthetic_ct(seed=30))["ID"]
    server.wait_idle(1)
    assert server.status()["predicted"] == 1
    assert {p["model"] for p in server.get(f"/ai/instances/{instance_id}/predictions")["predictions"]} == {
        "test-ct", "test-any"}


def test_enabled_models_and_applies_to_from_configuration(start_orthanc):
    server = start_orthanc(plugin={"EnabledModels": ["test-ct", "missing-model"],
                                   "AppliesTo": {"test-ct": {"Modality": ["MR"]}}})
    answer = server.get("/ai/models")
    assert [m["name"] for m in answer["models"]] == ["test-ct"]
    assert "missing-model" in answer["failedToLoad"]
    server.store_http(synthetic_ct(seed=31))
    status = server.wait_idle(1)
    assert status["skipped"] == 1
    assert status["recentProblems"][0]["reason"] == "no model applies (test-ct: Modality CT not in [MR])"


def test_auto_predict_off_leaves_instances_until_asked(start_orthanc):
    server = start_orthanc(plugin={"AutoPredict": False})
    instance_id = server.store_http(synthetic_ct(seed=32))["ID"]
    time.sleep(1.0)
    assert server.status()["predicted"] == 0
    assert "AIStatus" not in server.get(f"/instances/{instance_id}/metadata")
    status, answer = server.post_json(f"/ai/instances/{instance_id}/predict")
    assert status == 200 and answer["state"] == "predicted"
    # The echo of the re-store is recognised even with automatic prediction off.
    server.wait_until(lambda: server.status()["echoesIgnored"] == 1, 10, "the echo")


def test_sigterm_during_a_burst_stops_cleanly(start_orthanc, tmp_path: Path):
    """SIGTERM (docker stop, systemctl stop, a package upgrade) while the workers are busy: exit 0, no crash."""
    server = start_orthanc()
    files = []
    for number in range(150):
        path = tmp_path / f"{number}.dcm"
        path.write_bytes(synthetic_ct(seed=100 + number, rows=256, columns=256))
        files.append(path)
    assert server.store_cstore(files).returncode == 0
    busy = server.status()
    assert busy["queueLength"] + busy["inProgress"] > 0, f"the burst was over before SIGTERM: {busy}"
    started = time.monotonic()
    assert server.stop(timeout=60) == 0, server.log_tail()
    assert time.monotonic() - started < 30
    # Orthanc's own last words: it went through its whole shutdown, plugins finalized included.
    assert "Orthanc has stopped" in server.log_text()
