"""Stores a heatmap Secondary Capture per predicted image and model (``"Outputs": {"HeatmapSecondaryCapture": true}``).

A pipeline ``after_prediction`` hook: once an instance's results are stored, each result that carries a
heatmap gets its Secondary Capture (heatmap_capture.py), built from the analysed frame decoded again from
the stored file. The capture's UIDs are derived from the prediction, so one that exists already (another
node's, or an earlier hook run for a result not predicted again) is not written twice. After the new one
is stored, the capture of the result it replaced (same source image and model, earlier prediction) is
deleted.

The store is announced to the echo guard (its NEW_INSTANCE is not queued for prediction; should it be
queued anyway, after a restart, decoding.is_plugin_heatmap skips it) and fenced like a store-back: a
capture is not written into a study whose image was deleted since it was read, so a deleted patient does
not come back as its heatmap. Each capture written is handed to the ``after_write`` hooks (the router
sends it where its image went). Errors are logged and counted (``/ai/status`` →
``heatmapSecondaryCaptures``); they never fail the prediction.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from ..dicom.decoding import InstanceHeader, decode_analysed_frame, read_header
from ..dicom.private_tags import ModelResult
from ..events.deletion_fence import DeletedMeanwhile, DeletionFence
from ..events.instance_guards import EchoGuard
from ..models.registry import ModelRegistry
from ..orthanc.orthanc_api import ResourceNotFound
from ..orthanc.orthanc_ids import OrthancIds, orthanc_ids, orthanc_ids_of
from ..status import Outcome, PluginStatus
from .heatmap_capture import build_capture, capture_instance_uid, capture_series_uid
from .structured_report import encode

log = logging.getLogger(__name__)


class CaptureApi(Protocol):
    def instance_file(self, instance_id: str) -> bytes: ...

    def instance_exists(self, instance_id: str) -> bool: ...

    def store_instance(self, dicom: bytes) -> dict[str, Any]: ...

    def delete_instance(self, instance_id: str) -> None: ...

    def decode_frame(self, dicom: bytes, frame_index: int) -> np.ndarray: ...


class HeatmapCaptureWriter:
    def __init__(self, api: CaptureApi, registry: ModelRegistry, echoes: EchoGuard, fence: DeletionFence,
                 status: PluginStatus, max_frame_pixels: int) -> None:
        self.api = api
        self.registry = registry
        self.echoes = echoes
        self.fence = fence
        self.status = status
        self.max_frame_pixels = max_frame_pixels
        # Called with each capture written and the outcome of the prediction it shows.
        self.after_write: list[Callable[[str, Outcome], object]] = []

    def __call__(self, outcome: Outcome) -> None:
        """The after-prediction hook; never raises."""
        results = [r for r in outcome.results if r.heatmap is not None and r.model in self.registry.models]
        if not results:
            return
        try:
            self._write_all(outcome, results)
        except ResourceNotFound:
            self._count("gone", len(results))  # deleted since it was predicted: nothing to show
        except Exception as error:
            self._count("failed", len(results))
            log.warning("Instance %s: no heatmap Secondary Capture: %s: %s", outcome.instance_id,
                        error.__class__.__name__, error)

    def _write_all(self, outcome: Outcome, results: list[ModelResult]) -> None:
        ticket = self.fence.ticket()
        dicom = self.api.instance_file(outcome.instance_id)
        instance = read_header(dicom, self.max_frame_pixels)
        source = instance.dataset
        source_ids = orthanc_ids(source)
        missing = []
        for result in results:
            ids = capture_ids(source, result)
            if self.api.instance_exists(ids.instance):
                self._count("unchanged")
            else:
                missing.append((result, ids))
        if not missing:
            return
        frame = decode_analysed_frame(instance, fallback=lambda index: self.api.decode_frame(dicom, index))
        replaced = {r.model: r for r in outcome.replaced}
        for result, ids in missing:
            try:
                self._write(outcome.instance_id, instance, frame, result, ids, source_ids, ticket)
            except (ResourceNotFound, DeletedMeanwhile) as gone:
                log.info("Instance %s: no heatmap Secondary Capture of %s: %s", outcome.instance_id,
                         result.model, gone)
                self._count("gone")
                continue
            except Exception as error:
                self._count("failed")
                log.warning("Instance %s: heatmap Secondary Capture of %s failed: %s: %s", outcome.instance_id,
                            result.model, error.__class__.__name__, error)
                continue
            self._count("written")
            older = replaced.get(result.model)
            if older is not None:
                self._delete_older(capture_ids(source, older).instance, ids.instance)
            for hook in self.after_write:
                try:
                    hook(ids.instance, outcome)
                except Exception:  # the capture is written; a hook must not count it as failed
                    log.exception("After-write hook failed for heatmap Secondary Capture %s", ids.instance)

    def _write(self, instance_id: str, instance: InstanceHeader, frame: np.ndarray, result: ModelResult,
               ids: OrthancIds, source_ids: OrthancIds, ticket: float) -> None:
        if result.frame != instance.analysed_frame_index + 1:
            raise ValueError(f"the result is of frame {result.frame}, the analysed frame is "
                             f"{instance.analysed_frame_index + 1}")
        card = self.registry.models[result.model].card
        capture = encode(build_capture(card, result, instance.dataset, frame, instance.pixels))
        with self.fence.store_back(ticket, source_ids, instance_id, overwrite=False):
            # As the store-back: the index knows of a deletion before its Deleted change arrives.
            if not self.api.instance_exists(instance_id):
                raise ResourceNotFound(instance_id)
            self.echoes.expect(ids.instance)  # not queued for prediction
            try:
                answer = self.api.store_instance(capture)
            except Exception:
                self.echoes.cancel(ids.instance)
                raise
        if answer.get("ID") != ids.instance:
            self.echoes.cancel(ids.instance)
            raise RuntimeError(f"the Secondary Capture was stored as {answer.get('ID')}, not {ids.instance}")
        log.info("Instance %s: heatmap Secondary Capture %s of %s (%s) written", instance_id, ids.instance,
                  result.model, result.heatmap.class_name if result.heatmap else "")

    def _delete_older(self, older: str, new: str) -> None:
        """The capture of the result this prediction replaced goes, now that the new one is stored."""
        if older == new:
            return
        try:
            self.api.delete_instance(older)
        except ResourceNotFound:
            pass  # never written (the setting was off, the model had no map) or another node deleted it
        except Exception as error:
            log.warning("Outdated heatmap Secondary Capture %s not deleted: %s", older, error)

    def _count(self, state: str, number: int = 1) -> None:
        for _ in range(number):
            self.status.record_heatmap_capture(state)


def capture_ids(source: Any, result: ModelResult) -> OrthancIds:
    """Orthanc's ids of the heatmap Secondary Capture of ``result`` on ``source`` (its patient and study)."""
    series_uid = capture_series_uid(str(source.StudyInstanceUID), str(source.SeriesInstanceUID), result.model)
    return orthanc_ids_of(str(source.get("PatientID", "") or ""), str(source.StudyInstanceUID), series_uid,
                          capture_instance_uid(str(source.SOPInstanceUID), result))
