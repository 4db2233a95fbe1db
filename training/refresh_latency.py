"""Re-measure latency on a quiet machine and update the cards and reports in place.

    .venv-train/bin/python -m training.refresh_latency [lung-ct-3 ...]

The latency written during training is measured while other jobs may share the CPU; this
re-runs the same measurement (bench/bench_models.py method: batch 1, one intra-op thread,
median of 300 runs after 30 warm-up runs) and rewrites ``latency_ms_batch1_1thread`` in
``model.json`` and the figure in ``REPORT.md`` (and the file size in both); with a ``precision`` section
(``training.quantize``) the shipped file is measured, and the float32 file beside it too.
"""
from __future__ import annotations

import json
import re
import sys

from .configs import MODELS
from .data import REPO_ROOT
from .export import latency_ms


def main() -> None:
    names = sys.argv[1:] or sorted(MODELS)
    for name in names:
        folder = REPO_ROOT / "models" / name
        card_path = folder / "model.json"
        card = json.loads(card_path.read_text())
        old = card.get("latency_ms_batch1_1thread")
        new = round(min(latency_ms(folder / "model.onnx") for _ in range(3)), 3)
        card["latency_ms_batch1_1thread"] = new
        card["file_size_bytes"] = (folder / "model.onnx").stat().st_size
        precision = card.get("precision")
        if precision:  # training.quantize's record: the shipped figure and the float32 one beside it
            latency = precision["latency_ms_batch1_1thread"]
            latency[precision["shipped"]] = new
            if precision["shipped"] != "fp32" and (folder / precision["fp32_file"]).exists():
                latency["fp32"] = round(min(latency_ms(folder / precision["fp32_file"]) for _ in range(3)), 3)
        card_path.write_text(json.dumps(card, indent=1) + "\n")
        report = folder / "REPORT.md"
        if report.exists():
            text = report.read_text()
            text = re.sub(r"[0-9.]+ ms/image at batch 1 with one", f"{new:.2f} ms/image at batch 1 with one", text)
            text = re.sub(r"opset 17; [0-9,]+ bytes;", f"opset 17; {card['file_size_bytes']:,} bytes;", text)
            report.write_text(text)
        print(f"{name}: {old} -> {new} ms")


if __name__ == "__main__":
    main()
