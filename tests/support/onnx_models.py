"""Small ONNX classifiers built in the tests, to exercise the plumbing without trained weights.

Each is a real ONNX graph (average pooling to 4 x 4, then a fixed linear layer),
so its probabilities depend on the image and can be recomputed in the test.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 32


def linear_weights(classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.5, (16, classes)).astype(np.float32), rng.normal(0, 0.1, classes).astype(np.float32)


def build_model(
    folder: Path,
    name: str,
    classes: list[str],
    applies_to: Mapping[str, Sequence[str | None]],
    *,
    seed: int = 0,
    version: str = "1.0.0",
    ct_window: Mapping[str, float] | None = None,
    brightness_weights: list[tuple[float, float]] | None = None,
    routed_by: dict[str, Any] | None = None,
    heatmap: bool = False,
) -> Path:
    """Write models/<name>/model.onnx and model.json into ``folder``; returns the model folder.

    ``brightness_weights``: per class (slope, bias) on the mean normalised grey level, so a test can
    choose the class by the image's brightness; otherwise random weights from ``seed``.
    ``heatmap``: a second output ``class_activation_maps`` (N × classes × 4 × 4), exact for this linear
    model as for the shipped ones: cell p of class c is 16·W[p, c]·pooled[p] + B[c], so its mean is the
    logit. With ``brightness_weights`` of positive slope the brightest quarter-square is the hottest cell.
    """
    weights, bias = linear_weights(len(classes), seed)
    if brightness_weights is not None:
        weights = np.array([[slope / 16 for slope, _ in brightness_weights]] * 16, dtype=np.float32)
        bias = np.array([b for _, b in brightness_weights], dtype=np.float32)
    nodes = [
        helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[SIZE // 4, SIZE // 4],
                         strides=[SIZE // 4, SIZE // 4]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(classes)])]
    initializers = [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")]
    if heatmap:
        cell_weights = (16 * weights).T.reshape(1, len(classes), 4, 4)
        nodes += [helper.make_node("Mul", ["pooled", "cell_weights"], ["weighted"]),
                  helper.make_node("Add", ["weighted", "cell_bias"], ["class_activation_maps"])]
        outputs.append(helper.make_tensor_value_info("class_activation_maps", TensorProto.FLOAT,
                                                     ["batch", len(classes), 4, 4]))
        initializers += [numpy_helper.from_array(cell_weights.astype(np.float32), "cell_weights"),
                         numpy_helper.from_array(bias.reshape(1, -1, 1, 1), "cell_bias")]
    graph = helper.make_graph(
        nodes=nodes,
        name=name,
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, SIZE, SIZE])],
        outputs=outputs,
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    target = folder / name
    target.mkdir(parents=True, exist_ok=True)
    onnx.save(model, target / "model.onnx")
    card: dict[str, Any] = {
        "name": name,
        "version": version,
        "title": f"Test model {name}",
        "classes": classes,
        "input": {"name": "input", "channels": 1, "height": SIZE, "width": SIZE},
        "output": {"name": "logits", "kind": "logits"},
        "preprocessing": {"resize": "pad", "normalize": {"mean": 0.5, "std": 0.25}},
        "applies_to": applies_to,
        "dataset": {"name": f"synthetic-{name}"},
        "intended_use": "Test fixture only.",
    }
    if ct_window:
        card["preprocessing"]["ct_window"] = ct_window
    if routed_by:
        card["routed_by"] = routed_by
    if heatmap:
        card["heatmap"] = {"output": "class_activation_maps"}
    (target / "model.json").write_text(json.dumps(card, indent=2))
    return target
