"""Coverage-guided fuzzing (atheris) of the plugin's pure readers: header checks, pixel decoding and
reading an existing private block. The only exception any input may raise is the documented skip
(``InstanceSkipped``); anything else is a crash, which libFuzzer writes to its artifact prefix.

    python tests/fuzz/fuzz_readers.py CORPUS_DIR -max_total_time=60 -seed=1

Run by tests/test_fuzz_readers.py with a fixed time budget; the seed corpus is the small files of
../shared/data/dicom-robustness.
"""
from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugin"))

with atheris.instrument_imports(include=["orthanc_ai", "pydicom"]):
    from orthanc_ai.config import DEFAULT_PRIVATE_CREATOR
    from orthanc_ai.dicom.decoding import InstanceSkipped, decode_analysed_frame, read_header
    from orthanc_ai.dicom.private_tags import read_results

# Small frames only: decoding a legitimately huge frame is slow, not a bug, and would eat the budget.
MAX_FRAME_PIXELS = 1_000_000


def one_input(data: bytes) -> None:
    try:
        instance = read_header(data, MAX_FRAME_PIXELS)
    except InstanceSkipped:
        return
    read_results(instance.dataset, DEFAULT_PRIVATE_CREATOR)  # damaged slots are ignored, never raised
    try:
        decode_analysed_frame(instance, fallback=None)
    except InstanceSkipped:
        return


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
