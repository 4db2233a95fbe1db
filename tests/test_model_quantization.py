"""The shipped file is the precision its card says, keeps every declared output, and agrees with the float32 graph.

Without data: ``model.onnx`` holds int8 (QuantizeLinear/DequantizeLinear) nodes exactly when the card's
``precision.shipped`` is ``int8`` (else it is byte-for-byte ``model-fp32.onnx``), both files have the outputs the
card declares (``logits`` first, then the heatmap's ``class_activation_maps`` with the card's grid), and the card's
size figures are the files'.

With the shared data (``../shared/data`` or ORTHANC_AI_DATA): on the leakage-free test images, through the plugin's
preprocessing, the per-image top-class agreement of shipped vs float32 and both files' accuracies are recomputed and
compared with the card's ``precision.check``, and an int8 file must still meet the shipping criteria.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.model_test_images import leakage_free_images_root
from training.quantize import FP32_FILE, MAX_ACCURACY_DELTA_POINTS, MIN_AGREEMENT, SHIPPED_FILE, is_quantized
from training.test_split import load_test_split

REPO = Path(__file__).resolve().parents[1]
MODELS = sorted(p.parent for p in (REPO / "models").glob("*/model.json"))
# Same files and images: only float rounding of the kernels can differ, which may flip a borderline image.
AGREEMENT_TOLERANCE = 0.005


def _card(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "model.json").read_text(encoding="utf-8"))


def _session(path: Path) -> Any:
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("folder", MODELS, ids=[f.name for f in MODELS])
def test_shipped_file_is_the_declared_precision(folder: Path) -> None:
    card = _card(folder)
    precision = card["precision"]
    assert precision["file"] == SHIPPED_FILE and precision["fp32_file"] == FP32_FILE
    shipped, fp32 = folder / SHIPPED_FILE, folder / FP32_FILE
    assert fp32.is_file(), f"{folder.name}: the float32 source {FP32_FILE} is missing"
    assert not is_quantized(fp32)
    assert precision["shipped"] in ("int8", "fp32")
    if precision["shipped"] == "int8":
        assert is_quantized(shipped), f"{folder.name}: card says int8, {SHIPPED_FILE} has no int8 nodes"
        assert precision["check"]["pass"] and not precision["check"]["failed"]
    else:
        assert shipped.read_bytes() == fp32.read_bytes(), f"{folder.name}: card says fp32, {SHIPPED_FILE} differs"
        assert precision["reason"]
    assert card["file_size_bytes"] == shipped.stat().st_size
    assert precision["file_size_bytes"]["fp32"] == fp32.stat().st_size
    assert card["latency_ms_batch1_1thread"] == precision["latency_ms_batch1_1thread"][precision["shipped"]]


@pytest.mark.parametrize("folder", MODELS, ids=[f.name for f in MODELS])
def test_shipped_and_fp32_files_have_every_declared_output(folder: Path) -> None:
    card = _card(folder)
    rows, columns = card["heatmap"]["grid"]
    classes = len(card["classes"])
    size = card["input"]
    x = np.random.default_rng(0).standard_normal((2, size["channels"], size["height"], size["width"]))
    for path in (folder / SHIPPED_FILE, folder / FP32_FILE):
        session = _session(path)
        assert [o.name for o in session.get_outputs()] == [card["output"]["name"], card["heatmap"]["output"]]
        assert session.get_inputs()[0].type == "tensor(float)"
        logits, maps = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})
        assert logits.shape == (2, classes)
        assert maps.shape == (2, classes, rows, columns)
        # the pooling, heads and map branch stay float32 in the int8 file, so the identity holds in both
        np.testing.assert_allclose(maps.mean(axis=(2, 3)), logits, atol=1e-4)


@pytest.mark.parametrize("folder", MODELS, ids=[f.name for f in MODELS])
def test_agreement_and_accuracy_match_the_card(folder: Path) -> None:
    root = leakage_free_images_root(folder, "recompute the int8/fp32 agreement")
    check = _card(folder)["precision"]["check"]
    split = load_test_split(folder, root)
    top = {}
    for label, path in (("fp32", folder / FP32_FILE), ("shipped", folder / SHIPPED_FILE)):
        session = _session(path)
        logits = np.concatenate([session.run(["logits"], {"input": split.x[i:i + 64]})[0]
                                 for i in range(0, len(split.x), 64)])
        top[label] = logits.argmax(axis=1)
    assert len(split.y) == check["test_images"]
    agreement = float((top["fp32"] == top["shipped"]).mean())
    assert agreement == pytest.approx(check["top_class_agreement"], abs=AGREEMENT_TOLERANCE)
    assert agreement >= MIN_AGREEMENT
    for label, key in (("fp32", "fp32"), ("shipped", _card(folder)["precision"]["shipped"])):
        pred = top[label]
        micro = float((pred == split.y).mean())
        macro = float(np.mean([(pred[split.y == c] == c).mean() for c in np.unique(split.y)]))
        assert micro == pytest.approx(check[key]["micro_accuracy"], abs=AGREEMENT_TOLERANCE)
        assert macro == pytest.approx(check[key]["macro_accuracy"], abs=2 * AGREEMENT_TOLERANCE)
    micro_delta = 100 * (float((top["shipped"] == split.y).mean()) - float((top["fp32"] == split.y).mean()))
    assert abs(micro_delta) <= MAX_ACCURACY_DELTA_POINTS + 1e-9
