"""A burst of 500 instances from 4 parallel DICOM clients: all processed, none lost, none tagged twice."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from orthanc_ai.config import DEFAULT_PRIVATE_CREATOR
from orthanc_ai.dicom.private_tags import read_results
from tests.support.dicom_files import read, synthetic_ct

INSTANCES = 500
CLIENTS = 4


@pytest.mark.slow
def test_burst_of_500_from_4_clients(start_orthanc, tmp_path: Path):
    orthanc = start_orthanc()
    files = []
    for number in range(INSTANCES):
        path = tmp_path / f"ct{number:04d}.dcm"
        path.write_bytes(synthetic_ct(seed=number, rows=256, columns=256, instance_number=number + 1))
        files.append(path)

    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        runs = list(pool.map(orthanc.store_cstore, [files[i::CLIENTS] for i in range(CLIENTS)]))
    stored_in = time.monotonic() - started
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]

    status = orthanc.wait_idle(INSTANCES, timeout=600)
    processed_in = time.monotonic() - started
    print(f"\n{INSTANCES} instances stored by {CLIENTS} clients in {stored_in:.1f} s; "
          f"all processed after {processed_in:.1f} s; status {json.dumps(status['latencySeconds'])}")

    instances = orthanc.get("/instances")
    assert len(instances) == INSTANCES  # none lost
    assert status["predicted"] == INSTANCES
    assert status["failed"] == status["skipped"] == 0
    for instance_id in instances:
        models = [r.model for r in read_results(read(orthanc.get_bytes(f"/instances/{instance_id}/file")),
                                                DEFAULT_PRIVATE_CREATOR)]
        assert sorted(models) == ["test-any", "test-ct"], instance_id  # exactly one block per model
    # Every echo of our re-stores was recognised: nothing was predicted twice.
    orthanc.wait_until(lambda: orthanc.status()["echoesIgnored"] == INSTANCES, 30, "all echoes")
    final = orthanc.status()
    assert final["predicted"] == INSTANCES and final["unchanged"] == 0


def test_ingest_first_holds_prediction_back_until_the_burst_ends(start_orthanc, tmp_path: Path):
    """While a modality sends a series faster than IngestFirstAbovePerSecond, the workers leave the CPU to
    ingest (held back, not predicting); when it ends they catch up, and everything is predicted."""
    orthanc = start_orthanc(IngestFirstAbovePerSecond=10, IngestFirstMaxDelaySeconds=120)
    count = 200
    files = []
    for number in range(count):
        path = tmp_path / f"ct{number:04d}.dcm"
        path.write_bytes(synthetic_ct(seed=number, rows=128, columns=128, instance_number=number + 1))
        files.append(path)

    samples: list[dict] = []
    storing = threading.Event()
    storing.set()

    def watch() -> None:
        while storing.is_set():
            samples.append(orthanc.status())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    run = orthanc.store_cstore(files)
    stored_in = time.monotonic() - started
    predicted_when_stored = orthanc.status()["predicted"]
    storing.clear()
    watcher.join()
    assert run.returncode == 0, run.stderr[-2000:]

    status = orthanc.wait_idle(count, timeout=300)
    print(f"\n{count} instances stored in {stored_in:.1f} s ({count / stored_in:.0f}/s); predicted when the "
          f"store ended: {predicted_when_stored}; most held back at once: "
          f"{max(s['holdingBackForIngest'] for s in samples)}")
    assert max(s["holdingBackForIngest"] for s in samples) >= 1, "no worker held back during the burst"
    # The burst is recognised from its 10th arrival within a second; after that no worker predicts until
    # it ends (a few more may have been mid-prediction then).
    assert predicted_when_stored <= 15, f"{predicted_when_stored} predicted during the burst"
    assert status["predicted"] == count and status["failed"] == status["skipped"] == 0
    assert len(orthanc.get("/instances")) == count
