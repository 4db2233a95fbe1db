"""A shipped model's leakage-free test images as tensors, through the plugin's own preprocessing.

Reads ``models/<name>/test_split.json`` and turns each listed image into the network input exactly as
``tests/test_model_accuracy.py`` does (``grey_from_8bit`` then ``unit_grey_to_tensor`` with the card's
sections), so the figures computed on these tensors are the ones the plugin would see.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import data as D
from .pipeline import preprocess_file

sys.path.insert(0, str(D.PLUGIN_DIR))
from orthanc_ai.models.preprocessing import Preprocessing


@dataclass
class TestSplit:
    """The test images of one model: tensors ``x`` (N, C, H, W), labels ``y`` and the model card."""

    __test__ = False  # not a pytest class

    card: dict[str, Any]
    spec: Preprocessing
    files: list[str]
    x: np.ndarray
    y: np.ndarray


def missing_files(folder: Path, root: Path | None = None) -> list[str]:
    """Test images of the model in ``folder`` that are absent under the data root."""
    root = root or D.data_dir()
    split = json.loads((folder / "test_split.json").read_text(encoding="utf-8"))
    return [f["file"] for f in split["files"] if not (root / f["file"]).is_file()]


def load_test_split(folder: Path, root: Path | None = None) -> TestSplit:
    """Preprocess every test image of the model in ``folder`` (``models/<name>``)."""
    root = root or D.data_dir()
    card = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    split = json.loads((folder / "test_split.json").read_text(encoding="utf-8"))
    spec = Preprocessing.from_card(card)
    files = [f["file"] for f in split["files"]]
    x = np.stack([preprocess_file(root / f, spec) for f in files]).astype(np.float32)
    y = np.array([card["classes"].index(f["label"]) for f in split["files"]])
    return TestSplit(card, spec, files, x, y)
