"""The plugin's parts wired together once at start-up (used by the glue and the REST API)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from .config import PluginConfig
from .instance_guards import EchoGuard
from .orthanc_api import OrthancApi
from .pipeline import PredictionPipeline
from .recovery import BacklogRecovery
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
    recovery: BacklogRecovery

    @classmethod
    def create(cls, config: PluginConfig, api: OrthancApi, node: str = "Orthanc") -> "PluginService":
        registry = ModelRegistry.load(config)
        status = PluginStatus()
        echoes = EchoGuard()
        pipeline = PredictionPipeline(api, registry, config, status, echoes, node)
        work_queue = PredictionQueue(
            lambda instance_id: pipeline.process(instance_id, claim=True),
            echoes, status, config.workers, config.queue_capacity,
        )
        recovery = BacklogRecovery(
            api, node, work_queue.submit, lambda: work_queue.length == 0 and work_queue.in_progress == 0
        )
        if not registry.models:
            log.error("No model could be loaded from %s: nothing will be predicted", config.models_directory)
        return cls(config, api, registry, status, pipeline, work_queue, recovery)

    def start(self) -> None:
        """Orthanc has started: workers, then (with automatic prediction) the change-log replay."""
        self.queue.start()
        if self.config.auto_predict:
            self.recovery.start()

    def stop(self) -> None:
        self.recovery.stop()
        self.queue.stop()
