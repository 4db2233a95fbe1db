"""The plugin's parts wired together once at start-up (used by the glue and the REST API)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from .config import PluginConfig
from .instance_guards import EchoGuard
from .orthanc_api import OrthancApi
from .pipeline import PredictionPipeline
from .registry import ModelRegistry
from .status import PluginStatus
from .work_queue import PredictionQueue

log = logging.getLogger(__name__)


@dataclass
class PluginService:
    config: PluginConfig
    api: OrthancApi
    registry: ModelRegistry
    status: PluginStatus
    pipeline: PredictionPipeline
    queue: PredictionQueue

    @classmethod
    def create(cls, config: PluginConfig, api: OrthancApi) -> "PluginService":
        registry = ModelRegistry.load(config)
        status = PluginStatus()
        echoes = EchoGuard()
        pipeline = PredictionPipeline(api, registry, config, status, echoes)
        work_queue = PredictionQueue(pipeline.process, echoes, status, config.workers, config.queue_capacity)
        if not registry.models:
            log.error("No model could be loaded from %s: nothing will be predicted", config.models_directory)
        return cls(config, api, registry, status, pipeline, work_queue)
