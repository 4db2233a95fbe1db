"""The deletion test of the class activation maps gives what each model card says.

Recomputes ``training.heatmap_faithfulness`` on the leakage-free test images (the plugin's preprocessing,
onnxruntime) and compares the ratio of the mean probability drops (hottest cells / random cells) with the
card's ``heatmap.faithfulness``; the card's ``pass`` must be true exactly when that ratio reaches the threshold.

Needs the shared data folder: ``../shared/data`` next to the repository, or ORTHANC_AI_DATA.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.model_test_images import leakage_free_images_root
from training.heatmap_faithfulness import PASS_RATIO, measure, session_for
from training.test_split import load_test_split

REPO = Path(__file__).resolve().parents[1]
MODELS = sorted(p.parent for p in (REPO / "models").glob("*/test_split.json"))
# Same files, images and seeds: only float rounding of the kernels (thread count) can differ.
RELATIVE_TOLERANCE = 0.01


@pytest.mark.parametrize("folder", MODELS, ids=[f.name for f in MODELS])
def test_heatmap_faithfulness_matches_card(folder: Path) -> None:
    pytest.importorskip("onnxruntime")
    root = leakage_free_images_root(folder, "run the heatmap faithfulness test")
    card = json.loads((folder / "model.json").read_text(encoding="utf-8"))["heatmap"]["faithfulness"]
    assert card["pass"] == (card["ratio"] >= PASS_RATIO)

    result = measure(session_for(folder), load_test_split(folder, root))
    assert len(result.drop_hottest) == card["images"]
    assert result.ratio == pytest.approx(card["ratio"], rel=RELATIVE_TOLERANCE), (
        f"{folder.name}: measured ratio {result.ratio:.3f}, card says {card['ratio']}")
    assert (result.ratio >= PASS_RATIO) == card["pass"]
