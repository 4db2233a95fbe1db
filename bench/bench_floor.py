"""The floor of the plugin's cost per image, as a multiple of Orthanc's own cost to ingest it (issue 13).

    .venv/bin/python bench/bench_floor.py [--rounds 6] [--batch 200]

Whatever the plugin does around it, predicting a stored image and keeping the results inside it takes at
least (a) the plugin's own work on the image, done once and by the fastest code the project has, and
(b) Orthanc storing the tagged copy over the original. This script measures both against (c) Orthanc
ingesting the image in the first place, side by side in rounds on one plain Orthanc (no plugin loaded):

  (c) Orthanc's CPU (user + system, /proc) per ``POST /instances`` of a new 512 x 512 CT slice;
  (a) this process's CPU per image for what the pipeline does in Python, one thread as in Orthanc's workers
      (``OPENBLAS_NUM_THREADS=1``, one ONNX Runtime thread): parse the header, decode the frame, preprocess
      once for both lung-CT models, run both (int8, with their heatmap outputs), write the private block;
  (b) Orthanc's CPU per ``POST /instances`` of that tagged copy, which replaces the stored instance
      (``"OverwriteInstances": true``, as the plugin does).

and prints each per round and their medians: (a), split into the models' runs and all else, and (b), each
as a multiple of (c); the floor (a + b) / (c); and the models' share of (a + b). No REST
call between the plugin and Orthanc other than the store-back is counted, nor the reading of the file, the
plugin's bookkeeping or the contention of two workers: the plugin inside Orthanc costs more, never less.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as inside Orthanc (README); before numpy loads

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugin")]

from bench.bench_pipeline import Client, cpu_seconds, pid_of  # noqa: E402
from orthanc_ai.config import DEFAULT_PRIVATE_CREATOR, PluginConfig  # noqa: E402
from orthanc_ai.dicom.decoding import decode_analysed_frame, read_header  # noqa: E402
from orthanc_ai.dicom.tagging import add_results  # noqa: E402
from orthanc_ai.models.inference import LoadedModel  # noqa: E402
from orthanc_ai.models.preprocessing import InputTensors  # noqa: E402
from orthanc_ai.models.registry import ModelRegistry  # noqa: E402
from tests.support.dicom_files import synthetic_ct  # noqa: E402
from tests.support.orthanc_process import OrthancProcess  # noqa: E402

CT_MODELS = ("lung-ct-3", "lung-ct-6")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=200, help="images per round")
    args = parser.parse_args()

    registry = ModelRegistry.load(PluginConfig(models_directory=REPO / "models", enabled_models=CT_MODELS))
    if registry.load_errors:
        raise SystemExit(f"models not loaded: {registry.load_errors}")
    models = [registry.models[name] for name in CT_MODELS]
    workdir = Path(tempfile.mkdtemp(prefix="orthanc-ai-floor-"))
    server = OrthancProcess(workdir, REPO / "models", overrides={"Plugins": []}).start()
    try:
        client, pid = Client(server), pid_of(server)
        tagged_copy(synthetic_ct(seed=0, rows=512, columns=512), models, {"models": 0.0, "rest": 0.0})  # warm-up
        rows = []
        for round_number in range(1, args.rounds + 1):
            first_seed = round_number * args.batch
            originals = [synthetic_ct(seed=seed, rows=512, columns=512)
                         for seed in range(first_seed, first_seed + args.batch)]
            ingest = orthanc_cpu_per_store(client, pid, originals)
            own = {"models": 0.0, "rest": 0.0}
            copies = [tagged_copy(original, models, own) for original in originals]
            overwrite = orthanc_cpu_per_store(client, pid, copies)
            rows.append(Round(ingest, own["models"] / len(originals), own["rest"] / len(originals), overwrite))
            print(f"round {round_number}: " + rows[-1].describe(), flush=True)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    median = Round(*(statistics.median(getattr(row, name) for row in rows) for name in Round._fields))
    floors = [row.floor for row in rows]
    print(f"\nmedians of {args.rounds} rounds of {args.batch} 512x512 CT slices, CPU ms per image:")
    print(f"  (c) Orthanc ingests the image               {median.ingest * 1000:6.2f}")
    for label, value in (("(a) the plugin's own work: the models", median.models),
                         ("    the plugin's own work: all else  ", median.rest),
                         ("(b) Orthanc stores the tagged copy    ", median.overwrite)):
        print(f"  {label}       {value * 1000:6.2f}   {value / median.ingest:.2f} x (c)")
    print(f"  floor (a + b) / (c): {statistics.median(floors):.2f} (rounds {min(floors):.2f}-{max(floors):.2f}); "
          f"the models' share of (a + b): {median.models / (median.models + median.rest + median.overwrite):.0%}")


class Round(NamedTuple):
    """CPU seconds per image in one round."""

    ingest: float
    models: float
    rest: float
    overwrite: float

    @property
    def floor(self) -> float:
        return (self.models + self.rest + self.overwrite) / self.ingest

    def describe(self) -> str:
        return (f"Orthanc ingest {self.ingest * 1000:.2f} ms, plugin's own work {self.models * 1000:.2f} ms "
                f"models + {self.rest * 1000:.2f} ms else, Orthanc overwrite {self.overwrite * 1000:.2f} ms per "
                f"image; floor {self.floor:.2f} x ingest")


def tagged_copy(original: bytes, models: list[LoadedModel], cpu: dict[str, float]) -> bytes:
    """What the pipeline does in Python for one image, at its cheapest: once, every model sharing the input.
    Adds the CPU seconds spent to ``cpu["models"]`` (the models' runs) and ``cpu["rest"]`` (all else)."""
    started = time.process_time()
    header = read_header(original, 10**8)
    inputs = InputTensors(decode_analysed_frame(header), header.pixels)
    for model in models:
        inputs.tensor(model.card.preprocessing)
    models_started = time.process_time()
    results = [model.predict(inputs, frame_number=1) for model in models]
    models_ended = time.process_time()
    tagged = add_results(original, DEFAULT_PRIVATE_CREATOR, "orthanc-ai bench", results)
    cpu["models"] += models_ended - models_started
    cpu["rest"] += (models_started - started) + (time.process_time() - models_ended)
    return tagged


def orthanc_cpu_per_store(client: Client, pid: int, files: list[bytes]) -> float:
    """Orthanc's CPU seconds per POST /instances of each file."""
    before = cpu_seconds(pid)
    for dicom in files:
        status, body = client.request("POST", "/instances", dicom)
        if status != 200 or json.loads(body)["Status"] != "Success":  # "AlreadyStored": nothing replaced
            raise RuntimeError(f"POST /instances → {status}: {body[:200]!r}")
    return (cpu_seconds(pid) - before) / len(files)


if __name__ == "__main__":
    main()
