"""Run one model on one decoded frame: preprocessing, ONNX Runtime, probabilities."""
from __future__ import annotations

from datetime import datetime

import numpy as np
import onnxruntime

from .model_card import ModelCard
from .preprocessing import InputTensors, PixelAttributes, input_region, softmax
from ..dicom.private_tags import Heatmap, ModelResult


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
        # The class scores: the output the card names, else the graph's first.
        declared = card.raw.get("output", {}).get("name")
        names = [output.name for output in self.session.get_outputs()]
        self.scores_output = declared if declared in names else names[0]
        self.heatmap_output = card.heatmap_output
        self._check_shapes()

    def _check_shapes(self) -> None:
        spec = self.card.preprocessing
        shape = self.session.get_inputs()[0].shape
        expected = [spec.channels, spec.height, spec.width]
        if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape[1:], expected, strict=True)):
            raise ModelLoadError(f"{self.card.name}: ONNX input shape {shape} does not match the card's {expected}")
        outputs = {output.name: output.shape for output in self.session.get_outputs()}
        scores = outputs[self.scores_output]
        if isinstance(scores[-1], int) and scores[-1] != len(self.card.classes):
            raise ModelLoadError(
                f"{self.card.name}: ONNX output has {scores[-1]} classes, the card lists {len(self.card.classes)}"
            )
        if self.heatmap_output is None:
            return
        maps = outputs.get(self.heatmap_output)
        if maps is None:
            raise ModelLoadError(f"{self.card.name}: the card's heatmap output {self.heatmap_output!r} is not "
                                 f"an output of the ONNX graph (it has {', '.join(outputs)})")
        if len(maps) != 4 or (isinstance(maps[1], int) and maps[1] != len(self.card.classes)):
            raise ModelLoadError(f"{self.card.name}: heatmap output {self.heatmap_output!r} has shape {maps}, "
                                 f"not (N, {len(self.card.classes)}, rows, columns)")

    def predict(
        self,
        inputs: InputTensors,
        *,
        frame_number: int = 1,
        source_file_name: str | None = None,
        source_file_size: int | None = None,
    ) -> ModelResult:
        probabilities, maps = self.run_with_maps(inputs.tensor(self.card.preprocessing))
        top = int(np.argmax(probabilities))
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
            heatmap=None if maps is None else self.heatmap(maps, top, *inputs.frame_shape),
        )

    def class_activation_maps(self, frame: np.ndarray, attributes: PixelAttributes
                              ) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities, and every class's map (classes × rows × columns) where the model has them."""
        return self.run_with_maps(InputTensors(frame, attributes).tensor(self.card.preprocessing))

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """Class probabilities for a (1, C, H, W) tensor."""
        return self._probabilities(self.session.run([self.scores_output], {self.input_name: tensor})[0])

    def run_with_maps(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.heatmap_output is None:
            return self.run(tensor), None
        scores, maps = self.session.run([self.scores_output, self.heatmap_output], {self.input_name: tensor})
        maps = np.asarray(maps, dtype=np.float32)[0]
        if not np.all(np.isfinite(maps)):
            raise ValueError(f"{self.card.name} produced a non-finite heatmap")
        return self._probabilities(scores), maps

    def _probabilities(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores).reshape(-1)
        probabilities = softmax(scores) if self.card.output_kind == "logits" else scores.astype(np.float64)
        if not np.all(np.isfinite(probabilities)):
            raise ValueError(f"{self.card.name} produced non-finite scores")
        return probabilities

    def heatmap(self, maps: np.ndarray, class_index: int, rows: int, columns: int) -> Heatmap:
        """One class's map, placed on the frame (``rows`` × ``columns``) the model analysed."""
        grid = maps[class_index]
        return Heatmap(
            class_name=self.card.classes[class_index],
            rows=grid.shape[0],
            columns=grid.shape[1],
            values=tuple(float(v) for v in grid.ravel()),  # float32 values: FL keeps them exactly
            region=input_region(rows, columns, self.card.preprocessing),
        )
