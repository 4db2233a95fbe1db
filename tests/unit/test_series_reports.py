"""When the series reporter writes, skips or waits, with an in-memory Orthanc (the real one: tests/integration)."""
from __future__ import annotations

import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.uid import generate_uid

from orthanc_ai.config import DEFAULT_PRIVATE_CREATOR, METADATA_STATUS
from orthanc_ai.dicom.private_tags import ModelResult
from orthanc_ai.dicom.tagging import add_results
from orthanc_ai.events.instance_guards import EchoGuard
from orthanc_ai.models.model_card import ModelCard
from orthanc_ai.orthanc.orthanc_api import ResourceNotFound
from orthanc_ai.orthanc.orthanc_ids import orthanc_ids
from orthanc_ai.outputs import series_reports
from orthanc_ai.outputs.series_reports import SeriesReporter
from tests.support.dicom_files import read, synthetic_ct
from tests.support.orthanc_process import PROJECT

CARD = ModelCard.load(PROJECT / "models" / "lung-ct-3")


class MemoryOrthanc:
    """Instances by Orthanc id, grouped in series as Orthanc does (the ids are Orthanc's own hashes)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        self.series_of: dict[str, str] = {}
        self.modality: dict[str, str] = {}
        self.stored: list[str] = []
        self.deleted: list[str] = []

    def add(self, dicom: bytes, **metadata: str) -> str:
        ids = orthanc_ids(read(dicom))
        self.files[ids.instance] = dicom
        self.metadata[ids.instance] = dict(metadata)
        self.series_of[ids.instance] = ids.series
        self.modality[ids.series] = str(read(dicom).Modality)
        return ids.instance

    def series(self, series_id: str) -> dict[str, Any]:
        instances = [i for i, s in self.series_of.items() if s == series_id]
        if not instances:
            raise ResourceNotFound(series_id)
        return {"MainDicomTags": {"Modality": self.modality[series_id]}, "Instances": instances}

    def instance_file(self, instance_id: str) -> bytes:
        if instance_id not in self.files:
            raise ResourceNotFound(instance_id)
        return self.files[instance_id]

    def instance_metadata(self, instance_id: str) -> dict[str, str]:
        return dict(self.metadata[instance_id])

    def instance_exists(self, instance_id: str) -> bool:
        return instance_id in self.files

    def store_instance(self, dicom: bytes) -> dict[str, Any]:
        instance_id = self.add(dicom)
        self.stored.append(instance_id)
        return {"ID": instance_id, "Status": "Success"}

    def delete_instance(self, instance_id: str) -> None:
        del self.files[instance_id], self.series_of[instance_id]
        self.deleted.append(instance_id)

    def child_instances(self, level: str, resource_id: str) -> list[str]:
        return self.series(resource_id)["Instances"]


def predicted_series(orthanc: MemoryOrthanc, count: int, with_status: int | None = None,
                     predicted_at: datetime = datetime(2026, 12, 1, tzinfo=UTC)) -> str:
    """A CT series whose first ``with_status`` images (all by default) have their outcome recorded."""
    study, series = generate_uid(), generate_uid()
    series_id = ""
    for number in range(1, count + 1):
        result = ModelResult(CARD.name, CARD.version, CARD.dataset, predicted_at, CARD.classes,
                             (0.1, 0.2 + number / 100, 0.7 - number / 100))
        dicom = add_results(synthetic_ct(seed=number, study_uid=study, series_uid=series, instance_number=number),
                            DEFAULT_PRIVATE_CREATOR, "test", [result])
        done = with_status is None or number <= with_status
        instance_id = orthanc.add(dicom, **({METADATA_STATUS: '{"state": "predicted"}'} if done else {}))
        series_id = orthanc.series_of[instance_id]
    return series_id


@pytest.fixture
def orthanc() -> MemoryOrthanc:
    return MemoryOrthanc()


@pytest.fixture
def unwritten() -> dict[str, dict[str, str]]:
    """Skips and failures the plugin remembers (it writes nothing into instances it does not predict)."""
    return {}


@pytest.fixture
def reporter(orthanc: MemoryOrthanc, unwritten: dict[str, dict[str, str]]) -> SeriesReporter:
    registry: Any = SimpleNamespace(models={CARD.name: SimpleNamespace(card=CARD)})
    return SeriesReporter(orthanc, registry, DEFAULT_PRIVATE_CREATOR, EchoGuard(), unwritten_outcome=unwritten.get)


def test_writes_once_and_not_again_for_the_same_results(orthanc, reporter):
    series_id = predicted_series(orthanc, 3)
    first = reporter.report(series_id, require_complete=True)
    assert first.state == "written" and list(first.reports) == ["lung-ct-3"]
    assert orthanc.stored == [first.reports["lung-ct-3"]]
    assert reporter.echoes.consume(first.reports["lung-ct-3"]), "our SR store is not queued for prediction"
    again = reporter.report(series_id, require_complete=True)
    assert again.state == "unchanged" and again.reports == first.reports and len(orthanc.stored) == 1


def test_waits_while_an_image_has_no_outcome_unless_asked_explicitly(orthanc, reporter):
    series_id = predicted_series(orthanc, 3, with_status=2)
    outcome = reporter.report(series_id, require_complete=True)
    assert (outcome.state, outcome.reason) == ("incomplete", "1 image(s) without an outcome")
    assert orthanc.stored == []
    assert reporter.report(series_id).state == "written"  # Predict: what the tags hold now


def test_new_results_replace_the_report_new_first_then_old_deleted(orthanc, reporter):
    series_id = predicted_series(orthanc, 2)
    old = reporter.report(series_id).reports["lung-ct-3"]
    report_series = orthanc.series_of[old]
    # The same images predicted again later (same UIDs, new prediction time).
    for instance_id in list(orthanc.series(series_id)["Instances"]):
        ds = read(orthanc.files[instance_id])
        result = ModelResult(CARD.name, CARD.version, CARD.dataset, datetime(2026, 12, 2, tzinfo=UTC), CARD.classes,
                             (0.5, 0.3, 0.2))
        orthanc.files[instance_id] = add_results(orthanc.files[instance_id], DEFAULT_PRIVATE_CREATOR, "test",
                                                 [result])
        assert read(orthanc.files[instance_id]).SOPInstanceUID == ds.SOPInstanceUID
    new = reporter.report(series_id).reports["lung-ct-3"]
    assert new != old and orthanc.stored == [old, new] and orthanc.deleted == [old]
    assert orthanc.series_of[new] == report_series  # the same SR series, now holding the new SR only
    assert orthanc.series(report_series)["Instances"] == [new]


def test_sr_series_and_unanalysed_series_are_left_alone(orthanc, reporter):
    series_id = predicted_series(orthanc, 1)
    report_id = reporter.report(series_id).reports["lung-ct-3"]
    assert reporter.report(orthanc.series_of[report_id]).state == "not reported"
    plain = orthanc.series_of[orthanc.add(synthetic_ct(seed=99), **{METADATA_STATUS: '{"state": "skipped"}'})]
    assert reporter.report(plain).state == "not analysed"
    assert reporter.report("no-such-series").state == "gone"


def test_a_series_whose_images_were_all_skipped_is_not_read(orthanc, reporter, unwritten, monkeypatch):
    plain = [orthanc.add(synthetic_ct(seed=90 + n, study_uid="1.2.9", series_uid="1.2.9.1")) for n in range(3)]
    unwritten.update({instance_id: {"state": "skipped", "reason": "no model applies"} for instance_id in plain})
    monkeypatch.setattr(orthanc, "instance_file", lambda instance_id: pytest.fail("a skipped image was read"))
    outcome = reporter.report(orthanc.series_of[plain[0]], require_complete=True)
    assert outcome.state == "not analysed" and orthanc.stored == []


def test_a_stable_series_is_retried_until_its_images_have_outcomes(orthanc, reporter, unwritten, monkeypatch):
    monkeypatch.setattr(series_reports, "RETRY_SECONDS", 0.05)
    series_id = predicted_series(orthanc, 2, with_status=1)
    reporter.start()
    try:
        reporter.request(series_id)
        time.sleep(0.3)
        assert orthanc.stored == [] and reporter.pending == 1
        last = orthanc.series(series_id)["Instances"][-1]
        unwritten[last] = {"state": "failed", "reason": "RuntimeError: boom"}
        deadline = time.monotonic() + 5
        # Wait for the outcome, not for the store: the SR is stored before the outcome is counted.
        while "written" not in reporter.counts and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(orthanc.stored) == 1 and reporter.pending == 0
        assert reporter.counts["incomplete"] >= 2 and reporter.counts["written"] == 1
    finally:
        reporter.stop()
