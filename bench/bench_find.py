"""``GET /ai/find`` on a large archive: answered from labels (Orthanc >= 1.12) against a scan of every instance.

    .venv/bin/python bench/bench_find.py [--studies 100] [--per-study 100] [--rare-studies 5] [--repeats 5]

Starts one Orthanc with the plugin and a small test model that calls bright images "rare" and dark ones
"common", stores studies x per-study Secondary Captures over HTTP (the first --rare-studies studies
bright), lets the plugin predict them all, then times, side by side and alternating, ``/ai/find`` for the
rare class at study level with ``search=auto`` (by label where Orthanc has labels) and ``search=scan``
(every instance's metadata). Prints the Orthanc version, the medians and the ratio; both must give the same
studies. On Orthanc 1.10 both are scans (no labels), which the output says.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "plugin"))

import numpy as np  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from bench.bench_pipeline import Client, machine_description, wait_processed  # noqa: E402
from tests.support.dicom_files import secondary_capture  # noqa: E402
from tests.support.onnx_models import build_model  # noqa: E402
from tests.support.orthanc_process import OrthancProcess  # noqa: E402

MODEL = "find-bench"


def timed_find(client: Client, search: str) -> tuple[float, dict]:
    started = time.perf_counter()
    answer = client.get_json(f"/ai/find?model={MODEL}&class=rare&level=studies&search={search}")
    return time.perf_counter() - started, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--per-study", type=int, default=100)
    parser.add_argument("--rare-studies", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    total = args.studies * args.per_study

    work = Path(tempfile.mkdtemp(prefix="bench-find-"))
    try:
        build_model(work / "models", MODEL, ["rare", "common"], {"Modality": ["OT"]},
                    brightness_weights=[(4.0, -2.0), (-4.0, 2.0)])
        server = OrthancProcess(work / "orthanc", work / "models", None, {"Workers": 2}).start()
        try:
            client = Client(server)
            system = client.get_json("/system")
            print(f"Orthanc {system['Version']}, {total} instances in {args.studies} studies "
                  f"({args.rare_studies} of them 'rare')", flush=True)
            started = time.monotonic()
            for study in range(args.studies):
                level = 240 if study < args.rare_studies else 15
                study_uid, series_uid = generate_uid(), generate_uid()
                for number in range(args.per_study):
                    client.store(secondary_capture(np.full((32, 32), level, np.uint8), modality="OT",
                                                   study_uid=study_uid, series_uid=series_uid,
                                                   instance_number=number + 1))
                if (study + 1) % 10 == 0:
                    print(f"  stored {(study + 1) * args.per_study} of {total}", flush=True)
            wait_processed(client, total, timeout=3600, poll=1.0)
            print(f"stored and predicted in {time.monotonic() - started:.0f} s", flush=True)

            times: dict[str, list[float]] = {"auto": [], "scan": []}
            answers: dict[str, dict] = {}
            for repeat in range(args.repeats):
                for search in (("auto", "scan") if repeat % 2 == 0 else ("scan", "auto")):
                    seconds, answers[search] = timed_find(client, search)
                    times[search].append(seconds)
            if sorted(answers["auto"]["matches"]) != sorted(answers["scan"]["matches"]):
                sys.exit(f"the two searches disagree: {answers}")
            median = {search: statistics.median(values) for search, values in times.items()}
            print(json.dumps({"machine": machine_description(), "orthanc": system["Version"],
                              "instances": total, "matches": len(answers["auto"]["matches"]),
                              "searched": {k: a["searched"] for k, a in answers.items()},
                              "median_seconds": {k: round(v, 4) for k, v in median.items()},
                              "scan_over_auto": round(median["scan"] / median["auto"], 1)}, indent=1))
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
