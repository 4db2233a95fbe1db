"""Orthanc labels for Orthanc Explorer 2 (Orthanc 1.12 and later): one per model and top class.

Explorer 2 cannot be extended by plugins, but it lists, shows and filters studies
by label. After each prediction the study of the instance gets the label
``ai-<model>-<top class>`` (e.g. ``ai-lung-ct-3-Malignant``) for every model that
ran, so a user can filter the study list on it. Labels exist from Orthanc 1.12.0
(``PUT /studies/{id}/labels/{label}``) and allow only ``[A-Za-z0-9_-]``, 1–64
characters. Debian's Orthanc 1.10.1 has none: nothing is labelled there.
"""
from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any, Protocol

log = logging.getLogger(__name__)

PREFIX = "ai"
MAX_LENGTH = 64
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_-]+")


def label_part(text: str) -> str:
    """Text made label-safe: accents dropped (é → e), each run of other characters one '_'."""
    ascii_text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return _NOT_ALLOWED.sub("_", ascii_text).strip("_") or "x"


def label_for(model: str, top_class: str) -> str:
    """``ai-<model>-<class>``; a too long label is shortened with a hash so distinct ones stay distinct."""
    label = f"{PREFIX}-{label_part(model)}-{label_part(top_class)}"
    if len(label) <= MAX_LENGTH:
        return label
    digest = hashlib.sha1(f"{model}\0{top_class}".encode()).hexdigest()[:8]
    return f"{label[: MAX_LENGTH - 9]}_{digest}"


def is_valid_label(label: str) -> bool:
    return 0 < len(label) <= MAX_LENGTH and _NOT_ALLOWED.search(label) is None


def _version_tuple(version: str) -> tuple[int, ...] | None:
    match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", version.strip())
    if not match:
        return None
    return tuple(int(part or 0) for part in match.groups())


def supports_labels(system: Mapping[str, Any]) -> bool:
    """From ``GET /system``: ``HasLabels`` where Orthanc says it (1.12+), else its version ≥ 1.12.

    "mainline" (a development build) counts as recent.
    """
    if "HasLabels" in system:
        return bool(system["HasLabels"])
    version = str(system.get("Version", ""))
    if version.lower() == "mainline":
        return True
    parsed = _version_tuple(version)
    return parsed is not None and parsed >= (1, 12, 0)


class LabelApi(Protocol):
    def instance_study(self, instance_id: str) -> str: ...

    def add_study_label(self, study_id: str, label: str) -> None: ...


def conclusion_label(model: str, conclusion_class: str, suspected: bool) -> str:
    """The label of a series conclusion: ``ai-<model>-suspected-<class>``, or ``ai-<model>-series-<class>``
    for a conclusion by the most frequent class."""
    return label_for(model, f"{'suspected' if suspected else 'series'}-{conclusion_class}")


class StudyLabeler:
    """Called by the pipeline after each prediction (``PredictionPipeline.after_prediction``) and by the
    series reporter after each Structured Report (``SeriesReporter.after_report``).

    ``has_labels`` says whether Orthanc has labels (``OrthancCapabilities.labels``: asked once, at the
    first use, from a worker thread).
    """

    def __init__(self, api: LabelApi, has_labels: Callable[[], bool]) -> None:
        self.api = api
        self.has_labels = has_labels

    def __call__(self, outcome: Any) -> None:
        if outcome.state != "predicted" or not outcome.results or not self.has_labels():
            return
        study = outcome.study_id or self.api.instance_study(outcome.instance_id)
        for result in outcome.results:
            self.api.add_study_label(study, label_for(result.model, result.top_class))

    def on_report(self, report_id: str, summary: Any, images: object) -> None:
        """The study gets the series conclusion as a label (e.g. ``ai-lung-ct-3-suspected-Malignant``)."""
        if not self.has_labels():
            return
        study = self.api.instance_study(report_id)
        conclusion = summary.conclusion
        self.api.add_study_label(study, conclusion_label(summary.model, conclusion.class_name, conclusion.suspected))
