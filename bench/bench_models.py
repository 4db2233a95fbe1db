"""ONNX latency and size of the shipped models.

    .venv/bin/python bench/bench_models.py [--runs 300] [models/<name> ...]

Prints, per model, the median (and 90th percentile) milliseconds per image at batch 1
with one intra-op thread, after a warm-up, and the file size.  The same method writes
``latency_ms_batch1_1thread`` into the model cards (training/export.py).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]


def bench(onnx_path: Path, runs: int, warmup: int) -> tuple[float, float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    shape = [1] + [int(d) for d in model_input.shape[1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(warmup):
        session.run(None, {model_input.name: x})
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        session.run(None, {model_input.name: x})
        times[i] = time.perf_counter() - start
    return float(np.median(times) * 1000), float(np.percentile(times, 90) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--runs", type=int, default=300, help="timed runs per model (>= 200)")
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()
    folders = args.folders or sorted(p.parent for p in (REPO / "models").glob("*/model.onnx"))
    print(f"onnxruntime {ort.__version__}, batch 1, 1 intra-op thread, "
          f"median of {args.runs} runs after {args.warmup} warm-up")
    print(f"{'model':<16} {'ms/image':>9} {'p90 ms':>8} {'size MB':>8} {'card ms':>8}")
    for folder in folders:
        onnx_path = folder / "model.onnx"
        median, p90 = bench(onnx_path, max(args.runs, 200), args.warmup)
        card = json.loads((folder / "model.json").read_text()) if (folder / "model.json").exists() else {}
        card_ms = card.get("latency_ms_batch1_1thread")
        print(f"{folder.name:<16} {median:9.3f} {p90:8.3f} {onnx_path.stat().st_size / 1e6:8.2f} "
              f"{card_ms if card_ms is not None else '-':>8}")


if __name__ == "__main__":
    main()
