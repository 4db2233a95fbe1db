"""Two per-image steps of the pipeline, the new way against the old, side by side in one run (issue 13).

    .venv/bin/python bench/bench_per_image_steps.py [--runs 300]

On a synthetic 512 × 512 CT slice (tests/support/dicom_files.synthetic_ct), interleaved run by run so that
the machine's load hits both alike, medians in ms and their ratio:

1. writing the results: the block spliced into the original bytes (``tagging._spliced``, what the pipeline
   does) against parsing and writing the whole file again with pydicom (``tagging._rewritten``, what it did);
2. preprocessing for the two lung-CT models, which share an input specification: once, shared through
   ``InputTensors`` (what the pipeline does), against once per model (what it did).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugin")]

from orthanc_ai.dicom import tagging  # noqa: E402
from orthanc_ai.dicom.decoding import decode_analysed_frame, read_header  # noqa: E402
from orthanc_ai.dicom.private_tags import Heatmap, ModelResult  # noqa: E402
from orthanc_ai.models.model_card import ModelCard  # noqa: E402
from orthanc_ai.models.preprocessing import InputTensors, frame_to_unit_grey, unit_grey_to_tensor  # noqa: E402
from tests.support.dicom_files import synthetic_ct  # noqa: E402

CREATOR = "ORTHANC AI RESULTS 1"


def side_by_side(new: Callable[[], object], old: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median ms of each, alternating which goes first."""
    timings: dict[str, list[float]] = {"new": [], "old": []}
    for run in range(runs):
        for name, function in (("new", new), ("old", old)) if run % 2 == 0 else (("old", old), ("new", new)):
            started = time.perf_counter()
            function()
            timings[name].append((time.perf_counter() - started) * 1000)
    return statistics.median(timings["new"]), statistics.median(timings["old"])


def results() -> list[ModelResult]:
    grid = tuple(float(v) / 10 for v in range(100))
    return [ModelResult(name, "1.1.0", "IQ-OTH/NCCD", datetime(2026, 12, 5, tzinfo=UTC), classes,
                        tuple(1 / len(classes) for _ in classes),
                        heatmap=Heatmap(classes[0], 10, 10, grid, (0.0, 0.0, 512.0, 512.0)))
            for name, classes in (("lung-ct-3", ("Benign", "Malignant", "Normal")),
                                  ("lung-ct-6", ("Adenocarcinoma", "Benign", "Large_Cell_Carcinoma", "Malignant",
                                                 "Normal", "Squamous_Cell_Carcinoma")))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    dicom = synthetic_ct(seed=1, rows=512, columns=512)
    written = results()
    new, old = side_by_side(lambda: tagging._spliced(dicom, CREATOR, "bench", written),
                            lambda: tagging._rewritten(dicom, CREATOR, "bench", written), args.runs)
    print(f"write the results (2 models, heatmaps)   splice {new:6.3f} ms   rewrite {old:6.3f} ms   "
          f"ratio {new / old:.3f}")

    header = read_header(dicom, 10**8)
    frame = decode_analysed_frame(header)
    specs = [ModelCard.load(REPO / "models" / name).preprocessing for name in ("lung-ct-3", "lung-ct-6")]
    assert specs[0] == specs[1], "the two lung-CT models no longer share their input specification"

    def shared() -> None:
        inputs = InputTensors(frame, header.pixels)
        for spec in specs:
            inputs.tensor(spec)

    def each() -> None:
        for spec in specs:
            unit_grey_to_tensor(frame_to_unit_grey(frame, header.pixels, spec), spec)

    new, old = side_by_side(shared, each, args.runs)
    print(f"preprocess for lung-ct-3 and lung-ct-6   shared {new:6.3f} ms   each   {old:6.3f} ms   "
          f"ratio {new / old:.3f}")


if __name__ == "__main__":
    main()
