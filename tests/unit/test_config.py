"""The "OrthancAI" configuration section: defaults, relative paths, clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from orthanc_ai.config import ConfigurationError, check_orthanc_settings, parse_config, prediction_process_count


def test_defaults_when_section_is_absent():
    config = parse_config({}, Path("/etc/orthanc"))
    assert config.auto_predict is True and config.workers == 2
    assert config.deletion_filter == "auto"
    assert config.models_directory.name == "models" and config.enabled_models is None


def test_relative_models_directory_is_taken_from_the_configuration_folder():
    config = parse_config({"OrthancAI": {"ModelsDirectory": "ai/models", "EnabledModels": ["a"]}}, Path("/etc/orthanc"))
    assert config.models_directory == Path("/etc/orthanc/ai/models")
    assert config.enabled_models == ("a",)


@pytest.mark.parametrize("section, message", [
    ({"Workerz": 2}, "unknown key(s) in \"OrthancAI\": Workerz"),
    ({"Workers": True}, "\"OrthancAI.Workers\" must be a whole number"),
    ({"Workers": 0}, "between 1 and 32"),
    ({"AutoPredict": "yes"}, "must be true or false"),
    ({"EnabledModels": [1]}, "list of model names"),
    ({"PrivateCreator": "A\\B"}, "without backslash"),
    ({"PrivateCreator": "x" * 65}, "1–64"),
    ({"AppliesTo": {"m": {"Modality": "CT"}}}, "lists of accepted values"),
    ({"MaxFramePixels": 10}, "at least 4096"),
    ({"DeletionFilter": "yes"}, "\"OrthancAI.DeletionFilter\" must be one of auto, always, never"),
    ({"IngestFirstAbovePerSecond": -1}, "\"OrthancAI.IngestFirstAbovePerSecond\" must be between 0 (off)"),
    ({"IngestFirstMaxDelaySeconds": 1.5}, "\"OrthancAI.IngestFirstMaxDelaySeconds\" must be a whole number"),
    ({"PredictionProcesses": "many"}, "\"OrthancAI.PredictionProcesses\" must be a whole number or \"auto\""),
    ({"PredictionProcesses": True}, "\"OrthancAI.PredictionProcesses\" must be a whole number or \"auto\""),
    ({"PredictionProcesses": 33}, "\"OrthancAI.PredictionProcesses\" must be between 0 (none) and 32"),
])
def test_bad_values_name_the_key(section, message):
    with pytest.raises(ConfigurationError) as error:
        parse_config({"OrthancAI": section}, Path("."))
    assert message in str(error.value)


def test_orthanc_settings_the_plugin_needs():
    problems = check_orthanc_settings({"OverwriteInstances": False, "UserMetadata": {"AIStatus": 4400}})
    assert any("OverwriteInstances" in p for p in problems)
    assert any("AIProvenance, AISourceFileName, AIClaim, AIRouting" in p for p in problems)
    ok = {"OverwriteInstances": True,
          "UserMetadata": {"AIStatus": 1, "AIProvenance": 2, "AISourceFileName": 3, "AIClaim": 4, "AIRouting": 5}}
    assert check_orthanc_settings(ok) == []


def test_outputs_heatmap_secondary_capture_is_off_by_default_and_one_setting_turns_it_on():
    assert parse_config({}, Path(".")).heatmap_secondary_capture is False
    assert parse_config({"OrthancAI": {"Outputs": {"StructuredReport": False}}}, Path(".")).heatmap_secondary_capture \
        is False
    config = parse_config({"OrthancAI": {"Outputs": {"HeatmapSecondaryCapture": True}}}, Path("."))
    assert config.heatmap_secondary_capture is True and config.structured_report is True


@pytest.mark.parametrize("outputs, message", [
    ({"HeatmapSecondaryCapture": "yes"}, '"OrthancAI.Outputs.HeatmapSecondaryCapture" must be true or false'),
    ({"HeatmapCapture": True}, 'unknown key(s) in "OrthancAI.Outputs": HeatmapCapture; known keys: PrivateTags, '
                               "StructuredReport, HeatmapSecondaryCapture"),
])
def test_bad_outputs_name_the_key(outputs, message):
    with pytest.raises(ConfigurationError) as error:
        parse_config({"OrthancAI": {"Outputs": outputs}}, Path("."))
    assert message in str(error.value)


@pytest.mark.parametrize("section, calls_release_gil, expected", [
    ({}, False, 2),  # "auto" on plugin 4.0: one per worker
    ({"Workers": 3}, False, 3),
    ({}, True, 0),  # "auto" where Orthanc calls release the GIL: the workers predict
    ({"PredictionProcesses": "auto", "Workers": 1}, True, 0),
    ({"PredictionProcesses": 0}, False, 0),
    ({"PredictionProcesses": 4}, True, 4),
])
def test_prediction_processes_auto_starts_them_only_where_the_gil_is_held_in_orthanc_calls(
        section, calls_release_gil, expected):
    config = parse_config({"OrthancAI": section}, Path("."))
    assert prediction_process_count(config, calls_release_gil) == expected
