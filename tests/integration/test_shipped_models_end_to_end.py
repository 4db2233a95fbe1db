"""The shipped models through the whole Orthanc path give exactly their offline predictions.

For each model in models/ with a test_split.json, its leakage-free test images are wrapped as 8-bit
Secondary Captures (grey or RGB as the file is), stored into a real Orthanc with the plugin, predicted
through the plugin's study route, and read back from the private tags. Each image's top class must be
the one the offline evaluation (the same preprocessing code and ONNX file, without Orthanc) gives, so
the accuracy read from Orthanc equals the offline accuracy.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from orthanc_ai.models.inference import LoadedModel
from orthanc_ai.models.model_card import ModelCard
from orthanc_ai.models.preprocessing import grey_from_8bit, unit_grey_to_tensor
from tests.support.dicom_files import DATA, secondary_capture
from tests.support.orthanc_process import PROJECT

MODELS_DIR = PROJECT / "models"
SHIPPED = sorted(p.name for p in MODELS_DIR.glob("*")
                 if (p / "test_split.json").is_file() and (p / "model.onnx").is_file())
MAX_IMAGES = int(os.environ.get("ORTHANC_AI_E2E_MAX_IMAGES", "120"))


def load_pixels(path: Path) -> np.ndarray:
    from PIL import Image

    image: Image.Image
    with Image.open(path) as image:
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB") if len(image.getbands()) > 1 or image.mode == "P" else image.convert("L")
        return np.asarray(image)


def evenly_spaced(files: list, count: int) -> list:
    if len(files) <= count:
        return files
    step = len(files) / count
    return [files[int(i * step)] for i in range(count)]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED or ["(no shipped model)"])
def test_orthanc_path_equals_offline_evaluation(name: str, start_orthanc, capsys):
    if name not in SHIPPED:
        pytest.skip("no model with a test_split.json in models/")
    if not DATA.is_dir():
        pytest.skip(f"shared data not found: {DATA}")
    card = ModelCard.load(MODELS_DIR / name)
    model = LoadedModel(card)
    split = json.loads((MODELS_DIR / name / "test_split.json").read_text())
    files = evenly_spaced(split["files"], MAX_IMAGES)
    modality = next((m for m in card.applies_to.rules.get("Modality", ()) if m), "OT")

    orthanc = start_orthanc(models=MODELS_DIR, plugin={"AutoPredict": False})
    study, series = generate_uid(), generate_uid()
    offline, labels, instance_ids = [], [], []
    for number, entry in enumerate(files, start=1):
        pixels = load_pixels(DATA / entry["file"])
        tensor = unit_grey_to_tensor(grey_from_8bit(pixels), card.preprocessing)
        offline.append(card.classes[int(np.argmax(model.run(tensor)))])
        labels.append(entry["label"])
        dicom = secondary_capture(pixels, modality=modality, study_uid=study, series_uid=series, instance_number=number)
        instance_ids.append(orthanc.store_http(dicom)["ID"])

    study_id = orthanc.get(f"/instances/{instance_ids[0]}/study")["ID"]
    status, answer = orthanc.post_json(f"/ai/studies/{study_id}/predict", {"models": [name]})
    assert status == 200, answer
    assert answer["counts"] == {"predicted": len(files)}

    from_tags = []
    for instance_id in instance_ids:
        [prediction] = orthanc.get(f"/ai/instances/{instance_id}/predictions")["predictions"]
        assert prediction["model"] == name and prediction["version"] == card.version
        from_tags.append(prediction["topClass"])

    accuracy_orthanc = float(np.mean([p == t for p, t in zip(from_tags, labels, strict=True)]))
    accuracy_offline = float(np.mean([p == t for p, t in zip(offline, labels, strict=True)]))
    with capsys.disabled():
        print(f"\n{name}: {len(files)} test images through Orthanc: accuracy {accuracy_orthanc:.4f}; "
              f"offline {accuracy_offline:.4f}; per-image agreement "
              f"{sum(a == b for a, b in zip(from_tags, offline, strict=True))}/{len(files)}")
    assert from_tags == offline
