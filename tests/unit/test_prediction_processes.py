"""Prediction processes: real child Pythons predicting real files (the pipeline's part in Orthanc is in
tests/integration/test_prediction_processes.py)."""
from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

from orthanc_ai.config import PluginConfig
from orthanc_ai.dicom.decoding import InstanceSkipped
from orthanc_ai.dicom.tagging import stored_results
from orthanc_ai.events.instance_guards import EchoGuard
from orthanc_ai.models import prediction_processes
from orthanc_ai.models.file_prediction import FileRequest, predict_file
from orthanc_ai.models.prediction_processes import PredictionProcessDied, PredictionProcesses
from orthanc_ai.models.registry import ModelRegistry
from orthanc_ai.pipeline import PredictionPipeline
from orthanc_ai.status import PluginStatus
from tests.support.dicom_files import read, synthetic_ct, to_bytes
from tests.unit.test_pipeline import DECLARED_METADATA, MemoryOrthanc


@pytest.fixture
def config(test_models: Path) -> PluginConfig:
    return PluginConfig(models_directory=test_models, worker_niceness=0, user_metadata=DECLARED_METADATA)


@pytest.fixture
def processes(config: PluginConfig) -> Iterator[PredictionProcesses]:
    started = prediction_processes.start_prediction_processes(config, count=1)
    assert started is not None, "the prediction process did not start"
    yield started
    started.stop()


def request_for(config: PluginConfig, models: tuple[str, ...] | None = None) -> FileRequest:
    return FileRequest(models=models, force=False, private_creator=config.private_creator,
                       max_frame_pixels=config.max_frame_pixels, source_file_name="slice.dcm", source_file_size=9)


def test_a_process_predicts_what_the_thread_predicts(processes, config):
    original = synthetic_ct(seed=11, rows=128, columns=128)
    in_thread = predict_file(original, request_for(config), ModelRegistry.load(config))
    in_process = processes.predict(original, request_for(config))
    assert [r.model for r in in_process.results] == [r.model for r in in_thread.results] == ["test-any", "test-ct"]
    for ours, theirs in zip(in_process.results, in_thread.results, strict=True):
        assert ours.probabilities == theirs.probabilities
        assert ours.heatmap == theirs.heatmap
        assert ours.source_file_name == "slice.dcm"
    assert in_process.ids == in_thread.ids
    assert in_process.tagged is not None
    stored = stored_results(in_process.tagged, config.private_creator)
    assert [r.model for r in stored] == ["test-any", "test-ct"]
    for kept, theirs in zip(stored, in_thread.results, strict=True):
        assert kept.probabilities == pytest.approx(theirs.probabilities, abs=1e-6)  # stored as DS


def test_a_skip_comes_back_with_the_reason_the_thread_would_give(processes, config):
    truncated = synthetic_ct(seed=12)[:600]
    with pytest.raises(InstanceSkipped) as in_thread:
        predict_file(truncated, request_for(config), ModelRegistry.load(config))
    with pytest.raises(InstanceSkipped) as in_process:
        processes.predict(truncated, request_for(config))
    assert str(in_process.value) == str(in_thread.value) != ""


def test_a_process_killed_while_idle_costs_no_image(processes, config, caplog):
    original = synthetic_ct(seed=13)
    processes.predict(original, request_for(config))
    (victim,) = processes._children
    os.kill(victim.pid, signal.SIGKILL)
    victim.process.wait()
    assert processes.predict(original, request_for(config)).results
    assert f"Prediction process {victim.pid} ended (killed by signal SIGKILL)" in caplog.text
    (replacement,) = processes._children
    assert replacement.pid != victim.pid


class _KillsTheProcessThatReadsIt(FileRequest):
    """A request whose unpickling ends the process reading it, as a crashing decoder would."""

    def __reduce__(self):
        return os._exit, (3,)


def test_a_file_that_kills_two_processes_fails_and_a_third_takes_the_next_one(processes, config):
    deadly = _KillsTheProcessThatReadsIt(**vars(request_for(config)))
    with pytest.raises(PredictionProcessDied, match="exit status 3"):
        processes.predict(synthetic_ct(seed=15), deadly)
    assert processes.predict(synthetic_ct(seed=15), request_for(config)).results


def test_stop_ends_every_process(config):
    started = prediction_processes.start_prediction_processes(config, count=2)
    assert started is not None
    children = list(started._children)
    started.stop()
    assert [child.process.returncode for child in children] == [0, 0]


def test_processes_that_cannot_start_are_reported_and_the_threads_predict(config, monkeypatch, caplog):
    monkeypatch.setattr(prediction_processes, "_child_python", lambda: "/bin/false")
    with caplog.at_level(logging.ERROR):
        assert prediction_processes.start_prediction_processes(config, count=1) is None
    assert "PredictionProcesses: prediction process" in caplog.text
    assert "predicting in the worker threads" in caplog.text


def test_a_frame_only_orthanc_decodes_is_predicted_in_the_thread_with_orthancs_decoder(processes, config):
    # MPEG-2 pixel data: pydicom has no decoder for it, Orthanc's (here, the stand-in's) has.
    dataset = read(synthetic_ct(seed=14))
    pixels = dataset.pixel_array
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    dataset.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    dataset["PixelData"].VR = "OB"
    api = MemoryOrthanc()
    instance_id = api.add(to_bytes(dataset))
    decoded: list[int] = []

    def orthanc_decoder(dicom: bytes, frame_index: int) -> np.ndarray:
        decoded.append(frame_index)
        return pixels

    api.decode_frame = orthanc_decoder
    pipeline = PredictionPipeline(api, ModelRegistry.load(config), config, PluginStatus(), EchoGuard(),
                                  processes=processes)
    outcome = pipeline.process(instance_id)
    assert outcome.state == "predicted", outcome.reason
    assert decoded == [0]
    assert {r.model for r in stored_results(api.files[instance_id], config.private_creator)} == {"test-any", "test-ct"}
