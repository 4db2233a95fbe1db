"""The shipped body-part router on real radiographs, through C-STORE, two Orthanc destinations and the rules.

Held-out radiographs of ../shared/data (adult chest, pediatric chest, spine, other parts) are wrapped as
DICOM CR and DX and sent by C-STORE to the plugin's Orthanc. Chest films must arrive, tagged, at the
chest destination, spine films at the spine destination, the others nowhere; a CT slice runs the lung
models and is not routed as an X-ray. The routing accuracy through Orthanc equals the model's offline
accuracy on the same images.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from orthanc_ai.config import DEFAULT_PRIVATE_CREATOR
from orthanc_ai.dicom.private_tags import read_results
from orthanc_ai.models.inference import LoadedModel
from orthanc_ai.models.model_card import ModelCard
from orthanc_ai.models.preprocessing import grey_from_8bit, unit_grey_to_tensor
from tests.integration.test_shipped_models_end_to_end import load_pixels
from tests.support.dicom_files import DATA, ROBUSTNESS, read, secondary_capture
from tests.support.orthanc_process import PROJECT, OrthancProcess, stop_all

ROUTER = PROJECT / "models" / "xray-bodypart"
PER_CLASS = 6


def destination_for(class_name: str) -> str | None:
    name = class_name.lower()
    return "chest-ai" if "chest" in name else "spine-ai" if "spine" in name else None


@pytest.mark.slow
def test_real_radiographs_are_routed_by_the_shipped_model(tmp_path_factory, tmp_path):
    if not (ROUTER / "model.onnx").is_file() or not (ROUTER / "test_split.json").is_file():
        pytest.skip("models/xray-bodypart is not shipped")
    if not DATA.is_dir():
        pytest.skip(f"shared data not found: {DATA}")
    card = ModelCard.load(ROUTER)
    model = LoadedModel(card)
    split = json.loads((ROUTER / "test_split.json").read_text())
    chosen = []
    for class_name in card.classes:
        files = [f for f in split["files"] if f["label"] == class_name]
        chosen += files[:: max(1, len(files) // PER_CLASS)][:PER_CLASS]

    servers = []
    try:
        chest = OrthancProcess(tmp_path_factory.mktemp("chest"), Path("/nonexistent"),
                               {"Plugins": [], "DicomAet": "CHESTAI"}).start()
        spine = OrthancProcess(tmp_path_factory.mktemp("spine"), Path("/nonexistent"),
                               {"Plugins": [], "DicomAet": "SPINEAI"}).start()
        servers += [chest, spine]
        rules = [{"Name": f"route-{c}", "Model": card.name, "Classes": [c], "Forward": [destination_for(c)]}
                 for c in card.classes if destination_for(c)]
        main = OrthancProcess(tmp_path_factory.mktemp("main"), PROJECT / "models", {
            "DicomModalities": {"chest-ai": ["CHESTAI", "127.0.0.1", chest.dicom_port],
                                "spine-ai": ["SPINEAI", "127.0.0.1", spine.dicom_port]}},
            {"Routing": {"Rules": rules}}).start()
        servers.append(main)

        expected: dict[str, str | None] = {}  # SOP Instance UID → destination per offline prediction
        correct_offline = 0
        paths = []
        for number, entry in enumerate(chosen):
            pixels = load_pixels(DATA / entry["file"])
            offline = card.classes[int(np.argmax(model.run(unit_grey_to_tensor(grey_from_8bit(pixels),
                                                                                   card.preprocessing))))]
            correct_offline += offline == entry["label"]
            dicom = secondary_capture(pixels, modality="CR" if number % 2 else "DX")
            expected[read(dicom).SOPInstanceUID] = destination_for(offline)
            path = tmp_path / f"{number}.dcm"
            path.write_bytes(dicom)
            paths.append(path)
        ct = ROBUSTNESS / "SignedCT.dcm"
        if ct.is_file():
            paths.append(ct)
        assert main.store_cstore(paths).returncode == 0

        want_chest = {uid for uid, d in expected.items() if d == "chest-ai"}
        want_spine = {uid for uid, d in expected.items() if d == "spine-ai"}

        def uids(server: OrthancProcess) -> set[str]:
            return {server.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in server.get("/instances")}

        main.wait_until(lambda: uids(chest) >= want_chest and uids(spine) >= want_spine, 120, "routed films")
        main.wait_until(lambda: main.status()["routing"]["inFlight"] == 0 and main.status()["queueLength"] == 0, 60)
        assert uids(chest) == want_chest and uids(spine) == want_spine  # nothing else arrived
        for server in (chest, spine):
            for instance_id in server.get("/instances"):  # destinations receive the tagged instance
                results = read_results(read(server.get_bytes(f"/instances/{instance_id}/file")),
                                       DEFAULT_PRIVATE_CREATOR)
                assert card.name in {r.model for r in results}

        # Routing accuracy through Orthanc, from the router's tags, equals the offline accuracy.
        correct_orthanc = 0
        truth = {}
        for entry, path in zip(chosen, paths, strict=False):  # paths may end with an extra CT
            truth[read(path.read_bytes()).SOPInstanceUID] = entry["label"]
        for instance_id in main.get("/instances"):
            tags = main.get(f"/instances/{instance_id}/simplified-tags")
            results = {r.model: r for r in read_results(read(main.get_bytes(f"/instances/{instance_id}/file")),
                                                        DEFAULT_PRIVATE_CREATOR)}
            if tags.get("Modality") == "CT":
                assert card.name not in results and results  # lung models ran, the router did not
                continue
            correct_orthanc += results[card.name].top_class == truth[tags["SOPInstanceUID"]]
        print(f"\n{len(chosen)} radiographs: routing accuracy through Orthanc {correct_orthanc / len(chosen):.3f}, "
              f"offline {correct_offline / len(chosen):.3f}; {len(want_chest)} to chest-ai, {len(want_spine)} to "
              "spine-ai")
        assert correct_orthanc == correct_offline
    finally:
        stop_all(servers)
