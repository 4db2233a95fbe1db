"""ONNX export (opset 17, dynamic batch), check against torch, latency measurement."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from .data import REPO_ROOT

OPSET = 17


def export_onnx(model: torch.nn.Module, channels: int, height: int, width: int, path: Path) -> None:
    import onnx

    model.eval()
    dummy = torch.zeros(1, channels, height, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        model, (dummy,), str(tmp), dynamo=False, opset_version=OPSET,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, do_constant_folding=True,
    )
    proto = onnx.load(str(tmp))
    onnx.checker.check_model(proto)
    # keep the file self-contained and deterministic
    proto.producer_name = "orthanc-ai training"
    onnx.save(proto, str(path))
    tmp.unlink()


def check_onnx(model: torch.nn.Module, path: Path, sample: np.ndarray) -> float:
    """Max absolute difference between torch and onnxruntime logits on ``sample``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": sample.astype(np.float32)})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(sample.astype(np.float32))).numpy()
    return float(np.abs(got - want).max())


def latency_ms(path: Path, runs: int = 300, warmup: int = 30) -> float:
    """Median ms/image at batch 1 with one intra-op thread, measured by bench/bench_models.py itself."""
    sys.path.insert(0, str(REPO_ROOT))
    from bench.bench_models import bench

    return bench(path, runs, warmup)[0]
