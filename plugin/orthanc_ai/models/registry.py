"""The models the plugin serves: every enabled model loaded once at start-up.

A model that fails to load is reported (``load_errors``, the log, ``/ai/models``)
and skipped; the plugin keeps serving the others.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..config import PluginConfig
from .inference import LoadedModel, ModelLoadError
from .model_card import CARD_FILE, Applicability, ModelCard, ModelCardError
from ..dicom.private_tags import ModelResult

log = logging.getLogger(__name__)


class UnknownModel(KeyError):
    """A model name that the registry does not serve."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class ModelRegistry:
    models: dict[str, LoadedModel] = field(default_factory=dict)
    applicability: dict[str, Applicability] = field(default_factory=dict)
    load_errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, config: PluginConfig) -> ModelRegistry:
        registry = cls()
        folders = _model_folders(config.models_directory)
        wanted = config.enabled_models if config.enabled_models is not None else tuple(sorted(folders))
        for name in wanted:
            registry._load_one(name, folders.get(name), config)
        for name in config.applies_to:
            if name not in wanted:
                log.warning("AppliesTo names model %r, which is not enabled", name)
        return registry

    def _load_one(self, name: str, folder: Path | None, config: PluginConfig) -> None:
        if folder is None:
            self.load_errors[name] = f"no folder {name}/ with a {CARD_FILE} in {config.models_directory}"
            log.error("Model %s skipped: %s", name, self.load_errors[name])
            return
        try:
            card = ModelCard.load(folder)
            if card.name != name:
                raise ModelCardError(f"{folder / CARD_FILE}: name {card.name!r} differs from its folder {name!r}")
            model = LoadedModel(card, threads=config.inference_threads)
            rules = config.applies_to.get(name)
            self.applicability[name] = Applicability.from_json(rules) if rules is not None else card.applies_to
        except (ModelCardError, ModelLoadError) as error:
            self.load_errors[name] = str(error)
            log.error("Model %s skipped: %s", name, error)
            return
        self.models[name] = model
        log.info("Model %s %s loaded (%s; classes %s; %s)", name, card.version, card.title, ", ".join(card.classes),
                 f"heatmap from output {card.heatmap_output}" if card.heatmap_output else "no heatmap: its card "
                 "declares no map output")

    def get(self, names: Iterable[str]) -> list[LoadedModel]:
        """The named models, in the order given; raises UnknownModel for a name not served."""
        chosen = []
        for name in names:
            if name not in self.models:
                reason = self.load_errors.get(name, "not installed or not enabled")
                raise UnknownModel(f"unknown model {name!r} ({reason}); available: {', '.join(self.models) or 'none'}")
            chosen.append(self.models[name])
        return chosen

    def applicable(
        self, header: Mapping[str, str], results: Mapping[str, ModelResult] | None = None
    ) -> tuple[list[LoadedModel], dict[str, str]]:
        """Models whose rules match the header, and for the others the reason they do not.

        A model routed by another model's result (``routed_by`` in its card) is only
        chosen once ``results`` (ModelResult by model name) are given and route to it.
        """
        matching, reasons = [], {}
        for name, model in self.models.items():
            mismatch = self.applicability[name].mismatch(header)
            routed_by = model.card.routed_by
            if mismatch is None and routed_by is not None:
                mismatch = routed_by.mismatch(results) if results is not None else f"waits for {routed_by.model}"
            if mismatch is None:
                matching.append(model)
            else:
                reasons[name] = mismatch
        return matching, reasons


def _model_folders(directory: Path) -> dict[str, Path]:
    if not directory.is_dir():
        log.error("Models directory %s does not exist", directory)
        return {}
    return {p.name: p for p in sorted(directory.iterdir()) if (p / CARD_FILE).is_file()}
