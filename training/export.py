"""ONNX export (opset 17, dynamic batch; outputs logits and class activation maps), check against torch, latency."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from .data import REPO_ROOT
from .model import WithClassActivationMaps

OPSET = 17


def export_onnx(model: torch.nn.Module, channels: int, height: int, width: int, path: Path) -> None:
    """Export ``model`` (with ``logits_and_maps``) with the outputs ``logits`` and ``class_activation_maps``."""
    import onnx

    model.eval()
    dummy = torch.zeros(1, channels, height, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    # the wrapper in eval mode too: the export restores the wrapper's mode on everything inside it
    torch.onnx.export(
        WithClassActivationMaps(model).eval(), (dummy,), str(tmp), dynamo=False, opset_version=OPSET,
        input_names=["input"], output_names=["logits", "class_activation_maps"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}, "class_activation_maps": {0: "N"}},
        do_constant_folding=True,
    )
    proto = onnx.load(str(tmp))
    onnx.checker.check_model(proto)
    # keep the file self-contained and deterministic
    proto.producer_name = "orthanc-ai training"
    onnx.save(proto, str(path))
    tmp.unlink()


def check_onnx(model: torch.nn.Module, path: Path, sample: np.ndarray) -> float:
    """Max absolute difference between torch and onnxruntime logits and maps on ``sample``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits", "class_activation_maps"], {"input": sample.astype(np.float32)})
    with torch.no_grad():
        want = model.logits_and_maps(torch.from_numpy(sample.astype(np.float32)))
    return max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))


def latency_ms(path: Path, runs: int = 300, warmup: int = 30) -> float:
    """Median ms/image at batch 1 with one intra-op thread, measured by bench/bench_models.py itself."""
    sys.path.insert(0, str(REPO_ROOT))
    from bench.bench_models import bench

    return bench(path, runs, warmup)[0]
