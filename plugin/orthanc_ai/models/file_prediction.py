"""One file's prediction without Orthanc: parse, decode, preprocess, run the models that apply, write the block.

The pipeline runs it in a worker thread or, to keep this CPU-bound Python off the plugin's GIL, in a
prediction process (prediction_processes.py): everything it needs comes in the request, everything it
found goes back in the answer, and the tagged file is the only thing it makes.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .. import __version__
from ..dicom.decoding import InstanceHeader, InstanceSkipped, decode_analysed_frame, read_header
from ..dicom.private_tags import ModelResult, read_results
from ..dicom.tagging import ResultsNotWritable, add_results
from ..orthanc.orthanc_ids import OrthancIds, orthanc_ids
from .inference import LoadedModel
from .preprocessing import InputTensors
from .registry import ModelRegistry

SOFTWARE = f"orthanc-ai {__version__}"


@dataclass(frozen=True)
class FileRequest:
    """What to predict in one file and what the results should say about where it came from."""

    # None: the models whose rules match (stage 1, then the models routed by a stage-1 result).
    models: tuple[str, ...] | None
    # Re-run models whose current version already left results.
    force: bool
    private_creator: str
    max_frame_pixels: int
    source_file_name: str | None = None
    source_file_size: int | None = None


@dataclass(frozen=True)
class FilePrediction:
    """The answer: the results found in the file, the new ones, and the file with them (None if no new ones)."""

    ids: OrthancIds
    existing: list[ModelResult]
    results: list[ModelResult]
    tagged: bytes | None


def predict_file(
    original: bytes,
    request: FileRequest,
    registry: ModelRegistry,
    decode_fallback: Callable[[int], np.ndarray] | None = None,
) -> FilePrediction:
    """Predict one DICOM file; raises InstanceSkipped where it cannot be read, decoded or tagged.

    ``decode_fallback`` decodes a frame pydicom cannot (Orthanc's decoder, in the main process).
    """
    instance = read_header(original, request.max_frame_pixels)
    existing = read_results(instance.dataset, request.private_creator)
    run = _ModelRun(instance, request, decode_fallback)
    if request.models is not None:
        chosen = registry.get(request.models)
        results = run.models(chosen if request.force else _not_done(chosen, existing))
    else:
        # Stage 1: header rules. Stage 2: models routed by a stage-1 result (e.g. the body-part router).
        first, _ = registry.applicable(instance.header)
        results = run.models(first if request.force else _not_done(first, existing))
        known = {r.model: r for r in existing} | {r.model: r for r in results}
        applicable, mismatches = registry.applicable(instance.header, known)
        if not applicable:
            details = "; ".join(f"{name}: {why}" for name, why in mismatches.items()) or "no model is loaded"
            raise InstanceSkipped(f"no model applies ({details})")
        second = [m for m in applicable if m.card.routed_by is not None]
        results += run.models(second if request.force else _not_done(second, existing))
    tagged = None
    if results:
        try:
            tagged = add_results(original, request.private_creator, SOFTWARE, results)
        except ResultsNotWritable as error:
            raise InstanceSkipped(f"results cannot be written into this file: {error}") from error
    return FilePrediction(orthanc_ids(instance.dataset), existing, results, tagged)


class _ModelRun:
    """Runs models on one instance, decoding its frame and preprocessing it once, when first needed."""

    def __init__(self, instance: InstanceHeader, request: FileRequest,
                 decode_fallback: Callable[[int], np.ndarray] | None) -> None:
        self.instance, self.request, self.decode_fallback = instance, request, decode_fallback
        self._inputs: InputTensors | None = None

    def models(self, models: Sequence[LoadedModel]) -> list[ModelResult]:
        if not models:
            return []
        if self._inputs is None:
            frame = decode_analysed_frame(self.instance, fallback=self.decode_fallback)
            self._inputs = InputTensors(frame, self.instance.pixels)
        return [
            model.predict(
                self._inputs,
                frame_number=self.instance.analysed_frame_index + 1,
                source_file_name=self.request.source_file_name,
                source_file_size=self.request.source_file_size,
            )
            for model in models
        ]


def _not_done(models: Sequence[LoadedModel], existing: Sequence[ModelResult]) -> list[LoadedModel]:
    """The models whose current version has no result in the instance yet."""
    done = {(r.model, r.version) for r in existing}
    return [m for m in models if (m.card.name, m.card.version) not in done]
