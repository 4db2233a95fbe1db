"""The plugin's REST API under ``/ai``, as plain functions (the glue maps HTTP onto them).

Every handler takes the service and the parsed request and returns
``(HTTP status, JSON-serialisable body)``. Documented in the README.
"""
from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from typing import Any

import pydicom

from ..config import METADATA_SOURCE_FILE, METADATA_STATUS
from ..dicom.decoding import InstanceSkipped, int_or_none, read_header
from ..dicom.private_tags import read_results
from ..dicom.tagging import stored_results
from ..models.registry import UnknownModel
from ..orthanc.orthanc_api import ResourceNotFound
from ..outputs.labels import label_for
from ..outputs.routing import decide
from ..outputs.series_reports import summary_json, why_not_images
from ..service import PluginService
from . import heatmap_view, upload as uploads
from .request_body import BadRequest, BodyTooLarge, json_object

log = logging.getLogger(__name__)

Response = tuple[int, Any]
PREDICT_KEYS = {"models", "force"}


def instance_heatmap(service: PluginService, instance_id: str, query: dict[str, str]) -> Response:
    """``GET /ai/instances/{id}/heatmap?model=…[&class=…][&format=png|json]`` (heatmap_view.py); a PNG
    answer is a ``heatmap_view.BinaryAnswer``."""
    return heatmap_view.instance_heatmap(service, instance_id, query)


def list_models(service: PluginService) -> Response:
    return 200, {
        "models": [model.card.summary() for model in service.registry.models.values()],
        "failedToLoad": service.registry.load_errors,
    }


def plugin_status(service: PluginService) -> Response:
    body = service.status.snapshot()
    body.update(
        {
            "queueLength": service.queue.length,
            "inProgress": service.queue.in_progress,
            "holdingBackForIngest": service.queue.holding_back,
            "recoveredAtStartup": service.recovery.recovered,
            "routedAgainAtStartup": service.recovery.routed_again,
            "routing": service.forwarder.status(),
            "deletions": {
                "httpFilter": service.pipeline.fence.filter_installed,
                "requestsByStage": body.pop("deletionRequestsByStage"),
                "storeBacksRefused": service.pipeline.fence.refused,
            },
            "structuredReports": {
                "enabled": service.config.structured_report,
                "seriesWaiting": service.reporter.pending,
                "outcomes": dict(service.reporter.counts),
            },
            "autoPredict": service.config.auto_predict,
            "workers": service.config.workers,
            # Running now: 0 where the workers predict themselves ("auto" on plugin 5.0+, or they could not start).
            "predictionProcesses": service.pipeline.processes.count if service.pipeline.processes is not None else 0,
            "models": sorted(service.registry.models),
        }
    )
    return 200, body


def predict_instance(service: PluginService, instance_id: str, body: bytes) -> Response:
    models, force = _parse_predict_body(body)
    outcome = service.pipeline.process(instance_id, models=models, force=force)
    if outcome.state == "gone":
        return 404, {"error": f"unknown instance {instance_id}"}
    return 200, outcome.to_json()


def predict_children(service: PluginService, level: str, resource_id: str, body: bytes) -> Response:
    """Predict every instance of a series or study, one after the other.

    A study's series without images to predict (the plugin's own SRs and heatmaps, anyone's KO, PR, SEG …) are
    left out.
    """
    models, force = _parse_predict_body(body)
    if level == "series":
        instances = service.api.child_instances(level, resource_id)
    else:
        instances = []
        for series_id in service.api.study_series(resource_id):
            series = service.api.series(series_id)
            if why_not_images(series.get("MainDicomTags", {})) is None:
                instances += series["Instances"]
    outcomes = []
    for number, instance_id in enumerate(instances, start=1):
        outcomes.append(service.pipeline.process(instance_id, models=models, force=force).to_json())
        if number % 50 == 0:
            log.info("Predict %s %s: %d of %d instances done", level, resource_id, number, len(instances))
    states: dict[str, int] = {}
    for outcome in outcomes:
        states[outcome["state"]] = states.get(outcome["state"], 0) + 1
    return 200, {"resource": resource_id, "level": level, "counts": states, "instances": outcomes,
                 "reports": _write_reports(service, level, resource_id)}


def write_reports(service: PluginService, level: str, resource_id: str) -> Response:
    """``POST /ai/{series|studies}/{id}/report``: the SRs of what the tags hold now (the Explorer, after
    predicting image by image)."""
    if not service.config.structured_report:
        return 409, {"error": 'Structured Reports are off ("Outputs": {"StructuredReport": false})'}
    return 200, {"resource": resource_id, "level": level, "reports": _write_reports(service, level, resource_id)}


def _write_reports(service: PluginService, level: str, resource_id: str) -> list[dict[str, Any]]:
    if not service.config.structured_report:
        return []
    series_ids = [resource_id] if level == "series" else service.api.study_series(resource_id)
    return [service.reporter.report(series_id).to_json() for series_id in series_ids]


def series_summary(service: PluginService, series_id: str) -> Response:
    """One answer per model for the series, from its images' tags, and the SR that reports it."""
    instances = service.api.child_instances("series", series_id)
    return 200, summary_json(service.reporter, series_id, instances)


def instance_predictions(service: PluginService, instance_id: str) -> Response:
    dicom = service.api.instance_file(instance_id)
    metadata = service.api.instance_metadata(instance_id)
    results = stored_results(dicom, service.config.private_creator)
    status = _status_of(service, instance_id, metadata)
    return 200, {"instance": instance_id, "status": status, "predictions": [r.to_json() for r in results]}


def applicable_models(service: PluginService, instance_id: str) -> Response:
    """Which models apply to the instance (the Explorer pre-selects them), and why the others do not."""
    dicom = service.api.instance_file(instance_id)
    cannot_predict: str | None = None
    applicable: list[str] = []
    not_applicable: dict[str, str] = {}
    try:
        instance = read_header(dicom, service.config.max_frame_pixels)
    except InstanceSkipped as skip:
        cannot_predict = str(skip)
    else:
        # Results already in the tags let models routed by another model's result show as applicable.
        known = {r.model: r for r in read_results(instance.dataset, service.config.private_creator)}
        matching, not_applicable = service.registry.applicable(instance.header, known)
        applicable = [model.card.name for model in matching]
    return 200, {
        "instance": instance_id,
        "cannotPredict": cannot_predict,
        "applicable": applicable,
        "notApplicable": not_applicable,
        "models": [model.card.summary() for model in service.registry.models.values()],
    }


SUMMARY_LIMIT = 500


def children_predictions(service: PluginService, level: str, resource_id: str) -> Response:
    """One row per instance of a series or study: each model's top class and probability, from the tags."""
    instances = service.api.child_instances(level, resource_id)
    rows: list[dict[str, Any]] = []
    for instance_id in instances[:SUMMARY_LIMIT]:
        try:
            dicom = service.api.instance_file(instance_id)
            metadata = service.api.instance_metadata(instance_id)
        except ResourceNotFound:
            continue  # deleted meanwhile
        numbers = _instance_numbers(dicom)
        try:
            results = stored_results(dicom, service.config.private_creator)
        except Exception as error:  # an unreadable file still gets its row
            log.warning("Cannot read results of instance %s: %s", instance_id, error)
            results = []
        rows.append(
            {
                "instance": instance_id,
                "seriesNumber": numbers[0],
                "instanceNumber": numbers[1],
                "status": _status_of(service, instance_id, metadata),
                "predictions": [
                    {
                        "model": r.model, "version": r.version, "topClass": r.top_class,
                        "topProbability": r.top_probability, "dateTime": r.predicted_at.isoformat(timespec="seconds"),
                        "heatmap": r.heatmap is not None,
                    }
                    for r in results
                ],
            }
        )
    rows.sort(key=lambda row: (row["seriesNumber"] is None, row["seriesNumber"] or 0,
                               row["instanceNumber"] is None, row["instanceNumber"] or 0))
    models = sorted({p["model"] for row in rows for p in row["predictions"]})
    return 200, {"level": level, "resource": resource_id, "models": models, "instances": rows,
                 "instanceCount": len(instances), "truncated": len(instances) > SUMMARY_LIMIT}


def upload_file(service: PluginService, body: bytes) -> Response:
    """A file from the Explorer: stored (a PNG/JPEG as a Secondary Capture), its name kept, predicted."""
    max_bytes = service.config.max_file_megabytes * 1024 * 1024
    try:
        upload = uploads.parse_upload(body, max_bytes)
    except uploads.UploadError as error:
        return 400, {"error": str(error), "convertible": error.convertible}

    if upload.kind == "dicom":
        expected = uploads.dicom_instance_id(upload.data)
        store = lambda: service.api.store_instance(upload.data)  # noqa: E731
    else:
        request = uploads.create_dicom_request(upload)
        expected = uploads.created_instance_id(request)
        store = lambda: service.api.create_dicom(request)  # noqa: E731

    # The instance is queued here, once its file name is set, not by its NEW_INSTANCE event.
    if expected:
        service.pipeline.echoes.expect(expected)
    try:
        answer = store()
    except Exception as error:  # Orthanc refused the file (its exception type lives in the glue)
        if expected:
            service.pipeline.echoes.cancel(expected)
        log.warning("Upload of %r refused by Orthanc: %s", upload.file_name, error)
        convertible = upload.kind != "dicom"
        return 400, {"error": f"Orthanc refused the {upload.kind.upper()} file: {error}", "convertible": convertible}
    instance_id: str = answer["ID"]  # Orthanc's answer to a successful store always has it
    if expected and instance_id != expected:
        service.pipeline.echoes.cancel(expected)
        log.warning("Upload of %r stored as %s, not %s as computed: its file name may miss the results",
                    upload.file_name, instance_id, expected)
    if upload.file_name:
        service.api.set_instance_metadata(instance_id, METADATA_SOURCE_FILE, upload.file_name)
    # Queued even with AutoPredict off: uploading from the Explorer is a request to predict.
    queued = service.queue.submit(instance_id)
    return 200, {
        "instance": instance_id,
        "series": answer.get("ParentSeries"),
        "study": answer.get("ParentStudy"),
        "patient": answer.get("ParentPatient"),
        "kind": upload.kind,
        "fileName": upload.file_name,
        "queued": queued,
    }


def _status_of(service: PluginService, instance_id: str, metadata: dict[str, str]) -> dict | None:
    """The last outcome: ``AIStatus`` of a predicted instance, else a skip or failure since start-up."""
    if METADATA_STATUS not in metadata:
        return service.status.unwritten_outcome(instance_id)
    try:
        return json.loads(metadata[METADATA_STATUS])
    except ValueError:
        return {"state": "unknown", "reason": "unreadable AIStatus metadata"}


def _instance_numbers(dicom: bytes) -> tuple[int | None, int | None]:
    try:
        ds = pydicom.dcmread(io.BytesIO(dicom), stop_before_pixels=True, force=True,
                             specific_tags=["SeriesNumber", "InstanceNumber"])
        return int_or_none(ds.get("SeriesNumber")), int_or_none(ds.get("InstanceNumber"))
    except Exception:
        return None, None


def _parse_predict_body(body: bytes) -> tuple[list[str] | None, bool]:
    request = json_object(body, PREDICT_KEYS, '{"models": ["lung-ct-3"]}')
    models = request.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
        raise BadRequest('"models" must be a list of model names')
    if models is not None and not models:
        raise BadRequest('"models" is empty: name at least one model, or leave it out for the applicable ones')
    force = request.get("force", True)
    if not isinstance(force, bool):
        raise BadRequest('"force" must be true or false')
    return models, force


def guarded(handler: Callable[..., Response], *args: Any) -> Response:
    """Run a handler, turning expected errors into 4xx answers and the rest into 500."""
    try:
        return handler(*args)
    except BodyTooLarge as error:
        return 413, {"error": str(error)}
    except BadRequest as error:
        return 400, {"error": str(error)}
    except UnknownModel as error:
        return 400, {"error": str(error)}
    except (ResourceNotFound, heatmap_view.NotPredicted) as error:
        return 404, {"error": str(error) or "not found"}
    except heatmap_view.Conflict as error:
        return 409, {"error": str(error)}
    except Exception as error:
        log.exception("REST handler %s failed", handler.__name__)
        return 500, {"error": f"{error.__class__.__name__}: {error}"}


# --- routing -------------------------------------------------------------------------------
def route_instance(service: PluginService, instance_id: str, body: bytes) -> Response:
    """Apply the routing rules to an instance's stored results now; ``{"resend": true}`` sends again."""
    request = json_object(body, {"resend"}, '{"resend": true}')
    if not isinstance(request.get("resend", False), bool):
        raise BadRequest('"resend" must be true or false')
    results = stored_results(service.api.instance_file(instance_id), service.config.private_creator)
    decisions = decide(service.forwarder.policy, results)
    entries = service.forwarder.route(instance_id, decisions, resend=request.get("resend", False))
    return 200, {"instance": instance_id, "rules": [d.rule.name for d in decisions], "actions": entries}


def routing_log(service: PluginService, query: dict[str, str]) -> Response:
    limit = _query_int(query, "limit", 100, 1, 10_000)
    return 200, {"status": service.forwarder.status(),
                 "entries": service.forwarder.audit(query.get("instance") or None, limit)}


def find_by_result(service: PluginService, query: dict[str, str]) -> Response:
    """Instances, series or studies whose prediction by a model has a class with a minimum probability.

    Answered from each instance's AIStatus metadata, never from the files. On Orthanc ≥ 1.12 only the
    studies labelled with one of the model's classes (``POST /tools/find`` by label) are visited; on
    older ones every instance is, and the answer says how many.
    """
    model = query.get("model")
    if not model:
        raise BadRequest('"model" is required, e.g. /ai/find?model=lung-ct-3&class=Malignant&minProbability=0.9')
    wanted = query.get("class")
    level = query.get("level", "instances")
    if level not in ("instances", "series", "studies"):
        raise BadRequest('"level" must be instances, series or studies')
    try:
        minimum = float(query.get("minProbability", "0"))
    except ValueError as error:
        raise BadRequest('"minProbability" must be a number') from error
    search = query.get("search", "auto")
    if search not in ("auto", "scan"):
        raise BadRequest('"search" must be auto (by label where Orthanc has labels) or scan (every instance)')
    candidates, searched = _find_candidates(service, model, wanted, search == "scan")
    matches = []
    for instance in candidates:
        status = _status_of(service, instance["ID"], service.api.instance_metadata(instance["ID"])) or {}
        top = (status.get("results") or {}).get(model)
        if top and (wanted is None or top[0] == wanted) and top[1] >= minimum:
            matches.append({"instance": instance["ID"], "series": instance["ParentSeries"],
                            "study": instance.get("ParentStudy"), "topClass": top[0], "topProbability": top[1]})
    searched["instances"] = len(candidates)
    if level == "instances":
        found: list[Any] = [{k: v for k, v in m.items() if k != "study"} for m in matches]
    elif level == "series":
        found = sorted({m["series"] for m in matches})
    elif searched["by"] == "labels":
        found = sorted({m["study"] for m in matches})
    else:
        study_of = {s["ID"]: s["ParentStudy"] for s in service.api.list_series()}
        found = sorted({study_of[m["series"]] for m in matches if m["series"] in study_of})
    return 200, {"level": level, "matches": found, "searched": searched}


def _find_candidates(service: PluginService, model: str, wanted: str | None,
                     scan: bool) -> tuple[list[dict], dict]:
    """The instances that can match, and how they were found: by label (Orthanc ≥ 1.12) or by a scan
    (older Orthanc, a model no longer loaded, or asked for: labels are missing from studies predicted
    before the database moved to an Orthanc with labels)."""
    loaded = service.registry.models.get(model)
    if scan or loaded is None or not service.pipeline.capabilities.labels:
        return service.api.list_instances(), {"by": "scan"}
    classes = [wanted] if wanted is not None else list(loaded.card.classes)
    studies = service.api.find_labelled_studies([label_for(model, name) for name in classes])
    instances = [dict(instance, ParentStudy=study) for study in studies
                 for instance in service.api.study_instances(study)]
    return instances, {"by": "labels", "studies": len(studies)}


def _query_int(query: dict[str, str], key: str, default: int, low: int, high: int) -> int:
    try:
        value = int(query.get(key, default))
    except ValueError as error:
        raise BadRequest(f'"{key}" must be a whole number') from error
    return min(max(value, low), high)

