"""Images deleted while the plugin holds them stay deleted: deletions raced against every stage of the pipeline.

Each round stores a CT of a new patient and, once ``/ai/status`` shows the plugin at the stage the round
aims at (queued, reading, predicting, storing, recording, done), deletes it at one of the levels: the
instance, its series, study or patient, or a bulk delete of the patient. The plugin itself records the
stage each deletion request found it at. At the end nothing that was deleted exists, and nothing comes back.
"""
from __future__ import annotations

import http.client
import json
import time
from typing import Any

import pytest
from pydicom.uid import generate_uid

from orthanc_ai.orthanc.orthanc_ids import orthanc_ids
from tests.support.dicom_files import read, synthetic_ct
from tests.support.orthanc_process import OrthancProcess

ROUNDS = 200
MAX_ROUNDS = 500
LEVELS = ("instances", "series", "studies", "patients", "bulk-delete")
AIMS = ("queued", "reading", "predicting", "storing", "recording", "done")
# Stages the plugin reports in /ai/status "deletions.requestsByStage" ("idle": nothing in progress).
STAGES = ("queued", "reading", "predicting", "storing", "recording", "idle")
AIM_FOR_STAGE = dict(zip(STAGES, AIMS, strict=True))


def test_ids_the_plugin_derives_are_orthancs_own(orthanc):
    # "AI-ODD" has an odd length: written padded with a space, which Orthanc does not count.
    for patient in ("AI-ODD", "AI-EVEN1"):
        dicom = synthetic_ct(seed=3, patient_id=patient)
        answer = orthanc.store_http(dicom)
        ids = orthanc_ids(read(dicom))
        assert ids.all() == (answer["ParentPatient"], answer["ParentStudy"], answer["ParentSeries"], answer["ID"])


@pytest.mark.slow
def test_images_deleted_while_the_plugin_holds_them_stay_deleted(start_orthanc):
    # "always": the deletion filter on every generation (its default, "auto", leaves it out on plugin 4.0).
    orthanc = start_orthanc(plugin={"DeletionFilter": "always"})
    poller = StatusPoller(orthanc)
    observable = _observable_stages(orthanc)
    deleted: list[dict[str, Any]] = []
    number = 0
    # At least ROUNDS rounds; then more, aimed at the stages the plugin has seen fewer than 3 deletions at
    # (a stage of a few milliseconds is sometimes over before the deletion arrives).
    while number < ROUNDS or (missing := _stages_seen_less_than(3, orthanc, observable)) and number < MAX_ROUNDS:
        level = LEVELS[number % len(LEVELS)]
        aim = AIMS[(number // len(LEVELS)) % len(AIMS)] if number < ROUNDS else AIM_FOR_STAGE[missing[0]]
        _wait_until_idle(orthanc)
        # Three images at once keep the last one queued behind the workers.
        count = 3 if aim == "queued" else 1
        study, series = generate_uid(), generate_uid()
        answers = [orthanc.store_http(synthetic_ct(seed=number * 10 + k, rows=1024, columns=1024, study_uid=study,
                                                   series_uid=series, instance_number=k + 1,
                                                   patient_id=f"RACE-{number:03d}"))
                   for k in range(count)]
        _time_the_deletion(poller, aim)
        _delete(orthanc, level, answers)
        deleted.extend(answers)
        number += 1

    _wait_until_idle(orthanc)
    time.sleep(3)  # a store-back that would undo a deletion has long happened by now
    status = orthanc.status()
    print(f"\n{number} deletions; {_status_summary(status)}")
    back = [a["ID"] for a in deleted if orthanc.request("GET", f"/instances/{a['ID']}")[0] != 404]
    assert back == [], f"{len(back)} deleted instance(s) came back"
    assert orthanc.get("/patients") == []
    assert status["failed"] == 0
    deletions = status["deletions"]
    assert deletions["httpFilter"] is True
    for stage in observable:  # deletions landed at every stage of the pipeline, as the plugin saw it
        assert deletions["requestsByStage"].get(stage, 0) >= 3, deletions
    assert deletions["storeBacksRefused"] > 0  # and the fence, not luck, kept them deleted


def _observable_stages(orthanc: OrthancProcess) -> tuple[str, ...]:
    """Reading, storing and recording are mostly calls into Orthanc. Plugins before 4.3 keep the GIL during
    those calls, so the deletion filter (Python too) cannot run inside them: there a deletion request waits
    until the call is over, and finds the plugin queued, predicting or idle."""
    if orthanc.python_plugin_version() >= (4, 3):
        return STAGES
    return tuple(stage for stage in STAGES if stage not in ("reading", "storing", "recording"))


def _stages_seen_less_than(count: int, orthanc: OrthancProcess, stages: tuple[str, ...]) -> list[str]:
    seen = orthanc.status()["deletions"]["requestsByStage"]
    return [stage for stage in stages if seen.get(stage, 0) < count]


def _wait_until_idle(orthanc: OrthancProcess) -> None:
    orthanc.wait_until(lambda: _is_idle(orthanc.status()), 60, "the plugin to be idle")


def _is_idle(status: dict[str, Any]) -> bool:
    return status["queueLength"] == 0 and status["inProgress"] == 0 and not status["stages"]


class StatusPoller:
    """GET /ai/status over one kept-alive connection: fast enough to see stages of a few milliseconds."""

    def __init__(self, orthanc: OrthancProcess) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", orthanc.http_port, timeout=30)

    def status(self) -> dict[str, Any]:
        try:
            self.connection.request("GET", "/ai/status")
            return json.loads(self.connection.getresponse().read())
        except (http.client.RemoteDisconnected, ConnectionError):  # Orthanc closes idle connections
            self.connection.close()
            self.connection.request("GET", "/ai/status")
            return json.loads(self.connection.getresponse().read())


def _time_the_deletion(poller: StatusPoller, aim: str) -> None:
    """Poll the plugin's own progress until it reaches ``aim`` (or is done)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = poller.status()
        if aim == "queued" and status["queueLength"] > 0:
            return
        if aim == "reading" and status["inProgress"] > 0:  # a worker has the instance: it is reading it
            return
        if aim in status["stages"] or _is_idle(status):
            return


def _delete(orthanc: OrthancProcess, level: str, answers: list[dict[str, Any]]) -> None:
    first = answers[0]
    if level == "instances":
        for answer in answers:
            status, _ = orthanc.request("DELETE", f"/instances/{answer['ID']}")
            assert status in (200, 404)
        return
    if level == "bulk-delete":
        status, _ = orthanc.post_json("/tools/bulk-delete", {"Resources": [first["ParentPatient"]]})
        assert status == 200
        return
    parent = {"series": "ParentSeries", "studies": "ParentStudy", "patients": "ParentPatient"}[level]
    status, _ = orthanc.request("DELETE", f"/{level}/{first[parent]}")
    assert status == 200


def _status_summary(status: dict[str, Any]) -> dict[str, Any]:
    keys = ("predicted", "gone", "failed", "skipped", "deletions")
    return {key: status.get(key) for key in keys}
