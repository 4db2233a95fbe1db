"""``PredictionProcesses``: the plugin predicts in child processes of Orthanc, which end with it."""
from __future__ import annotations

import os
import signal
import time

from orthanc_ai.config import DEFAULT_PRIVATE_CREATOR
from orthanc_ai.dicom.private_tags import read_results
from tests.support.dicom_files import read, synthetic_ct
from tests.support.orthanc_process import child_pids, proc_stat_fields


def _alive(pid: int) -> bool:
    try:
        return proc_stat_fields(pid)[0] != "Z"
    except OSError:
        return False


def test_images_are_tagged_by_the_processes_which_end_with_orthanc(start_orthanc, tmp_path):
    orthanc = start_orthanc(plugin={"PredictionProcesses": 2})
    orthanc.wait_until(lambda: orthanc.status()["predictionProcesses"] == 2, what="2 prediction processes")
    assert "2 prediction processes ready" in orthanc.log_text()
    children = child_pids(orthanc.process.pid)
    assert len(children) == 2, children

    files = []
    for seed in range(6):
        path = tmp_path / f"ct{seed}.dcm"
        path.write_bytes(synthetic_ct(seed=100 + seed))
        files.append(path)
    assert orthanc.store_cstore(files).returncode == 0
    status = orthanc.wait_idle(6)
    assert status["predicted"] == 6, status
    for instance_id in orthanc.get("/instances"):
        stored = read(orthanc.get_bytes(f"/instances/{instance_id}/file"))
        assert {r.model for r in read_results(stored, DEFAULT_PRIVATE_CREATOR)} == {"test-ct", "test-any"}

    assert orthanc.stop() == 0, orthanc.log_tail()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children), "a prediction process outlived Orthanc"


def test_a_killed_process_is_replaced_and_no_image_is_lost(start_orthanc, tmp_path):
    orthanc = start_orthanc(plugin={"PredictionProcesses": 1})
    orthanc.wait_until(lambda: orthanc.status()["predictionProcesses"] == 1, what="a prediction process")
    (victim,) = child_pids(orthanc.process.pid)
    os.kill(victim, signal.SIGKILL)
    path = tmp_path / "ct.dcm"
    path.write_bytes(synthetic_ct(seed=120))
    assert orthanc.store_cstore([path]).returncode == 0
    status = orthanc.wait_idle(1)
    assert status["predicted"] == 1, status
    assert f"Prediction process {victim} ended (killed by signal SIGKILL)" in orthanc.log_text()
    (replacement,) = child_pids(orthanc.process.pid)
    assert replacement != victim
    assert orthanc.stop() == 0, orthanc.log_tail()



def test_auto_starts_them_only_where_orthanc_calls_keep_the_gil(start_orthanc):
    orthanc = start_orthanc()  # orthanc.json: "PredictionProcesses": "auto", "AllowThreads": true
    expected = 2 if orthanc.python_plugin_version() < (5, 0) else 0
    assert f"2 worker(s), {expected} prediction process(es) when started" in orthanc.log_text()
    orthanc.wait_until(lambda: orthanc.status()["predictionProcesses"] == expected, what=f"{expected} processes")
    assert len(child_pids(orthanc.process.pid)) == expected
