"""Every shipped model has the ``class_activation_maps`` output its card declares, and its maps average to the logits.

No data needed: a random input is enough, since for a global-average-pool network the spatial mean of a class's
map is that class's logit whatever the image (Zhou et al., CVPR 2016).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS = sorted(p.parent for p in (REPO / "models").glob("*/model.onnx"))


@pytest.mark.parametrize("folder", MODELS, ids=[f.name for f in MODELS])
def test_class_activation_maps_output(folder: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    card = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    heatmap = card["heatmap"]
    assert heatmap["output"] == "class_activation_maps"
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    # the plugin reads the logits from the first output
    assert names == ["logits", "class_activation_maps"]
    rows, columns = heatmap["grid"]
    classes = len(card["classes"])
    assert session.get_outputs()[1].shape[1:] == [classes, rows, columns]

    size = card["input"]
    x = np.random.default_rng(0).standard_normal((3, size["channels"], size["height"], size["width"]))
    logits, maps = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})
    assert maps.shape == (3, classes, rows, columns)
    np.testing.assert_allclose(maps.mean(axis=(2, 3)), logits, atol=1e-4)
