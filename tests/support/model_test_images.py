"""A shipped model's leakage-free test images on disk, or the test skipped with the reason."""
from __future__ import annotations

from pathlib import Path

import pytest

from training.data import data_dir
from training.test_split import missing_files


def leakage_free_images_root(folder: Path, purpose: str) -> Path:
    """The data root holding every test image of the model in ``folder``; skips (naming ``purpose``) otherwise."""
    root = data_dir()
    if not root.is_dir():
        pytest.skip(f"shared data folder {root} is absent (set ORTHANC_AI_DATA to {purpose})")
    missing = missing_files(folder, root)
    if missing:
        pytest.skip(f"{len(missing)} test images of {folder.name} are missing under {root}, e.g. {missing[0]}")
    return root
