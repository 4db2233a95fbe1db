"""The plugin's parts wired together once at start-up (used by the glue and the REST API)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from .config import PluginConfig, prediction_process_count
from .dicom.tagging import stored_results
from .events.ingest_pace import IngestPace
from .events.instance_guards import EchoGuard
from .events.recovery import BacklogRecovery
from .events.work_queue import PredictionQueue
from .models.prediction_processes import start_prediction_processes
from .models.registry import ModelRegistry
from .orthanc.capabilities import OrthancCapabilities
from .orthanc.orthanc_api import OrthancApi
from .outputs.forwarding import Forwarder
from .outputs.heatmap_writer import HeatmapCaptureWriter
from .outputs.labels import StudyLabeler
from .outputs.routing import check_destinations, decide, decide_for_report, parse_routing
from .outputs.series_reports import SeriesReporter
from .pipeline import PredictionPipeline
from .status import PluginStatus

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
    forwarder: Forwarder
    reporter: SeriesReporter
    prediction_process_count: int = 0

    @classmethod
    def create(cls, config: PluginConfig, api: OrthancApi, node: str = "Orthanc",
               sdk_calls_release_gil: bool = False) -> PluginService:
        registry = ModelRegistry.load(config)
        policy = parse_routing(config.routing, list(registry.models))
        status = PluginStatus()
        echoes = EchoGuard()
        capabilities = OrthancCapabilities(api.system, config.claims)
        pipeline = PredictionPipeline(api, registry, config, status, echoes, node, capabilities)
        work_queue = PredictionQueue(
            lambda instance_id: pipeline.process(instance_id, claim=True),
            echoes, status, config.workers, config.queue_capacity, config.worker_niceness,
            IngestPace(config.ingest_first_above_per_second, config.ingest_first_max_delay),
        )
        forwarder = Forwarder(api, policy, pipeline.locks, capabilities)

        def route_again(instance_id: str) -> None:
            results = stored_results(api.instance_file(instance_id), config.private_creator)
            forwarder.route(instance_id, decide(policy, results))

        recovery = BacklogRecovery(
            api, node, work_queue.submit,
            lambda: work_queue.length == 0 and work_queue.in_progress == 0 and forwarder.idle,
            route_again if policy.rules else None,
        )
        reporter = SeriesReporter(api, registry, config.private_creator, echoes,
                                  unwritten_outcome=status.unwritten_outcome)
        if policy.rules:
            pipeline.after_prediction.append(
                lambda outcome: forwarder.route(outcome.instance_id, decide(policy, outcome.results))
            )
            reporter.after_report.append(
                lambda report_id, summary, images: forwarder.route(report_id, decide_for_report(policy, images)))
        # Labels for Orthanc Explorer 2 where Orthanc has them (1.12+; asked at the first prediction).
        labeller = StudyLabeler(api, lambda: capabilities.labels)
        pipeline.after_prediction.append(labeller)
        if config.heatmap_secondary_capture:
            status.heatmap_captures_enabled = True
            captures = HeatmapCaptureWriter(api, registry, echoes, pipeline.fence, status, config.max_frame_pixels)
            pipeline.after_prediction.append(captures)
            if policy.rules:  # a capture goes where its image went, as an SR goes where its images went
                captures.after_write.append(lambda capture_id, outcome: forwarder.route(
                    capture_id, decide_for_report(policy, [outcome.results])))
        reporter.after_report.append(labeller.on_report)
        if not registry.models:
            log.error("No model could be loaded from %s: nothing will be predicted", config.models_directory)
        return cls(config, api, registry, status, pipeline, work_queue, recovery, forwarder, reporter,
                   prediction_process_count(config, sdk_calls_release_gil))

    def start(self) -> None:
        """Orthanc has started: prediction processes, workers, forwarding, then (with automatic prediction)
        the change-log replay."""
        if self.prediction_process_count:
            self.pipeline.processes = start_prediction_processes(self.config, self.prediction_process_count)
        self.queue.start()
        if self.config.structured_report:
            self.reporter.start()
        if self.forwarder.policy.rules:
            modalities, peers = self.api.destinations()
            for problem in check_destinations(self.forwarder.policy, modalities, peers):
                log.error("%s: sends to it will fail", problem)
            self.forwarder.start()
        if self.config.auto_predict:
            self.recovery.start()

    def stop(self) -> None:
        self.recovery.stop()
        self.queue.stop()
        self.reporter.stop()
        self.forwarder.stop()
        if self.pipeline.processes is not None:
            self.pipeline.processes.stop()
