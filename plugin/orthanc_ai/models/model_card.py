"""The model card (``models/<name>/model.json``): what a model is and which images it applies to.

The card is read by the plugin's registry and written by the training
scripts; ``docs/models.md`` documents every field.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .preprocessing import Preprocessing

MODEL_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
CARD_FILE = "model.json"
ONNX_FILE = "model.onnx"


class ModelCardError(ValueError):
    """A model card that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Applicability:
    """Header rules an image must meet for a model to run on it.

    ``rules`` maps a DICOM keyword (``Modality``, ``PhotometricInterpretation``,
    ``BodyPartExamined``, ``SOPClassUID`` …) to the accepted values, compared
    case-insensitively. ``None`` in a list accepts an image where the attribute
    is absent or empty.
    """

    rules: Mapping[str, tuple[str | None, ...]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, section: Mapping[str, Any]) -> Applicability:
        rules: dict[str, tuple[str | None, ...]] = {}
        for keyword, accepted in section.items():
            if not isinstance(accepted, list) or not all(v is None or isinstance(v, str) for v in accepted):
                raise ModelCardError(f"applies_to.{keyword} must be a list of strings or null")
            rules[keyword] = tuple(None if v is None else v.upper() for v in accepted)
        return cls(rules)

    def mismatch(self, header: Mapping[str, str]) -> str | None:
        """None when the image matches, else a short reason such as 'Modality MR not in [CT]'."""
        for keyword, accepted in self.rules.items():
            value = (header.get(keyword) or "").strip().upper()
            if value == "" and None in accepted:
                continue
            if value not in accepted:
                shown = ", ".join("(absent)" if v is None else v for v in accepted)
                return f"{keyword} {value or '(absent)'} not in [{shown}]"
        return None


@dataclass(frozen=True)
class RoutedBy:
    """Second-stage models run only when a router model's result says so (e.g. chest films only)."""

    model: str
    classes: tuple[str, ...]
    min_probability: float = 0.0

    @classmethod
    def from_json(cls, section: Mapping[str, Any]) -> RoutedBy:
        classes = section.get("classes")
        if not isinstance(section.get("model"), str) or not isinstance(classes, list) or not classes:
            raise ModelCardError('routed_by needs "model" and a non-empty list of "classes"')
        return cls(section["model"], tuple(str(c) for c in classes), float(section.get("min_probability", 0.0)))

    def mismatch(self, results: Mapping[str, Any]) -> str | None:
        """None when the router's result (ModelResult by model name) routes the image here."""
        result = results.get(self.model)
        if result is None:
            return f"no {self.model} result"
        if result.top_class not in self.classes or result.top_probability < self.min_probability:
            return f"{self.model} says {result.top_class} {result.top_probability:.2f}"
        return None


# Local coding scheme (PS3.16 §8: a designator beginning with "99") for classes whose card gives no code.
PROJECT_CODING_SCHEME = "99ORTHANCAI"


@dataclass(frozen=True)
class ClassCode:
    """The coded concept a class stands for in a Structured Report (e.g. SCT 21594007 "Malignant")."""

    scheme: str
    value: str
    meaning: str

    @classmethod
    def from_json(cls, class_name: str, section: Any) -> ClassCode:
        if not isinstance(section, Mapping) or not all(isinstance(section.get(k), str) and section.get(k)
                                                       for k in ("scheme", "value", "meaning")):
            raise ModelCardError(f'class_codes.{class_name} needs "scheme", "value" and "meaning" strings')
        if len(section["meaning"]) > 64:
            raise ModelCardError(f"class_codes.{class_name}.meaning must fit a DICOM LO value (≤ 64 characters)")
        return cls(section["scheme"], section["value"], section["meaning"])

    @classmethod
    def project(cls, class_name: str) -> ClassCode:
        return cls(PROJECT_CODING_SCHEME, class_name, class_name)


@dataclass(frozen=True)
class SuspicionRule:
    """A class that, once it is an image's top class with at least this probability, concludes the series."""

    class_name: str
    min_probability: float


@dataclass(frozen=True)
class SeriesConclusion:
    """How one answer is drawn for a whole series (``series_conclusion`` in the card).

    The first rule in ``suspect`` that some image meets gives the conclusion ("Malignant suspected");
    when none does, the most frequent top class does (a one-image series: that image's class).
    """

    suspect: tuple[SuspicionRule, ...] = ()

    @classmethod
    def from_json(cls, section: Any, classes: tuple[str, ...]) -> SeriesConclusion:
        if not isinstance(section, Mapping) or not isinstance(section.get("suspect", []), list):
            raise ModelCardError('series_conclusion must be {"suspect": [{"class": ..., "min_probability": ...}]}')
        rules = []
        for rule in section.get("suspect", []):
            name = rule.get("class") if isinstance(rule, Mapping) else None
            if name not in classes:
                raise ModelCardError(f"series_conclusion.suspect: {name!r} is not one of the classes")
            threshold = float(rule.get("min_probability", 0.5))
            if not 0.0 <= threshold <= 1.0:
                raise ModelCardError(f"series_conclusion.suspect: min_probability of {name} must be within 0–1")
            rules.append(SuspicionRule(name, threshold))
        return cls(tuple(rules))


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    title: str
    classes: tuple[str, ...]
    dataset: str
    preprocessing: Preprocessing
    applies_to: Applicability
    output_kind: str  # "logits" or "probabilities"
    folder: Path
    raw: Mapping[str, Any]
    routed_by: RoutedBy | None = None
    class_codes: Mapping[str, ClassCode] = field(default_factory=dict)
    series_conclusion: SeriesConclusion = SeriesConclusion()
    # The ONNX output with the class-activation maps (N × classes × h × w), where the card declares one.
    heatmap_output: str | None = None

    def class_code(self, class_name: str) -> ClassCode:
        """The card's code for the class, else the project's own (documented in docs/structured-report.md)."""
        return self.class_codes.get(class_name) or ClassCode.project(class_name)

    @property
    def onnx_path(self) -> Path:
        return self.folder / ONNX_FILE

    @classmethod
    def load(cls, folder: Path) -> ModelCard:
        path = folder / CARD_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ModelCardError(f"{path}: cannot read the model card: {error}") from error
        try:
            return cls.from_json(raw, folder)
        except (KeyError, TypeError, ValueError) as error:
            raise ModelCardError(f"{path}: {error.__class__.__name__}: {error}") from error

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], folder: Path) -> ModelCard:
        name = str(raw["name"])
        if not MODEL_NAME_PATTERN.match(name):
            raise ModelCardError(f"name {name!r} must be lower-case letters, digits, '.', '_' or '-'")
        classes = tuple(str(c) for c in raw["classes"])
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ModelCardError("classes must list at least two distinct names")
        if any("\\" in c or len(c) > 64 for c in classes):
            raise ModelCardError("class names must fit a DICOM LO value (≤ 64 characters, no backslash)")
        output_kind = str(raw.get("output", {}).get("kind", "logits"))
        if output_kind not in ("logits", "probabilities"):
            raise ModelCardError(f"output.kind must be 'logits' or 'probabilities', not {output_kind!r}")
        dataset = raw.get("dataset", {})
        # The tags carry a short name; "name" may be a longer description when "short_name" is given.
        if isinstance(dataset, Mapping):
            dataset_name = str(dataset.get("short_name") or dataset.get("name", ""))
        else:
            dataset_name = str(dataset)
        codes_section = raw.get("class_codes", {})
        if not isinstance(codes_section, Mapping):
            raise ModelCardError("class_codes must be a JSON object: class name → code")
        if set(codes_section) - set(classes):
            raise ModelCardError(f"class_codes names classes the model does not have: "
                                 f"{sorted(set(codes_section) - set(classes))}")
        class_codes = {name: ClassCode.from_json(name, code) for name, code in codes_section.items()}
        heatmap = raw.get("heatmap")
        if heatmap is not None and not (isinstance(heatmap, Mapping) and isinstance(heatmap.get("output"), str)
                                        and heatmap["output"]):
            raise ModelCardError('heatmap must be {"output": "<name of the ONNX output with the class maps>", ...}')
        version = str(raw["version"])
        for label, value in (("version", version), ("dataset.short_name (or name)", dataset_name)):
            if len(value) > 64 or "\\" in value:
                raise ModelCardError(f"{label} must fit a DICOM LO value (≤ 64 characters, no backslash)")
        return cls(
            name=name,
            version=version,
            title=str(raw.get("title", name)),
            classes=classes,
            dataset=dataset_name,
            preprocessing=Preprocessing.from_card(raw),
            applies_to=Applicability.from_json(raw.get("applies_to", {})),
            output_kind=output_kind,
            folder=folder,
            raw=raw,
            routed_by=RoutedBy.from_json(raw["routed_by"]) if raw.get("routed_by") else None,
            class_codes=class_codes,
            series_conclusion=SeriesConclusion.from_json(raw.get("series_conclusion", {}), classes),
            heatmap_output=str(heatmap["output"]) if heatmap is not None else None,
        )

    def summary(self) -> dict[str, Any]:
        """What the REST API and the Explorer show about the model."""
        return {
            "name": self.name,
            "version": self.version,
            "title": self.title,
            "classes": list(self.classes),
            "dataset": self.dataset,
            "appliesTo": {k: [v for v in vals] for k, vals in self.applies_to.rules.items()},
            "intendedUse": self.raw.get("intended_use", ""),
            "heatmap": self.heatmap_output is not None,
            "routedBy": None if self.routed_by is None else {
                "model": self.routed_by.model, "classes": list(self.routed_by.classes),
                "minProbability": self.routed_by.min_probability},
        }
