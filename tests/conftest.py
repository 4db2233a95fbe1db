"""Fixtures: test models and real Orthanc processes started with the project's configuration and plugin."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import config as pydicom_config

from tests.support.onnx_models import build_model
from tests.support.orthanc_process import OrthancProcess, stop_all

# Everything the plugin writes must be valid DICOM: invalid VRs or values fail the tests.
pydicom_config.settings.writing_validation_mode = pydicom_config.RAISE

TEST_MODELS = {
    "test-ct": (["Benign", "Malignant", "Normal"], {"Modality": ["CT"]}, {"center": -600, "width": 1500}),
    "test-any": (["First", "Second"], {"PhotometricInterpretation": ["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL",
                                                                     "YBR_FULL_422", "PALETTE COLOR", "YBR_ICT",
                                                                     "YBR_RCT"]}, None),
}


@pytest.fixture(scope="session")
def test_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small ONNX models: one for CT only, with a heatmap output; one for any image, without."""
    folder = tmp_path_factory.mktemp("models")
    for seed, (name, (classes, applies_to, window)) in enumerate(TEST_MODELS.items()):
        build_model(folder, name, classes, applies_to, seed=seed, ct_window=window, heatmap=name == "test-ct")
    return folder


@pytest.fixture
def start_orthanc(tmp_path_factory: pytest.TempPathFactory,
                  test_models: Path) -> Iterator[Callable[..., OrthancProcess]]:
    """Start Orthanc processes; each is stopped (SIGTERM) at the end of the test, and must stop cleanly."""
    started: list[OrthancProcess] = []

    def start(models: Path = test_models, expect_failure: bool = False, **overrides) -> OrthancProcess:
        plugin = overrides.pop("plugin", None)
        server = OrthancProcess(tmp_path_factory.mktemp("orthanc"), models, overrides, plugin)
        started.append(server)
        return server.start(expect_failure=expect_failure)

    yield start
    stop_all(started)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, test_models: Path) -> Iterator[OrthancProcess]:
    """One Orthanc with the test models, shared by the tests of a module."""
    server = OrthancProcess(tmp_path_factory.mktemp("orthanc"), test_models)
    server.start()
    yield server
    assert server.stop() == 0, server.log_tail()
