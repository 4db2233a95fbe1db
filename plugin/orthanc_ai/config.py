"""The plugin's configuration: the ``"OrthancAI"`` section of Orthanc's configuration file.

Parsed and validated once at start-up; every key is documented in
the README ("Configuration: the ``"OrthancAI"`` section"). Unknown keys and bad values raise
``ConfigurationError`` with a message that names the key, which the glue
writes to Orthanc's log before refusing to start the plugin.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECTION = "OrthancAI"
DEFAULT_PRIVATE_CREATOR = "ORTHANC AI RESULTS 1"
DEFAULT_MODELS_DIRECTORY = Path(__file__).resolve().parents[2] / "models"

# Instance metadata the plugin keeps (they must be declared in "UserMetadata").
METADATA_STATUS = "AIStatus"
METADATA_PROVENANCE = "AIProvenance"
METADATA_SOURCE_FILE = "AISourceFileName"
METADATA_CLAIM = "AIClaim"
METADATA_ROUTING = "AIRouting"
REQUIRED_USER_METADATA = (METADATA_STATUS, METADATA_PROVENANCE, METADATA_SOURCE_FILE, METADATA_CLAIM, METADATA_ROUTING)
# Orthanc global property (plugins use indexes ≥ 1024) holding the change-log checkpoint of each node.
GLOBAL_PROPERTY_CHECKPOINT = 4410


DELETION_FILTER_CHOICES = ("auto", "always", "never")
CLAIMS_CHOICES = ("auto", "always", "never")


class ConfigurationError(ValueError):
    """A configuration mistake; the message says which key and what is expected."""


@dataclass(frozen=True)
class PluginConfig:
    auto_predict: bool = True
    models_directory: Path = DEFAULT_MODELS_DIRECTORY
    # None: every model found in models_directory.
    enabled_models: tuple[str, ...] | None = None
    # Per model: header rules that replace the model card's "applies_to".
    applies_to: Mapping[str, Mapping[str, list[str | None]]] = field(default_factory=dict)
    workers: int = 2
    # Added niceness of the worker threads, so Orthanc's own ingest wins the CPU and the plugin catches up.
    worker_niceness: int = 10
    # Processes that run the CPU-bound part of predictions off the plugin's GIL (prediction_processes.py);
    # 0: in the worker threads; None ("auto"): prediction_process_count() decides.
    prediction_processes: int | None = None
    inference_threads: int = 1
    private_creator: str = DEFAULT_PRIVATE_CREATOR
    max_frame_pixels: int = 40_000_000
    max_file_megabytes: int = 1024
    queue_capacity: int = 100_000
    # Ingest first (ingest_pace.py): at this many new instances per second or more the workers hold back,
    # each instance at most ingest_first_max_delay seconds. 0 turns it off.
    ingest_first_above_per_second: int = 20
    ingest_first_max_delay: int = 10
    # The "Routing" section as written; validated by routing.parse_routing once models are loaded.
    routing: Mapping[str, Any] = field(default_factory=dict)
    # The HTTP filter that fences REST deletions (deletion_fence.py): "auto" installs it where the Python
    # plugin does not leak memory through HTTP filters (4.1 and later), "always" also on 4.0, "never" nowhere.
    deletion_filter: str = "auto"
    # "Outputs": a DICOM Structured Report per analysed series and model (series_reports.py).
    structured_report: bool = True
    # "Outputs": a heatmap Secondary Capture per predicted image and model with a map (heatmap_writer.py).
    heatmap_secondary_capture: bool = False
    # Claim each instance before predicting it (AIClaim): "auto" where the index is in a database server
    # several nodes can share (capabilities.py), "always", or "never".
    claims: str = "auto"
    # From Orthanc's own configuration: the names of "UserMetadata" and "UserContentType", which an
    # overwrite would drop and the plugin puts back (overwrite_carryover.py).
    user_metadata: frozenset[str] = frozenset()
    user_attachments: frozenset[str] = frozenset()


# key in orthanc.json → (attribute, expected type)
_KEYS: dict[str, tuple[str, type]] = {
    "AutoPredict": ("auto_predict", bool),
    "ModelsDirectory": ("models_directory", str),
    "EnabledModels": ("enabled_models", list),
    "AppliesTo": ("applies_to", dict),
    "Workers": ("workers", int),
    "WorkerNiceness": ("worker_niceness", int),
    "PredictionProcesses": ("prediction_processes", object),  # a whole number or "auto"
    "InferenceThreads": ("inference_threads", int),
    "PrivateCreator": ("private_creator", str),
    "MaxFramePixels": ("max_frame_pixels", int),
    "MaxFileMegabytes": ("max_file_megabytes", int),
    "QueueCapacity": ("queue_capacity", int),
    "IngestFirstAbovePerSecond": ("ingest_first_above_per_second", int),
    "IngestFirstMaxDelaySeconds": ("ingest_first_max_delay", int),
    "Routing": ("routing", dict),
    "DeletionFilter": ("deletion_filter", str),
    "Outputs": ("outputs", dict),
    "Claims": ("claims", str),
    # Read by the entry script before this package is importable.
    "VirtualEnv": ("", str),
}

_TYPE_NAMES = {bool: "true or false", int: "a whole number", str: "a string", list: "a list", dict: "a JSON object"}


def parse_config(orthanc_configuration: Mapping[str, Any], config_directory: Path) -> PluginConfig:
    """Read the ``OrthancAI`` section; relative paths are taken from ``config_directory``."""
    section = orthanc_configuration.get(SECTION, {})
    if not isinstance(section, Mapping):
        raise ConfigurationError(f'"{SECTION}" must be a JSON object')
    unknown = sorted(set(section) - set(_KEYS))
    if unknown:
        raise ConfigurationError(f'unknown key(s) in "{SECTION}": {", ".join(unknown)}; known keys: {", ".join(_KEYS)}')

    values: dict[str, Any] = {}
    for key, (attribute, expected) in _KEYS.items():
        if key not in section or not attribute:
            continue
        value = section[key]
        # JSON has no separate bool type check in Python: True is an int.
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigurationError(f'"{SECTION}.{key}" must be {_TYPE_NAMES[expected]}, not {value!r}')
        values[attribute] = value

    if "models_directory" in values:
        directory = Path(values["models_directory"])
        values["models_directory"] = directory if directory.is_absolute() else (config_directory / directory)
    if "enabled_models" in values:
        names = values["enabled_models"]
        if not all(isinstance(n, str) for n in names):
            raise ConfigurationError(f'"{SECTION}.EnabledModels" must be a list of model names')
        values["enabled_models"] = tuple(names)
    if "prediction_processes" in values:
        values["prediction_processes"] = _parse_count_or_auto("PredictionProcesses", values["prediction_processes"])
    if "outputs" in values:
        values.update(_parse_outputs(values.pop("outputs")))
    values["user_metadata"] = _declared_names(orthanc_configuration, "UserMetadata")
    values["user_attachments"] = _declared_names(orthanc_configuration, "UserContentType")
    config = PluginConfig(**values)
    _check_ranges(config)
    return config


def _parse_count_or_auto(key: str, value: Any) -> int | None:
    if value == "auto":
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigurationError(f'"{SECTION}.{key}" must be a whole number or "auto", not {value!r}')
    return value


def prediction_process_count(config: PluginConfig, sdk_calls_release_gil: bool) -> int:
    """The prediction processes to start: as configured, or for "auto" one per worker where the Python plugin
    keeps the GIL inside every Orthanc call (plugin 4.x, or "AllowThreads" off), and none where the calls
    release it.

    Measured on 2 cores (docs/benchmarks.md, "Prediction processes"): with the GIL held, two processes let
    two workers process 13-16 % more images in a burst; with the calls releasing it, they processed 0-10 %
    fewer, their extra CPU per image (the file sent to them and back) outweighing the GIL they free.
    """
    if config.prediction_processes is not None:
        return config.prediction_processes
    return 0 if sdk_calls_release_gil else config.workers


def _declared_names(orthanc_configuration: Mapping[str, Any], key: str) -> frozenset[str]:
    declared = orthanc_configuration.get(key, {})
    return frozenset(declared) if isinstance(declared, Mapping) else frozenset()


OUTPUT_KEYS = ("PrivateTags", "StructuredReport", "HeatmapSecondaryCapture")


def _parse_outputs(outputs: Mapping[str, Any]) -> dict[str, bool]:
    """``"Outputs": {"PrivateTags": true, "StructuredReport": true, "HeatmapSecondaryCapture": false}``;
    answers the PluginConfig attributes: whether SRs and heatmap Secondary Captures are written."""
    unknown = sorted(set(outputs) - set(OUTPUT_KEYS))
    if unknown:
        raise ConfigurationError(f'unknown key(s) in "{SECTION}.Outputs": {", ".join(unknown)}; '
                                 f'known keys: {", ".join(OUTPUT_KEYS)}')
    for key, value in outputs.items():
        if not isinstance(value, bool):
            raise ConfigurationError(f'"{SECTION}.Outputs.{key}" must be true or false, not {value!r}')
    if outputs.get("PrivateTags", True) is not True:
        raise ConfigurationError(f'"{SECTION}.Outputs.PrivateTags" cannot be false: the private tags are where '
                                 "results are kept, and the Structured Reports are built from them")
    return {"structured_report": bool(outputs.get("StructuredReport", True)),
            "heatmap_secondary_capture": bool(outputs.get("HeatmapSecondaryCapture", False))}


def _check_ranges(config: PluginConfig) -> None:
    if not 1 <= config.workers <= 32:
        raise ConfigurationError(f'"{SECTION}.Workers" must be between 1 and 32, not {config.workers}')
    if config.prediction_processes is not None and not 0 <= config.prediction_processes <= 32:
        raise ConfigurationError(f'"{SECTION}.PredictionProcesses" must be between 0 (none) and 32')
    if not 0 <= config.worker_niceness <= 19:
        raise ConfigurationError(f'"{SECTION}.WorkerNiceness" must be between 0 and 19')
    if not 1 <= config.inference_threads <= 64:
        raise ConfigurationError(f'"{SECTION}.InferenceThreads" must be between 1 and 64')
    if config.max_frame_pixels < 64 * 64:
        raise ConfigurationError(f'"{SECTION}.MaxFramePixels" must be at least 4096')
    if config.max_file_megabytes < 1:
        raise ConfigurationError(f'"{SECTION}.MaxFileMegabytes" must be at least 1')
    if config.deletion_filter not in DELETION_FILTER_CHOICES:
        raise ConfigurationError(f'"{SECTION}.DeletionFilter" must be one of {", ".join(DELETION_FILTER_CHOICES)}')
    if config.claims not in CLAIMS_CHOICES:
        raise ConfigurationError(f'"{SECTION}.Claims" must be one of {", ".join(CLAIMS_CHOICES)}')
    if config.queue_capacity < 1:
        raise ConfigurationError(f'"{SECTION}.QueueCapacity" must be at least 1')
    if not 0 <= config.ingest_first_above_per_second <= 100_000:
        raise ConfigurationError(f'"{SECTION}.IngestFirstAbovePerSecond" must be between 0 (off) and 100000')
    if not 0 <= config.ingest_first_max_delay <= 3600:
        raise ConfigurationError(f'"{SECTION}.IngestFirstMaxDelaySeconds" must be between 0 (off) and 3600')
    creator = config.private_creator
    if not (0 < len(creator) <= 64) or "\\" in creator or not creator.isascii() or not creator.isprintable():
        raise ConfigurationError(
            f'"{SECTION}.PrivateCreator" must be 1–64 printable ASCII characters without backslash (a DICOM LO value)'
        )
    for model, rules in config.applies_to.items():
        if not isinstance(rules, Mapping) or not all(isinstance(v, list) for v in rules.values()):
            raise ConfigurationError(
                f'"{SECTION}.AppliesTo.{model}" must map DICOM keywords to lists of accepted values'
            )


def check_orthanc_settings(orthanc_configuration: Mapping[str, Any]) -> list[str]:
    """Orthanc settings the plugin depends on; returns one message per problem."""
    problems = []
    if orthanc_configuration.get("OverwriteInstances") is not True:
        problems.append(
            '"OverwriteInstances" must be true: results are written by storing the tagged '
            "instance again under the same SOP Instance UID"
        )
    declared = orthanc_configuration.get("UserMetadata", {})
    missing = [name for name in REQUIRED_USER_METADATA if name not in declared]
    if missing:
        problems.append(f'"UserMetadata" must declare {", ".join(missing)} (any free index from 1024 to 65535)')
    return problems
