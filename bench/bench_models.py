"""ONNX latency and size of the shipped models.

    .venv/bin/python bench/bench_models.py [--runs 300] [models/<name> ...]
    .venv/bin/python bench/bench_models.py --compare OLD.onnx NEW.onnx [--rounds 5]

Prints, per model, the median (and 90th percentile) milliseconds per image at batch 1
with one intra-op thread, after a warm-up, and the file size.  The same method writes
``latency_ms_batch1_1thread`` into the model cards (training/export.py).

``--compare`` times two versions of one model side by side in one run (e.g. the file of an
earlier commit, ``git show REV:models/<name>/model.onnx > /tmp/old.onnx``, against the
current one): the old file with all its outputs, the new file asking for ``logits`` only and
the new file with all its outputs (what the plugin asks for), in alternating rounds, and
prints each one's best median over the rounds and its ratio to the old file.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]


def bench(onnx_path: Path, runs: int, warmup: int, outputs: list[str] | None = None) -> tuple[float, float]:
    """Median and 90th percentile ms per image at batch 1; ``outputs`` as for ``session.run`` (None: all)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    shape = [1] + [int(d) for d in model_input.shape[1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(warmup):
        session.run(outputs, {model_input.name: x})
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        session.run(outputs, {model_input.name: x})
        times[i] = time.perf_counter() - start
    return float(np.median(times) * 1000), float(np.percentile(times, 90) * 1000)


def compare(old: Path, new: Path, runs: int, warmup: int, rounds: int) -> None:
    """Time ``old`` and ``new`` in alternating rounds, so that load from other jobs hits both alike."""
    first_output = ort.InferenceSession(str(new), providers=["CPUExecutionProvider"]).get_outputs()[0].name
    cases = [(f"old, all outputs ({old.name})", old, None),
             (f"new, {first_output} only ({new.name})", new, [first_output]),
             (f"new, all outputs ({new.name})", new, None)]
    medians: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    for _ in range(rounds):
        for label, path, outputs in cases:
            medians[label].append(bench(path, runs, warmup, outputs)[0])
    base = min(medians[cases[0][0]])
    print(f"{'':<48} {'ms/image':>9} {'ratio':>6}   (best median of {rounds} rounds; all rounds)")
    for label, _, _ in cases:
        best = min(medians[label])
        print(f"{label:<48} {best:9.3f} {best / base:6.3f}   " + " ".join(f"{m:.3f}" for m in medians[label]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--runs", type=int, default=300, help="timed runs per model (>= 200)")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"),
                        help="time two ONNX files of one model side by side")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of --compare")
    args = parser.parse_args()
    if args.compare:
        print(f"onnxruntime {ort.__version__}, batch 1, 1 intra-op thread, "
              f"median of {max(args.runs, 200)} runs after {args.warmup} warm-up, per round")
        old, new = args.compare
        compare(old, new, max(args.runs, 200), args.warmup, args.rounds)
        return
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
