"""kill -9 with a backlog, then a restart: the backlog finishes, none lost, none tagged twice."""
from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orthanc_ai.config import DEFAULT_PRIVATE_CREATOR
from orthanc_ai.dicom.private_tags import read_results
from tests.support.dicom_files import read, synthetic_ct

INSTANCES = 300


@pytest.mark.slow
def test_kill_9_with_a_backlog_then_restart(start_orthanc, tmp_path: Path):
    orthanc = start_orthanc(plugin={"Workers": 1})
    # Let the first checkpoint be written (the plugin starts from the end of the log on a first start).
    orthanc.wait_until(lambda: orthanc.status()["queueLength"] == 0, 10, "start-up")
    time.sleep(6)
    files = []
    for number in range(INSTANCES):
        path = tmp_path / f"{number}.dcm"
        path.write_bytes(synthetic_ct(seed=1000 + number, rows=256, columns=256))
        files.append(path)
    assert orthanc.store_cstore(files).returncode == 0
    before_kill = orthanc.status()
    assert before_kill["queueLength"] > 0, "no backlog to lose: the test would prove nothing"
    orthanc.kill()
    restarted_at = datetime.now(UTC)

    orthanc.start()
    orthanc.wait_until(
        lambda: orthanc.status()["recoveredAtStartup"] > 0 and orthanc.status()["queueLength"] == 0
        and orthanc.status()["inProgress"] == 0, 300, "the backlog to finish")
    status = orthanc.status()
    print(f"\nbacklog at kill: {before_kill['queueLength']} queued, {before_kill['predicted']} predicted; "
          f"after restart: recovered {status['recoveredAtStartup']}, predicted {status['predicted']}, "
          f"unchanged {status['unchanged']}")

    instances = orthanc.get("/instances")
    assert len(instances) == INSTANCES  # none lost
    predicted_after_restart = 0
    for instance_id in instances:
        results = read_results(read(orthanc.get_bytes(f"/instances/{instance_id}/file")), DEFAULT_PRIVATE_CREATOR)
        assert sorted(r.model for r in results) == ["test-any", "test-ct"], instance_id  # one block per model
        assert json.loads(orthanc.get_bytes(f"/instances/{instance_id}/metadata/AIStatus"))["state"] == "predicted"
        if min(r.predicted_at for r in results) >= restarted_at:
            predicted_after_restart += 1
    # Only the lost backlog was predicted after the restart; what was done before was not redone.
    assert status["predicted"] == predicted_after_restart
    assert status["predicted"] + status["unchanged"] == status["recoveredAtStartup"]
    assert status["predicted"] >= before_kill["queueLength"]
