"""The only module that talks to Orthanc: events in, REST calls out, routes, logging.

Kept thin on purpose: each function here maps one Orthanc mechanism onto a
plain function of the core, which is tested without Orthanc.
"""
from __future__ import annotations

import gc
import json
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import numpy as np
import orthanc

from ..config import (
    GLOBAL_PROPERTY_CHECKPOINT,
    METADATA_CLAIM,
    ConfigurationError,
    check_orthanc_settings,
    parse_config,
)
from ..dicom.private_tags import EXTRA_DICTIONARY_BLOCKS, orthanc_dictionary
from ..events.deletion_fence import ANY_RESOURCE
from ..outputs.routing import Destination
from ..service import PluginService
from ..web import rest_api
from ..web.heatmap_view import BinaryAnswer
from .orthanc_api import MetadataConflict, ResourceNotFound

log = logging.getLogger("orthanc_ai")
# Every callable handed to Orthanc stays referenced here for the life of the process. The Python
# plugin 5.0 and later may drop its own reference only while the interpreter is finalizing; if that
# was the last one, the closure is freed half-way through finalization and Orthanc dies with SIGSEGV
# at every stop (seen with 1.12.7 / 5.0 and 1.13.0 / 7.1; 4.0 does not crash either way).
_CALLBACKS_HANDED_TO_ORTHANC: list[Callable[..., Any]] = []
ORTHANC_ID = r"([0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8})"
_ORTHANC_ID_PATTERN = re.compile(ORTHANC_ID)
# The /ai routes take any path segment as the id and check it themselves, so that a malformed id gets the
# plugin's JSON error like every other mistake, not Orthanc's answer for an unknown route.
RESOURCE = r"([^/]*)"
_service: PluginService | None = None
# The routes' work runs here, not on Orthanc's HTTP threads (_handled). Eight: a long study Predict or upload
# keeps one busy while the Explorer's quick reads go on; more requests wait for a free one.
_REST_THREADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="orthanc-ai-rest")
_PIXEL_FORMATS = {
    orthanc.PixelFormat.GRAYSCALE8: (np.uint8, 1),
    orthanc.PixelFormat.GRAYSCALE16: (np.uint16, 1),
    orthanc.PixelFormat.SIGNED_GRAYSCALE16: (np.int16, 1),
    orthanc.PixelFormat.GRAYSCALE32: (np.uint32, 1),
    orthanc.PixelFormat.RGB24: (np.uint8, 3),
    orthanc.PixelFormat.RGB48: (np.uint16, 3),
}


class OrthancRestApi:
    """``OrthancApi`` through Orthanc's internal REST API (no HTTP, no credentials needed)."""

    def instance_file(self, instance_id: str) -> bytes:
        try:
            return _call(orthanc.RestApiGet, f"/instances/{instance_id}/file")
        except orthanc.OrthancException:
            # Deleted while being read: the index still had the instance, its file was already gone.
            if not self.instance_exists(instance_id):
                raise ResourceNotFound(instance_id) from None
            raise

    def store_instance(self, dicom: bytes) -> dict[str, Any]:
        return json.loads(_call(orthanc.RestApiPost, "/instances", dicom))

    def instance_exists(self, instance_id: str) -> bool:
        try:
            _call(orthanc.RestApiGet, f"/instances/{instance_id}")
            return True
        except ResourceNotFound:
            return False

    def instance_metadata(self, instance_id: str) -> dict[str, str]:
        return self.metadata("instances", instance_id)

    def set_instance_metadata(self, instance_id: str, name: str, value: str) -> None:
        self.set_metadata("instances", instance_id, name, value)

    def claim_instance(self, instance_id: str, node: str) -> str:
        # Read first: with "CheckRevisions", Orthanc logs an error for every refused creation, and a
        # node normally only meets the claims of others when it replays the shared change log.
        holder = self.instance_metadata(instance_id).get(METADATA_CLAIM)
        if holder:
            return holder
        try:
            self.set_instance_metadata(instance_id, METADATA_CLAIM, node)
            return node
        except MetadataConflict:
            return self.instance_metadata(instance_id).get(METADATA_CLAIM, "")

    # --- what an overwrite drops (overwrite_carryover.py) ---------------------------------------------
    def resource(self, level: str, resource_id: str) -> dict[str, Any]:
        return json.loads(_call(orthanc.RestApiGet, f"/{level}/{resource_id}"))

    def metadata(self, level: str, resource_id: str) -> dict[str, str]:
        return json.loads(_call(orthanc.RestApiGet, f"/{level}/{resource_id}/metadata?expand"))

    def set_metadata(self, level: str, resource_id: str, name: str, value: str) -> None:
        _call(orthanc.RestApiPut, f"/{level}/{resource_id}/metadata/{name}", value.encode("utf-8"))

    def attachment_names(self, level: str, resource_id: str) -> list[str]:
        return json.loads(_call(orthanc.RestApiGet, f"/{level}/{resource_id}/attachments"))

    def attachment(self, level: str, resource_id: str, name: str) -> bytes:
        return _call(orthanc.RestApiGet, f"/{level}/{resource_id}/attachments/{name}/data")

    def put_attachment(self, level: str, resource_id: str, name: str, data: bytes) -> None:
        _call(orthanc.RestApiPut, f"/{level}/{resource_id}/attachments/{name}", data)

    def labels(self, level: str, resource_id: str) -> list[str]:
        return json.loads(_call(orthanc.RestApiGet, f"/{level}/{resource_id}/labels"))

    def add_label(self, level: str, resource_id: str, label: str) -> None:
        _call(orthanc.RestApiPut, f"/{level}/{resource_id}/labels/{label}", b"")

    def decode_frame(self, dicom: bytes, frame_index: int) -> np.ndarray:
        image = orthanc.DecodeDicomImage(dicom, frame_index)
        pixel_format = image.GetImagePixelFormat()
        if pixel_format not in _PIXEL_FORMATS:
            raise ValueError(f"Orthanc decoded the frame to unsupported pixel format {pixel_format}")
        dtype, channels = _PIXEL_FORMATS[pixel_format]
        width, height, pitch = image.GetImageWidth(), image.GetImageHeight(), image.GetImagePitch()
        row_items = pitch // np.dtype(dtype).itemsize
        rows = np.frombuffer(image.GetImageBuffer(), dtype=dtype).reshape(height, row_items)
        frame = rows[:, : width * channels]
        return frame.reshape(height, width, channels) if channels > 1 else frame.copy()

    def last_change(self) -> int:
        return int(json.loads(_call(orthanc.RestApiGet, "/changes?last"))["Last"])

    def changes(self, since: int, limit: int) -> dict:
        return json.loads(_call(orthanc.RestApiGet, f"/changes?since={since}&limit={limit}"))

    def get_checkpoint(self) -> str:
        return orthanc.GetGlobalProperty(GLOBAL_PROPERTY_CHECKPOINT, "")

    def set_checkpoint(self, value: str) -> None:
        orthanc.SetGlobalProperty(GLOBAL_PROPERTY_CHECKPOINT, value)

    def series(self, series_id: str) -> dict[str, Any]:
        return json.loads(_call(orthanc.RestApiGet, f"/series/{series_id}"))

    def study_series(self, study_id: str) -> list[str]:
        return [item["ID"] for item in json.loads(_call(orthanc.RestApiGet, f"/studies/{study_id}/series"))]

    def delete_instance(self, instance_id: str) -> None:
        _call(orthanc.RestApiDelete, f"/instances/{instance_id}")

    def child_instances(self, level: str, resource_id: str) -> list[str]:
        answer = json.loads(_call(orthanc.RestApiGet, f"/{level}/{resource_id}/instances"))
        return [item["ID"] for item in answer]

    def create_dicom(self, request: dict[str, Any]) -> dict[str, Any]:
        return json.loads(_call(orthanc.RestApiPost, "/tools/create-dicom", json.dumps(request).encode("utf-8")))

    def system(self) -> dict[str, Any]:
        return json.loads(_call(orthanc.RestApiGet, "/system"))

    def instance_study(self, instance_id: str) -> str:
        return json.loads(_call(orthanc.RestApiGet, f"/instances/{instance_id}/study"))["ID"]

    def add_study_label(self, study_id: str, label: str) -> None:
        self.add_label("studies", study_id, label)

    def start_store_job(self, destination: Destination, instance_id: str) -> str:
        """An asynchronous Orthanc job sending one instance (C-STORE to a modality, or HTTP to a peer)."""
        collection = "modalities" if destination.kind == "modality" else "peers"
        request = json.dumps({"Resources": [instance_id], "Asynchronous": True}).encode("utf-8")
        return json.loads(_call(orthanc.RestApiPost, f"/{collection}/{destination.name}/store", request))["ID"]

    def job_state(self, job_id: str) -> tuple[str, str]:
        job = json.loads(_call(orthanc.RestApiGet, f"/jobs/{job_id}"))
        return str(job.get("State", "")), str(job.get("ErrorDescription", "") or job.get("ErrorDetails", ""))

    def cancel_job(self, job_id: str) -> None:
        _call(orthanc.RestApiPost, f"/jobs/{job_id}/cancel", b"")

    def list_instances(self) -> list[dict[str, Any]]:
        return json.loads(_call(orthanc.RestApiGet, "/instances?expand"))

    def find_labelled_studies(self, labels: list[str]) -> list[str]:
        request = {"Level": "Study", "Query": {}, "Labels": labels, "LabelsConstraint": "Any"}
        return json.loads(_call(orthanc.RestApiPost, "/tools/find", json.dumps(request).encode("utf-8")))

    def study_instances(self, study_id: str) -> list[dict[str, Any]]:
        return json.loads(_call(orthanc.RestApiGet, f"/studies/{study_id}/instances"))

    def list_series(self) -> list[dict[str, Any]]:
        return json.loads(_call(orthanc.RestApiGet, "/series?expand"))

    def destinations(self) -> tuple[list[str], list[str]]:
        """Names of the DICOM modalities and Orthanc peers Orthanc knows."""
        return json.loads(_call(orthanc.RestApiGet, "/modalities")), json.loads(_call(orthanc.RestApiGet, "/peers"))


# A REST call whose transaction the database could not serialize among concurrent ones (several nodes on one
# PostgreSQL index under load) after Orthanc's own retries is rolled back entirely: it is tried again.
SERIALIZATION_RETRIES = 5
SERIALIZATION_PAUSE_SECONDS = 0.1


def _call(function: Callable[..., bytes], uri: str, *body: bytes) -> bytes:
    retries = 0
    while True:
        try:
            return function(uri, *body)
        except orthanc.OrthancException as error:
            if _is_unknown_resource(error):
                raise ResourceNotFound(uri) from error
            if orthanc.ErrorCode.REVISION in error.args:
                raise MetadataConflict(uri) from error
            if orthanc.ErrorCode.DATABASE_CANNOT_SERIALIZE not in error.args or retries == SERIALIZATION_RETRIES:
                raise
            retries += 1
            log.info("%s: the database could not serialize it among concurrent transactions; retry %d of %d",
                     uri, retries, SERIALIZATION_RETRIES)
            time.sleep(SERIALIZATION_PAUSE_SECONDS * retries)


def _is_unknown_resource(error: Exception) -> bool:
    return any(arg == orthanc.ErrorCode.UNKNOWN_RESOURCE for arg in error.args) or "Unknown resource" in str(error)


class OrthancLogHandler(logging.Handler):
    """Python logging → Orthanc's log, so the plugin's messages sit beside Orthanc's own."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = f"OrthancAI: {self.format(record)}"
            if record.levelno >= logging.ERROR:
                orthanc.LogError(message)
            elif record.levelno >= logging.WARNING:
                orthanc.LogWarning(message)
            else:
                orthanc.LogInfo(message)
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


def register() -> None:
    """Called once by the entry script while Orthanc loads the plugin."""
    global _service
    handler = OrthancLogHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

    configuration = json.loads(orthanc.GetConfiguration())
    try:
        config = parse_config(configuration, _configuration_directory())
        problems = check_orthanc_settings(configuration)
        if problems:
            raise ConfigurationError("; ".join(problems))
        # Routing rules are checked against the models that actually loaded.
        _service = PluginService.create(config, OrthancRestApi(), node=str(configuration.get("Name", "Orthanc")),
                                        sdk_calls_release_gil=_sdk_calls_release_gil(configuration))
    except ConfigurationError as error:
        orthanc.LogError(f"OrthancAI: configuration error: {error}")
        raise

    _register_private_dictionary(configuration.get("Dictionary", {}), config.private_creator)
    orthanc.RegisterOnChangeCallback(_keep_alive(_on_change))
    _register_deletion_filter(_service, config.deletion_filter)
    _register_routes()
    orthanc.ExtendOrthancExplorer(_explorer_javascript())
    log.warning(
        "ready: models %s, automatic prediction %s, %d worker(s), %d prediction process(es) when started",
        ", ".join(_service.registry.models) or "none",
        "on" if config.auto_predict else "off",
        config.workers,
        _service.prediction_process_count,
    )


def _sdk_calls_release_gil(configuration: dict[str, Any]) -> bool:
    """Whether other Python threads run while one is inside an Orthanc call: with ``"Python":
    {"AllowThreads": true}`` on plugin 5.0 or later, recognised by GetDatabaseServerIdentifier. (4.3 added
    AllowThreads but has no such mark: there "auto" counts it as holding the GIL.)
    """
    python = configuration.get("Python")
    allowed = isinstance(python, dict) and python.get("AllowThreads") is True
    return allowed and hasattr(orthanc, "GetDatabaseServerIdentifier")


EXPLORER_DIRECTORY = Path(__file__).resolve().parents[1] / "web" / "explorer"


def _explorer_javascript() -> str:
    """explorer/explorer.js, with explorer/explorer.css handed to it as a JSON string."""
    script = (EXPLORER_DIRECTORY / "explorer.js").read_text(encoding="utf-8")
    css = (EXPLORER_DIRECTORY / "explorer.css").read_text(encoding="utf-8")
    return f"var ORTHANC_AI_CSS = {json.dumps(css)};\n{script}"


def _register_private_dictionary(declared: dict[str, Any], creator: str) -> None:
    """Declare our tags to Orthanc (names and VRs instead of UN) for the blocks the configuration lacks."""
    blocks = [0x10, *EXTRA_DICTIONARY_BLOCKS]
    for block in blocks:
        for tag, (vr, name, vm_min, vm_max, _) in orthanc_dictionary(creator, block).items():
            if tag in declared:
                continue
            group, element = (int(part, 16) for part in tag.split(","))
            orthanc.RegisterPrivateDictionaryTag(
                group, element, getattr(orthanc.ValueRepresentation, vr), name, vm_min, vm_max, creator
            )


def _configuration_directory() -> Path:
    path = Path(orthanc.GetConfigurationPath())
    return path if path.is_dir() else path.parent


def _on_change(change_type: int, level: int, resource_id: str) -> None:
    # Called on Orthanc's change thread: queue and return, never call the REST API here.
    service = _service
    if service is None:
        return
    if change_type == orthanc.ChangeType.NEW_INSTANCE:
        service.queue.on_new_instance(resource_id, enqueue=service.config.auto_predict)
    elif change_type == orthanc.ChangeType.DELETED:
        service.pipeline.fence.on_deleted(resource_id)
    elif change_type == orthanc.ChangeType.STABLE_SERIES:
        # Reported once its images have their outcomes; with automatic prediction off, only Predict reports.
        if service.config.structured_report and service.config.auto_predict:
            service.reporter.request(resource_id)
    elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
        service.start()
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        service.stop()
        # Orthanc's HTTP server stops only after this returns: a request that comes meanwhile gets 503.
        _REST_THREADS.shutdown(wait=True, cancel_futures=True)
        _spare_the_final_collection()


def _spare_the_final_collection() -> None:
    """Keep the interpreter's last garbage collection, in Py_Finalize, away from the plugin's objects.

    With Python plugin 7.1 (Python 3.14, Orthanc 1.13.0) that collection dies with SIGSEGV ("Garbage-
    collecting", from OrthancPluginFinalize) once Python code has run certain paths on Orthanc's own HTTP
    threads (reproduced with a ten-line plugin that calls traceback.format_exc() in a REST callback).
    Collected now, then frozen, the heap is left out of that collection; the process exits right after, so
    nothing stays leaked. (Crashes seen after a Structured Report was written were most likely the plugin's
    double free of late changes instead: README, "Stopping Orthanc with Python plugin 7.1".)
    """
    gc.collect()
    gc.freeze()


_RESOURCE_URI = re.compile(rf"^/(?:patients|studies|series|instances)/{ORTHANC_ID}/?$")


def _register_deletion_filter(service: PluginService, setting: str) -> None:
    """Tell the fence of every deletion request before Orthanc runs it (deletion_fence.py).

    Plugin 4.0 leaks what it hands to an HTTP filter, about 0.7 kB per HTTP request (measured, README):
    there "auto" leaves the filter out and the fence relies on Deleted changes. 4.1 fixed the leak and
    added RegisterStorageCommitmentScpCallback, by which it is recognised.
    """
    fence = service.pipeline.fence
    leaks = not hasattr(orthanc, "RegisterStorageCommitmentScpCallback")
    if setting == "never" or (setting == "auto" and leaks):
        log.warning("No deletion filter (DeletionFilter %s%s): an image deleted within milliseconds of its "
                    "store-back can come back (README, \"Deleted images stay deleted\")",
                    setting, ", Python plugin 4.0" if leaks else "")
        return
    if leaks:
        log.warning("Deletion filter on Python plugin 4.0 (DeletionFilter always): it leaks about 0.7 kB "
                    "per HTTP request until Orthanc restarts")

    def on_http_request(uri: str, **request: Any) -> bool:
        try:
            method = request.get("method")
            target = None
            if method in (orthanc.HttpMethod.DELETE, "DELETE"):
                match = _RESOURCE_URI.match(uri)
                target = match.group(1) if match else None
            elif method in (orthanc.HttpMethod.POST, "POST") and uri.rstrip("/") == "/tools/bulk-delete":
                target = ANY_RESOURCE
            if target is not None:
                service.status.record_deletion_request(queued=service.queue.length > 0)
                fence.on_deletion_request(target)
        except Exception:  # a filter that raises would refuse the request: never let that happen
            log.exception("Deletion filter failed on %s", uri)
        return True

    orthanc.RegisterIncomingHttpRequestFilter(_keep_alive(on_http_request))
    fence.filter_installed = True


CallbackT = TypeVar("CallbackT", bound=Callable[..., Any])


def _keep_alive(callback: CallbackT) -> CallbackT:
    """``callback``, referenced by this module until the process ends (see _CALLBACKS_HANDED_TO_ORTHANC)."""
    _CALLBACKS_HANDED_TO_ORTHANC.append(callback)
    return callback


def _register_routes() -> None:
    routes: list[tuple[str, str, Callable[..., rest_api.Response]]] = [
        ("/ai/models", "GET", lambda s, groups, body: rest_api.list_models(s)),
        ("/ai/status", "GET", lambda s, groups, body: rest_api.plugin_status(s)),
        (f"/ai/instances/{RESOURCE}/predict", "POST",
         lambda s, groups, body: rest_api.predict_instance(s, groups[0], body)),
        (f"/ai/instances/{RESOURCE}/predictions", "GET",
         lambda s, groups, body: rest_api.instance_predictions(s, groups[0])),
        (f"/ai/series/{RESOURCE}/predict", "POST",
         lambda s, groups, body: rest_api.predict_children(s, "series", groups[0], body)),
        (f"/ai/studies/{RESOURCE}/predict", "POST",
         lambda s, groups, body: rest_api.predict_children(s, "studies", groups[0], body)),
        # Orthanc Explorer
        (f"/ai/instances/{RESOURCE}/applicable", "GET",
         lambda s, groups, body: rest_api.applicable_models(s, groups[0])),
        (f"/ai/series/{RESOURCE}/report", "POST",
         lambda s, groups, body: rest_api.write_reports(s, "series", groups[0])),
        (f"/ai/studies/{RESOURCE}/report", "POST",
         lambda s, groups, body: rest_api.write_reports(s, "studies", groups[0])),
        (f"/ai/series/{RESOURCE}/summary", "GET",
         lambda s, groups, body: rest_api.series_summary(s, groups[0])),
        (f"/ai/series/{RESOURCE}/predictions", "GET",
         lambda s, groups, body: rest_api.children_predictions(s, "series", groups[0])),
        (f"/ai/studies/{RESOURCE}/predictions", "GET",
         lambda s, groups, body: rest_api.children_predictions(s, "studies", groups[0])),
        ("/ai/upload", "POST", lambda s, groups, body: rest_api.upload_file(s, body)),
    ]
    for pattern, method, handler in routes:
        orthanc.RegisterRestCallback(pattern, _keep_alive(_route(method, handler)))
    # Routes that read the query string (?model=...&limit=...).
    query_routes: list[tuple[str, Callable[..., rest_api.Response]]] = [
        ("/ai/routing", rest_api.routing_log),
        ("/ai/find", rest_api.find_by_result),
    ]
    for pattern, query_handler in query_routes:
        orthanc.RegisterRestCallback(pattern, _keep_alive(_query_route(query_handler)))
    orthanc.RegisterRestCallback(
        f"/ai/instances/{RESOURCE}/route",
        _keep_alive(_route("POST", lambda s, groups, body: rest_api.route_instance(s, groups[0], body))),
    )
    # An instance's heatmap (?model=...&class=...&format=png|json): a PNG or JSON answer.
    orthanc.RegisterRestCallback(
        f"/ai/instances/{RESOURCE}/heatmap",
        _keep_alive(_route("GET", lambda s, groups, query: rest_api.instance_heatmap(s, groups[0], query),
                           query=True)),
    )


def _handled(handler: Callable[..., rest_api.Response], *arguments: Any) -> rest_api.Response:
    """The handler's answer, worked out on one of the plugin's own threads while Orthanc's HTTP thread waits.

    With Python plugin 7.1 (Python 3.14) the interpreter's finalization dies once certain Python code has run
    on Orthanc's HTTP threads (see _spare_the_final_collection). So predictions, reports and every other
    route's work run on Python-created threads, as the workers' do.
    """
    try:
        work = _REST_THREADS.submit(rest_api.guarded, handler, _service, *arguments)
    except RuntimeError:  # shut down at ORTHANC_STOPPED, while Orthanc's HTTP server still takes requests
        return 503, {"error": "Orthanc is stopping"}
    try:
        return work.result()
    except CancelledError:  # queued behind busy threads when the pool was shut down
        return 503, {"error": "Orthanc is stopping"}


def _query_route(handler: Callable[..., rest_api.Response]) -> Callable[..., None]:
    def callback(output: Any, uri: str, **request: Any) -> None:
        if request.get("method") != "GET":
            output.SendMethodNotAllowed("GET")
            return
        _answer(output, *_handled(handler, _query_arguments(request)))

    return callback


def _query_arguments(request: dict[str, Any]) -> dict[str, str]:
    """The GET arguments, percent-decoded: Orthanc 1.10.1 (plugin 4.0) hands them to plugins as they came in
    the URL (``class=bright%20%26%20dark``), so a class name with a space, ``&`` or non-ASCII letters would
    not match. A value Orthanc already decoded stays the same unless it holds a literal ``%`` and two hex
    digits."""
    return {str(key): unquote(str(value)) for key, value in dict(request.get("get") or {}).items()}


def _route(method: str, handler: Callable[..., rest_api.Response], query: bool = False) -> Callable[..., None]:
    """A route on resource ids; the handler gets the body, or with ``query`` the GET arguments."""
    def callback(output: Any, uri: str, **request: Any) -> None:
        if request.get("method") != method:
            output.SendMethodNotAllowed(method)
            return
        groups = request.get("groups", [])
        malformed = [group for group in groups if not _ORTHANC_ID_PATTERN.fullmatch(group)]
        if malformed:
            _answer(output, 404, {"error": f"not an Orthanc id: {malformed[0]!r}"})
            return
        argument = _query_arguments(request) if query else request.get("body") or b""
        _answer(output, *_handled(handler, groups, argument))

    return callback


def _answer(output: Any, status: int, body: Any) -> None:
    if isinstance(body, BinaryAnswer):  # only ever with 200
        output.AnswerBuffer(body.data, body.content_type)
        return
    text = json.dumps(body, indent=2, ensure_ascii=False)
    if status == 200:
        output.AnswerBuffer(text, "application/json")
        return
    output.SetHttpHeader("Content-Type", "application/json")
    try:
        output.SendHttpStatus(status, text, len(text.encode("utf-8")))  # orthanc-python 4.0
    except TypeError:
        output.SendHttpStatus(status, text)  # later plugins: (status, body)

