"""Run one model on one decoded frame: preprocessing, ONNX Runtime, probabilities."""
from __future__ import annotations

from datetime import datetime

import numpy as np
import onnxruntime

from .model_card import ModelCard
from .preprocessing import PixelAttributes, frame_to_unit_grey, softmax, unit_grey_to_tensor
from .private_tags import ModelResult


class ModelLoadError(RuntimeError):
    """The ONNX file is missing, unreadable, or does not match its card."""


class LoadedModel:
    """A model card with its ONNX Runtime session, loaded once at start-up."""

    def __init__(self, card: ModelCard, threads: int = 1) -> None:
        self.card = card
        options = onnxruntime.SessionOptions()
        # Workers already run in parallel: one thread per inference keeps the
        # machine's cores for Orthanc's own ingest.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(
                str(card.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:
            raise ModelLoadError(f"{card.onnx_path}: ONNX Runtime cannot load it: {error}") from error
        self.input_name = self.session.get_inputs()[0].name
        self._check_shapes()

    def _check_shapes(self) -> None:
        spec = self.card.preprocessing
        shape = self.session.get_inputs()[0].shape
        expected = [spec.channels, spec.height, spec.width]
        if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape[1:], expected, strict=True)):
            raise ModelLoadError(f"{self.card.name}: ONNX input shape {shape} does not match the card's {expected}")
        outputs = self.session.get_outputs()[0].shape
        if isinstance(outputs[-1], int) and outputs[-1] != len(self.card.classes):
            raise ModelLoadError(
                f"{self.card.name}: ONNX output has {outputs[-1]} classes, the card lists {len(self.card.classes)}"
            )

    def predict(
        self,
        frame: np.ndarray,
        attributes: PixelAttributes,
        *,
        frame_number: int = 1,
        source_file_name: str | None = None,
        source_file_size: int | None = None,
    ) -> ModelResult:
        spec = self.card.preprocessing
        probabilities = self.run(unit_grey_to_tensor(frame_to_unit_grey(frame, attributes, spec), spec))
        if not np.all(np.isfinite(probabilities)):
            raise ValueError(f"{self.card.name} produced non-finite scores")
        return ModelResult(
            model=self.card.name,
            version=self.card.version,
            dataset=self.card.dataset,
            predicted_at=datetime.now().astimezone(),
            classes=self.card.classes,
            probabilities=tuple(float(p) for p in probabilities),
            frame=frame_number,
            source_file_name=source_file_name,
            source_file_size=source_file_size,
        )

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """Class probabilities for a (1, C, H, W) tensor."""
        output = np.asarray(self.session.run(None, {self.input_name: tensor})[0]).reshape(-1)
        if self.card.output_kind == "logits":
            return softmax(output)
        return output.astype(np.float64)
