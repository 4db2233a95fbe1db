"""One instance through the whole path: read → decode → preprocess → infer → tag → store back.

The tagged file replaces the original under the same SOP Instance UID (and so
the same Orthanc id) by a plain POST /instances with Orthanc's
``OverwriteInstances`` on: the original is only replaced once the tagged copy is
stored, never deleted first. An overwrite resets Orthanc's metadata of the
instance, so the pipeline keeps where the image came from (``AIProvenance``)
and puts back any user metadata.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from .config import METADATA_PROVENANCE, METADATA_SOURCE_FILE, METADATA_STATUS, PluginConfig
from .dicom.decoding import InstanceSkipped, NeedsOrthancDecoding, is_extension_panic
from .dicom.private_tags import ModelResult
from .events.deletion_fence import PENDING_SECONDS, DeletedMeanwhile, DeletionFence
from .events.instance_guards import EchoGuard, InstanceLocks
from .models.file_prediction import FilePrediction, FileRequest, predict_file
from .models.inference import LoadedModel
from .models.prediction_processes import PredictionProcesses
from .models.registry import ModelRegistry
from .orthanc.capabilities import OrthancCapabilities
from .orthanc.orthanc_api import MetadataConflict, OrthancApi, ResourceNotFound
from .orthanc.orthanc_ids import OrthancIds
from .orthanc.overwrite_carryover import Carryover, CarryoverSettings, read_carryover
from .status import Outcome, PluginStatus

log = logging.getLogger(__name__)

# Orthanc's own metadata that tell where an instance came from.
PROVENANCE_KEYS = ("Origin", "RemoteAET", "RemoteIP", "CalledAET", "HttpUsername", "ReceptionDate", "TransferSyntax")
# An instance whose store-back a deletion refused is tried again from the start (read, predict,
# store) after this pause: by then the deletion has usually run, and the read finds it gone.
RETRY_AFTER_DELETION_SECONDS = 0.25


class PredictionPipeline:
    def __init__(
        self,
        api: OrthancApi,
        registry: ModelRegistry,
        config: PluginConfig,
        status: PluginStatus,
        echoes: EchoGuard,
        node: str = "Orthanc",
        capabilities: OrthancCapabilities | None = None,
        processes: PredictionProcesses | None = None,
    ) -> None:
        self.api = api
        # Where the CPU-bound part of each prediction runs; None: in the calling thread.
        self.processes = processes
        self.node = node
        # Without one (unit tests): an Orthanc with a SQLite index and no labels.
        self.capabilities = capabilities or OrthancCapabilities(dict, config.claims)
        self.registry = registry
        self.config = config
        self.status = status
        self.echoes = echoes
        self.locks = InstanceLocks()
        self.fence = DeletionFence()
        # Called after each successful prediction, once the tags are stored: the router
        # (forwarding the tagged instance) and the study labels of Orthanc ≥ 1.12. What a hook returns is ignored.
        self.after_prediction: list[Callable[[Outcome], object]] = []

    def process(
        self, instance_id: str, models: Sequence[str] | None = None, force: bool = False, claim: bool = False
    ) -> Outcome:
        """Predict one instance and store its results; never raises for a bad instance.

        ``models`` None runs the models whose applicability matches; a list runs
        exactly those (raises ``registry.UnknownModel`` before any work).
        ``force`` re-runs models whose current version already left results.
        ``claim`` (automatic prediction) first claims the instance for this node
        where several nodes can share the database, so they never both predict it.
        """
        chosen = self.registry.get(models) if models is not None else None
        started = time.monotonic()
        with self.locks.hold(instance_id):
            self.status.set_stage(instance_id, "reading")
            try:
                claimed = claim and self.capabilities.claims
                holder = self.api.claim_instance(instance_id, self.node) if claimed else self.node
                if holder != self.node:
                    outcome = Outcome(instance_id, "elsewhere", reason=f"claimed by node {holder}")
                else:
                    outcome = self._predict_unless_deleted(instance_id, chosen, force)
            except InstanceSkipped as skip:
                outcome = Outcome(instance_id, "skipped", reason=str(skip))
            except ResourceNotFound:
                outcome = Outcome(instance_id, "gone", reason="instance no longer exists")
            except BaseException as error:  # a plugin bug must never take Orthanc, or a worker, down
                if not isinstance(error, Exception) and not is_extension_panic(error):
                    raise  # SystemExit, KeyboardInterrupt
                log.exception("Prediction of instance %s failed", instance_id)
                outcome = Outcome(instance_id, "failed", reason=f"{error.__class__.__name__}: {error}")
            outcome.seconds = time.monotonic() - started
            self._record(outcome)
            self.status.set_stage(instance_id, None)
        return outcome

    def _predict_unless_deleted(self, instance_id: str, chosen: list[LoadedModel] | None, force: bool) -> Outcome:
        """``_predict``, started again while a deletion keeps refusing its store-back (see deletion_fence)."""
        deadline = time.monotonic() + PENDING_SECONDS + 5
        while True:
            try:
                return self._predict(instance_id, chosen, force, self.fence.ticket())
            except DeletedMeanwhile as deletion:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"deletions kept refusing the store-back: {deletion}") from None
                log.info("Instance %s not stored back: %s; reading it again", instance_id, deletion)
                self.status.set_stage(instance_id, "waiting for a deletion")
                time.sleep(RETRY_AFTER_DELETION_SECONDS)

    def _predict(self, instance_id: str, chosen: list[LoadedModel] | None, force: bool, ticket: float) -> Outcome:
        self.status.set_stage(instance_id, "reading")
        original = self.api.instance_file(instance_id)
        if len(original) > self.config.max_file_megabytes * 1024 * 1024:
            raise InstanceSkipped(f"file too large: {len(original)} bytes exceeds MaxFileMegabytes")
        metadata = self.api.instance_metadata(instance_id)
        provenance = self._provenance(metadata, len(original))
        request = FileRequest(
            models=tuple(m.card.name for m in chosen) if chosen is not None else None,
            force=force,
            private_creator=self.config.private_creator,
            max_frame_pixels=self.config.max_frame_pixels,
            source_file_name=metadata.get(METADATA_SOURCE_FILE) or None,
            source_file_size=provenance.get("ReceivedSize"),
        )
        self.status.set_stage(instance_id, "predicting")
        prediction = self._predict_file(original, request)
        if prediction.tagged is None:
            return Outcome(instance_id, "unchanged", results=prediction.existing)
        ids = _ids_of(prediction, instance_id)
        carryover = read_carryover(self.api, instance_id, ids, metadata, self._carryover_settings())
        self.status.set_stage(instance_id, "storing")
        self._store_back(instance_id, prediction.tagged, carryover, provenance, ticket, ids)
        replaced = {r.model for r in prediction.results}
        return Outcome(instance_id, "predicted",
                       results=[r for r in prediction.existing if r.model not in replaced] + prediction.results,
                       replaced=[r for r in prediction.existing if r.model in replaced],
                       study_id=ids.study if ids is not None else None)

    def _predict_file(self, original: bytes, request: FileRequest) -> FilePrediction:
        """In a prediction process where there are some, else (or where Orthanc must decode) in this thread."""
        if self.processes is not None:
            try:
                return self.processes.predict(original, request)
            except NeedsOrthancDecoding:
                pass
        return predict_file(original, request, self.registry,
                            decode_fallback=lambda index: self.api.decode_frame(original, index))

    @staticmethod
    def _provenance(metadata: dict[str, str], size: int) -> dict:
        """Where the image came from, as first received (kept across our re-stores)."""
        if METADATA_PROVENANCE in metadata:
            try:
                return json.loads(metadata[METADATA_PROVENANCE])
            except ValueError:
                log.warning("Unreadable %s metadata replaced", METADATA_PROVENANCE)
        provenance: dict = {key: metadata[key] for key in PROVENANCE_KEYS if key in metadata}
        provenance["ReceivedSize"] = size
        return provenance

    def _carryover_settings(self) -> CarryoverSettings:
        return CarryoverSettings(self.config.user_metadata, self.config.user_attachments,
                                 self.capabilities.labels)

    def _store_back(self, instance_id: str, tagged: bytes, carryover: Carryover, provenance: dict,
                    ticket: float, ids: OrthancIds | None) -> None:
        """Replace the stored file by the tagged copy, unless the instance was deleted since ``ticket``."""
        with self.fence.store_back(ticket, ids, instance_id):
            # Deleted changes arrive late; the index knows now. The fence covers the rest (its docstring).
            if not self.api.instance_exists(instance_id):
                raise ResourceNotFound(instance_id)
            self.echoes.expect(instance_id)
            try:
                answer = self.api.store_instance(tagged)
            except Exception:
                self.echoes.cancel(instance_id)
                raise
            if answer.get("Status") == "AlreadyStored":  # nothing overwritten: raised inside the fence
                self.echoes.cancel(instance_id)
                raise RuntimeError("Orthanc kept the untagged instance: set \"OverwriteInstances\": true")
        self.status.set_stage(instance_id, "recording")
        if answer.get("ID") != instance_id:
            # Same bytes but for our block, so same UIDs: this would be an Orthanc bug.
            raise RuntimeError(f"tagged instance was stored as {answer.get('ID')}, not {instance_id}")
        carryover.restore(self.api)
        self.api.set_instance_metadata(instance_id, METADATA_PROVENANCE, json.dumps(provenance, sort_keys=True))

    def _record(self, outcome: Outcome) -> None:
        self.status.record(outcome)
        if outcome.state == "predicted":
            log.info("Instance %s: %s", outcome.instance_id, _summary(outcome.results))
            for hook in self.after_prediction:
                try:
                    hook(outcome)
                except Exception:  # the tags are written; a hook must not turn that into a failure
                    log.exception("After-prediction hook failed for instance %s", outcome.instance_id)
        elif outcome.state in ("skipped", "failed"):
            log.warning("Instance %s %s: %s", outcome.instance_id, outcome.state, outcome.reason)
        if outcome.state not in ("predicted", "unchanged"):
            # Skipped, failed, gone or another node's: Orthanc is left exactly as it was (no metadata, no
            # change in /changes). The outcome is counted and remembered in memory (status.py).
            return
        try:
            if outcome.state == "unchanged" and METADATA_STATUS in self.api.instance_metadata(outcome.instance_id):
                return  # already recorded: only an instance tagged right before a crash lacks its status
            self.api.set_instance_metadata(outcome.instance_id, METADATA_STATUS, json.dumps(_status_record(outcome)))
        except MetadataConflict:
            # Another node recorded it between our read and our write ("CheckRevisions" on): theirs stands.
            log.debug("Status of instance %s already recorded", outcome.instance_id)
        except Exception as error:  # the instance may have been deleted meanwhile
            log.warning("Cannot record the status of instance %s: %s", outcome.instance_id, error)


def _status_record(outcome: Outcome) -> dict:
    """The ``AIStatus`` metadata of a predicted instance (freshly created: the store-back reset its metadata)."""
    return {
        "state": "predicted",
        "reason": outcome.reason,
        "models": {r.model: r.version for r in outcome.results},
        # Top class per model, so /ai/find answers from metadata without reading files.
        "results": {r.model: [r.top_class, round(r.top_probability, 6)] for r in outcome.results},
        "at": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _ids_of(prediction: FilePrediction, instance_id: str) -> OrthancIds | None:
    """Orthanc's ids of the instance and its parents, or None where Orthanc derived its id otherwise."""
    if prediction.ids.instance != instance_id:
        log.debug("Instance %s: ids derived from its file differ (%s); any deletion fences it", instance_id,
                  prediction.ids)
        return None
    return prediction.ids


def _summary(results: list[ModelResult]) -> str:
    return ", ".join(f"{r.model} → {r.top_class} {r.top_probability:.2f}" for r in results)
