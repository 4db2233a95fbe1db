"""Writes each analysed series' Structured Reports, one per model, once the series is complete.

When: Orthanc's STABLE_SERIES change (``StableAge`` seconds after the series' last new instance,
our own re-stores included) once every image of the series has an outcome (the ``AIStatus``
metadata: predicted, skipped or failed), and right after an explicit Predict of a series or study.
A series still being predicted is looked at again every few seconds, for up to ``COMPLETION_WAIT``.

What: the results are read back from the images' private tags (the one source of truth), summarised
(series_summary.py) and written as a TID 1500 SR (structured_report.py). The SR's UIDs are derived
from the results, so a report that exists already is not written again, two nodes on one database
write the same instance, and a re-prediction (new results) gives a new SR: it is stored first, then
the model's older SRs of that series are deleted.

Never: SR series (ours or anyone's) and the plugin's own series (Manufacturer ``orthanc-ai``: its heatmap
Secondary Captures) are not reported on, and our own stores are not queued for prediction (the echo
guard), so a report never triggers another.
"""
from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pydicom
from pydicom import Dataset

from ..config import METADATA_STATUS
from ..dicom.decoding import PLUGIN_MANUFACTURER, int_or_none
from ..dicom.private_tags import ModelResult, read_results
from ..events.instance_guards import EchoGuard, InstanceLocks
from ..models.registry import ModelRegistry
from ..orthanc.orthanc_api import ResourceNotFound
from ..orthanc.orthanc_ids import orthanc_ids_of
from .series_summary import AnalysedImage, SeriesSummary, summarise
from .structured_report import build_report, encode, report_instance_uid, report_series_uid

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0
COMPLETION_WAIT = 600.0  # a series whose images still lack an outcome after this is left (logged)
# Series without images: never reported on, and left out of a study's Predict (explorer.js has the same list).
NOT_REPORTED_MODALITIES = {"SR", "KO", "PR", "SEG", "RTSTRUCT", "DOC"}


def why_not_images(series_tags: Mapping[str, Any]) -> str | None:
    """Why a series (Orthanc's main DICOM tags of it) holds no images to predict or report, else None."""
    modality = str(series_tags.get("Modality", "")).upper()
    if modality in NOT_REPORTED_MODALITIES:
        return f"{modality} series are not reported on"
    if str(series_tags.get("Manufacturer", "")).strip() == PLUGIN_MANUFACTURER:
        # The plugin's own output (its heatmap Secondary Captures): never predicted, so never complete.
        return "the plugin's own series are not reported on"
    return None


class ReportApi(Protocol):
    def series(self, series_id: str) -> dict[str, Any]: ...

    def instance_file(self, instance_id: str) -> bytes: ...

    def instance_metadata(self, instance_id: str) -> dict[str, str]: ...

    def instance_exists(self, instance_id: str) -> bool: ...

    def store_instance(self, dicom: bytes) -> dict[str, Any]: ...

    def delete_instance(self, instance_id: str) -> None: ...

    def child_instances(self, level: str, resource_id: str) -> list[str]: ...


@dataclass
class SeriesImages:
    """What the series' images hold: each one's header and results."""

    headers: dict[str, Dataset] = field(default_factory=dict)  # by SOP Instance UID
    results: dict[str, list[ModelResult]] = field(default_factory=dict)  # every model's, by SOP Instance UID
    analysed: dict[str, list[AnalysedImage]] = field(default_factory=dict)  # by model


@dataclass
class ReportOutcome:
    series_id: str
    state: str  # "written", "unchanged", "incomplete", "not analysed", "not reported", "gone", "failed"
    reason: str = ""
    reports: dict[str, str] = field(default_factory=dict)  # model → Orthanc id of its SR

    def to_json(self) -> dict[str, Any]:
        return {"series": self.series_id, "state": self.state, "reason": self.reason, "reports": self.reports}


class SeriesReporter:
    def __init__(self, api: ReportApi, registry: ModelRegistry, private_creator: str, echoes: EchoGuard,
                 clock: Callable[[], float] = time.monotonic,
                 unwritten_outcome: Callable[[str], object | None] = lambda instance_id: None) -> None:
        self.api = api
        # The outcome of an image the plugin did not predict (it writes nothing there): PluginStatus's memory.
        self.unwritten_outcome = unwritten_outcome
        self.registry = registry
        self.private_creator = private_creator
        self.echoes = echoes
        self.clock = clock
        self.counts: dict[str, int] = {}
        # Called with each SR written, its summary, and the results (all models) of each image it reports:
        # the router sends the SR where those images went, the labeller labels the study with the conclusion.
        self.after_report: list[Callable[[str, SeriesSummary, list[list[ModelResult]]], object]] = []
        self._series_locks = InstanceLocks()
        self._pending: dict[str, tuple[float, float]] = {}  # series id → (next attempt, give up at)
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # --- the background path: STABLE_SERIES ------------------------------------------------------------

    def request(self, series_id: str) -> None:
        """A series became stable (called on Orthanc's change thread: no REST call here)."""
        with self._wake:
            now = self.clock()
            self._pending[series_id] = (now, now + COMPLETION_WAIT)
            self._wake.notify()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="orthanc-ai-reports", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._due():
                    self._wake.wait(timeout=self._seconds_to_next())
                if self._stopping:
                    return
                series_id = self._due()[0]
                _, give_up_at = self._pending.pop(series_id)
            outcome = self.report(series_id, require_complete=True)
            if outcome.state == "incomplete":
                if self.clock() < give_up_at:
                    with self._wake:
                        self._pending.setdefault(series_id, (self.clock() + RETRY_SECONDS, give_up_at))
                else:
                    log.warning("Series %s: no Structured Report, %s after %.0f s", series_id, outcome.reason,
                                COMPLETION_WAIT)

    def _due(self) -> list[str]:
        now = self.clock()
        return [series_id for series_id, (at, _) in self._pending.items() if at <= now]

    def _seconds_to_next(self) -> float | None:
        if not self._pending:
            return None
        return max(0.0, min(at for at, _ in self._pending.values()) - self.clock())

    # --- one series ------------------------------------------------------------------------------------

    def report(self, series_id: str, require_complete: bool = False) -> ReportOutcome:
        """Write the series' SRs that are missing or out of date; never raises."""
        started = time.monotonic()
        with self._series_locks.hold(series_id):
            try:
                outcome = self._report(series_id, require_complete)
            except ResourceNotFound:
                outcome = ReportOutcome(series_id, "gone", "series no longer exists")
            except Exception as error:  # a report must never take the plugin down
                log.exception("Structured Report of series %s failed", series_id)
                outcome = ReportOutcome(series_id, "failed", f"{error.__class__.__name__}: {error}")
        self.counts[outcome.state] = self.counts.get(outcome.state, 0) + 1
        if outcome.state == "written":
            log.info("Series %s reported in %.1f s", series_id, time.monotonic() - started)
        return outcome

    def _report(self, series_id: str, require_complete: bool) -> ReportOutcome:
        series = self.api.series(series_id)
        not_images = why_not_images(series.get("MainDicomTags", {}))
        if not_images is not None:
            return ReportOutcome(series_id, "not reported", not_images)
        # The metadata first: a series still being predicted is looked at every few seconds, its files
        # are read only once it is complete.
        if require_complete:
            recorded, waiting = self.outcomes(series["Instances"])
            if waiting:
                return ReportOutcome(series_id, "incomplete", f"{waiting} image(s) without an outcome")
            if not recorded:  # every image skipped or failed: no file needs reading
                return ReportOutcome(series_id, "not analysed", "no image of the series was predicted")
        images = self.read_series(series["Instances"])
        if not images.analysed:
            return ReportOutcome(series_id, "not analysed", "no image of the series has results")
        outcome = ReportOutcome(series_id, "unchanged")
        for model, analysed in sorted(images.analysed.items()):
            written, report_id = self._write_if_new(series_id, model, analysed, images)
            outcome.reports[model] = report_id
            if written:
                outcome.state = "written"
        return outcome

    def outcomes(self, instance_ids: Sequence[str]) -> tuple[int, int]:
        """How many of the images were predicted (``AIStatus``), and how many have no outcome yet (still
        queued or being predicted: neither ``AIStatus`` nor a skip or failure remembered since start-up)."""
        recorded = waiting = 0
        for instance_id in instance_ids:
            try:
                if METADATA_STATUS in self.api.instance_metadata(instance_id):
                    recorded += 1
                elif self.unwritten_outcome(instance_id) is None:
                    waiting += 1
            except ResourceNotFound:
                continue  # deleted meanwhile: no longer part of the series
        return recorded, waiting

    def read_series(self, instance_ids: Sequence[str]) -> SeriesImages:
        """Headers and results of the series' images, read from their files (the private tags)."""
        images = SeriesImages()
        for instance_id in instance_ids:
            try:
                dicom = self.api.instance_file(instance_id)
            except ResourceNotFound:
                continue  # deleted meanwhile: no longer part of the series
            header = pydicom.dcmread(io.BytesIO(dicom), stop_before_pixels=True, force=True)
            uid = str(header.get("SOPInstanceUID", ""))
            images.results[uid] = read_results(header, self.private_creator)
            for result in images.results[uid]:
                if result.model not in self.registry.models or not uid:
                    continue  # a model no longer loaded has no card to report with
                images.headers[uid] = header
                images.analysed.setdefault(result.model, []).append(AnalysedImage(
                    instance_id, str(header.get("SOPClassUID", "")), uid,
                    int_or_none(header.get("InstanceNumber")), result))
        return images

    def summaries(self, images: SeriesImages) -> dict[str, SeriesSummary]:
        return {model: summarise(self.registry.models[model].card, analysed)
                for model, analysed in sorted(images.analysed.items())}

    def report_ids(self, model: str, summary: SeriesSummary, headers: dict[str, Dataset]) -> tuple[str, str]:
        """Orthanc ids of the SR series and SR instance that report ``summary``."""
        first = headers[summary.images[0].sop_instance_uid]
        ids = orthanc_ids_of(str(first.get("PatientID", "") or ""), first.StudyInstanceUID,
                             report_series_uid(first.StudyInstanceUID, first.SeriesInstanceUID, model),
                             report_instance_uid(first.SeriesInstanceUID, summary))
        return ids.series, ids.instance

    def _write_if_new(self, series_id: str, model: str, analysed: list[AnalysedImage],
                      images: SeriesImages) -> tuple[bool, str]:
        card = self.registry.models[model].card
        summary = summarise(card, analysed)
        report_series, report_id = self.report_ids(model, summary, images.headers)
        if self.api.instance_exists(report_id):
            return False, report_id
        dicom = encode(build_report(card, summary, images.headers))
        self.echoes.expect(report_id)  # not queued for prediction
        try:
            answer = self.api.store_instance(dicom)
        except Exception:
            self.echoes.cancel(report_id)
            raise
        if answer.get("ID") != report_id:
            self.echoes.cancel(report_id)
            raise RuntimeError(f"the SR was stored as {answer.get('ID')}, not {report_id}")
        # The new report is stored: now the model's older reports of this series go.
        for old in self.api.child_instances("series", report_series):
            if old != report_id:
                try:
                    self.api.delete_instance(old)
                except ResourceNotFound:
                    pass  # another node deleted it first
        log.info("Series %s: %s Structured Report %s written (%s; %d images)", series_id, model,
                 report_id, summary.conclusion.text, len(summary.images))
        for hook in self.after_report:
            try:
                hook(report_id, summary, [images.results[image.sop_instance_uid] for image in summary.images])
            except Exception:  # the SR is written; a hook must not turn that into a failure
                log.exception("After-report hook failed for Structured Report %s", report_id)
        return True, report_id


def summary_json(reporter: SeriesReporter, series_id: str, instance_ids: Sequence[str]) -> dict[str, Any]:
    """``GET /ai/series/{id}/summary``: each model's summary, and the SR that reports it if it exists."""
    images = reporter.read_series(instance_ids)
    _, waiting = reporter.outcomes(instance_ids)
    models = []
    for model, summary in reporter.summaries(images).items():
        _, report_id = reporter.report_ids(model, summary, images.headers)
        models.append(summary.to_json() | {
            "report": report_id if reporter.api.instance_exists(report_id) else None})
    return {"series": series_id, "images": len(instance_ids), "withoutOutcome": waiting,
            "models": models}

