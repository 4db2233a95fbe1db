"""ONNX export (opset 17, dynamic batch), check against torch, latency measurement."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

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
    """Median ms/image at batch 1 with one intra-op thread (same method as bench/bench_models.py)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [1] + [int(d) for d in inp.shape[1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {inp.name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)
