"""Model cards and applicability rules."""
from __future__ import annotations

from pathlib import Path

import pytest

from orthanc_ai.models.model_card import Applicability, ModelCard, ModelCardError

CARD = {
    "name": "lung-ct-3", "version": "1.0.0", "classes": ["Benign", "Malignant", "Normal"],
    "input": {"height": 160, "width": 160, "channels": 1},
    "preprocessing": {"resize": "pad", "ct_window": {"center": -600, "width": 1500}},
    "applies_to": {"Modality": ["CT"], "BodyPartExamined": ["CHEST", "LUNG", None]},
    "dataset": {"name": "IQ-OTH/NCCD"},
}


def test_card_is_parsed():
    card = ModelCard.from_json(CARD, Path("models/lung-ct-3"))
    assert card.preprocessing.ct_window == (-600.0, 1500.0)
    assert card.dataset == "IQ-OTH/NCCD"
    assert card.onnx_path == Path("models/lung-ct-3/model.onnx")


def test_applicability_rules():
    rules = Applicability.from_json(CARD["applies_to"])
    assert rules.mismatch({"Modality": "CT", "BodyPartExamined": "chest"}) is None
    assert rules.mismatch({"Modality": "CT"}) is None  # absent body part accepted (null in the list)
    assert rules.mismatch({"Modality": "MR"}) == "Modality MR not in [CT]"
    assert rules.mismatch({"Modality": "CT", "BodyPartExamined": "KNEE"}) == (
        "BodyPartExamined KNEE not in [CHEST, LUNG, (absent)]")


@pytest.mark.parametrize("change, message", [
    ({"name": "Lung CT"}, "lower-case"),
    ({"classes": ["A"]}, "at least two"),
    ({"classes": ["A", "A"]}, "distinct"),
    ({"classes": ["A\\B", "C"]}, "no backslash"),
    ({"output": {"kind": "scores"}}, "logits"),
    ({"applies_to": {"Modality": "CT"}}, "list of strings"),
])
def test_bad_cards_are_refused(change, message):
    with pytest.raises(ModelCardError) as error:
        ModelCard.from_json({**CARD, **change}, Path("x"))
    assert message in str(error.value)
