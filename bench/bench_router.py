"""What the imaging router adds per radiograph, measured side by side in one run.

    .venv/bin/python bench/bench_router.py [--images 40] [--rounds 3]

Two Orthanc processes with the plugin, fed the same radiographs one at a time, in alternating order each
round so machine noise hits both alike:

  * "router":   the shipped xray-bodypart model, and routing rules that forward chest and spine films
                to a third, plain Orthanc (C-STORE through Orthanc jobs);
  * "baseline": the same read → tag → store loop with a trivial model (average pooling and one linear
                layer on a 32 x 32 input) and no routing rules.

For each image the wall time from the end of the HTTP store until its AIStatus metadata is readable
(the tagged copy stored) is measured; the router's cost is the difference of the medians, and the
ratio router / baseline is printed. Forwarding itself runs after the tags and off the prediction path;
its completion time is printed separately. Target (issue 5): the router adds at most 15 ms per image.
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

from bench.bench_pipeline import Client, machine_description  # noqa: E402
from tests.support.dicom_files import DATA, read, secondary_capture, to_bytes  # noqa: E402
from tests.support.onnx_models import build_model  # noqa: E402
from tests.support.orthanc_process import OrthancProcess  # noqa: E402

ROUTER = REPO / "models" / "xray-bodypart"
TARGET_MS = 15.0


def radiographs(count: int) -> list[bytes]:
    """Held-out radiographs of the router's test split wrapped as DX, or synthetic films without the data."""
    split_file = ROUTER / "test_split.json"
    if DATA.is_dir() and split_file.is_file():
        from PIL import Image

        files = json.loads(split_file.read_text())["files"]
        chosen = files[:: max(1, len(files) // count)][:count]
        images = []
        for entry in chosen:
            with Image.open(DATA / entry["file"]) as image:
                images.append(secondary_capture(np.asarray(image.convert("L")), modality="DX"))
        return images
    rng = np.random.default_rng(0)
    return [secondary_capture(rng.integers(0, 255, (512, 512), dtype=np.uint8), modality="DX") for _ in range(count)]


def store_to_tags_ms(client: Client, dicom: bytes, timeout: float = 60.0) -> float:
    instance_id = client.store(dicom)
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "AIStatus" in client.get_json(f"/instances/{instance_id}/metadata"):
            return (time.perf_counter() - started) * 1000
        time.sleep(0.002)
    raise TimeoutError(f"no AIStatus on {instance_id} after {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not (ROUTER / "model.onnx").is_file():
        sys.exit("models/xray-bodypart is not shipped: nothing to measure")

    work = Path(tempfile.mkdtemp(prefix="bench-router-"))
    router_models, baseline_models = work / "router-models", work / "baseline-models"
    shutil.copytree(ROUTER, router_models / ROUTER.name)
    build_model(baseline_models, "baseline-xray", ["a", "b"], {"Modality": ["CR", "DX"]})
    card = json.loads((ROUTER / "model.json").read_text())
    targets = {c: "chest" if "chest" in c.lower() else "spine" if "spine" in c.lower() else None
               for c in card["classes"]}
    servers = []
    try:
        destination = OrthancProcess(work / "destination", work, {"Plugins": [], "DicomAet": "DEST"}).start()
        servers.append(destination)
        rules = [{"Name": f"to-{t}-{c}", "Model": card["name"], "Classes": [c], "Forward": ["dest"]}
                 for c, t in targets.items() if t]
        modalities = {"DicomModalities": {"dest": ["DEST", "127.0.0.1", destination.dicom_port]}}
        router = OrthancProcess(work / "router", router_models, modalities, {"Routing": {"Rules": rules}}).start()
        baseline = OrthancProcess(work / "baseline", baseline_models, modalities).start()
        servers += [router, baseline]
        clients = {"router": Client(router), "baseline": Client(baseline)}
        images = radiographs(args.images)
        for client in clients.values():  # warm-up: load sessions, caches
            store_to_tags_ms(client, secondary_capture(np.zeros((64, 64), np.uint8), modality="DX"))

        times: dict[str, list[float]] = {name: [] for name in clients}
        for round_number in range(args.rounds):
            order = list(clients) if round_number % 2 == 0 else list(reversed(clients))
            for dicom in images:
                for name in order:
                    # A fresh SOP Instance UID per store, so every store is a new instance.
                    dataset = read(dicom)
                    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                    times[name].append(store_to_tags_ms(clients[name], to_bytes(dataset)))
        sent_deadline = time.monotonic() + 120
        while clients["router"].get_json("/ai/status")["routing"]["inFlight"] and time.monotonic() < sent_deadline:
            time.sleep(0.1)
        routing = clients["router"].get_json("/ai/status")["routing"]
        sends = [e for e in clients["router"].get_json("/ai/routing?limit=10000")["entries"] if e["outcome"] == "sent"]

        median = {name: statistics.median(values) for name, values in times.items()}
        added = median["router"] - median["baseline"]
        print("machine:", json.dumps(machine_description(), indent=1))
        print(f"{len(images)} radiographs x {args.rounds} rounds, one at a time, store → tags wall time (ms):")
        for name, values in times.items():
            ordered = sorted(values)
            print(f"  {name:9s} median {median[name]:7.2f}  p95 {ordered[int(0.95 * (len(ordered) - 1))]:7.2f}  "
                  f"(n={len(values)})")
        print(f"router / baseline = {median['router'] / median['baseline']:.2f}; the router adds "
              f"{added:.2f} ms per image (target ≤ {TARGET_MS:.0f} ms): {'met' if added <= TARGET_MS else 'NOT met'}")
        if sends:
            print(f"forwarded {routing['sent']} films, failed {routing['failed']}, retries {routing['retries']}; "
                  f"decision → sent median {statistics.median(e['secondsSinceDecision'] for e in sends) * 1000:.0f} ms "
                  f"(off the prediction path)")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
