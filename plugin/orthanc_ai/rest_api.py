"""The plugin's REST API under ``/ai``, as plain functions (the glue maps HTTP onto them).

Every handler takes the service and the parsed request and returns
``(HTTP status, JSON-serialisable body)``. Documented in the README.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, Optional

from .config import METADATA_STATUS
from .orthanc_api import ResourceNotFound
from .registry import UnknownModel
from .service import PluginService
from .tagging import stored_results

log = logging.getLogger(__name__)

Response = tuple[int, Any]
PREDICT_KEYS = {"models", "force"}


class BadRequest(ValueError):
    pass


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
            "autoPredict": service.config.auto_predict,
            "workers": service.config.workers,
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
    """Predict every instance of a series or study, one after the other."""
    models, force = _parse_predict_body(body)
    instances = service.api.child_instances(level, resource_id)
    outcomes = []
    for number, instance_id in enumerate(instances, start=1):
        outcomes.append(service.pipeline.process(instance_id, models=models, force=force).to_json())
        if number % 50 == 0:
            log.info("Predict %s %s: %d of %d instances done", level, resource_id, number, len(instances))
    states: dict[str, int] = {}
    for outcome in outcomes:
        states[outcome["state"]] = states.get(outcome["state"], 0) + 1
    return 200, {"resource": resource_id, "level": level, "counts": states, "instances": outcomes}


def instance_predictions(service: PluginService, instance_id: str) -> Response:
    dicom = service.api.instance_file(instance_id)
    metadata = service.api.instance_metadata(instance_id)
    results = stored_results(dicom, service.config.private_creator)
    status: Optional[dict] = None
    if METADATA_STATUS in metadata:
        try:
            status = json.loads(metadata[METADATA_STATUS])
        except ValueError:
            status = {"state": "unknown", "reason": "unreadable AIStatus metadata"}
    return 200, {"instance": instance_id, "status": status, "predictions": [r.to_json() for r in results]}


def _parse_predict_body(body: bytes) -> tuple[Optional[list[str]], bool]:
    if not body or not body.strip():
        return None, True
    try:
        request = json.loads(body)
    except ValueError as error:
        raise BadRequest(f"request body is not JSON: {error}") from error
    if not isinstance(request, dict):
        raise BadRequest('request body must be a JSON object such as {"models": ["lung-ct-3"]}')
    unknown = set(request) - PREDICT_KEYS
    if unknown:
        raise BadRequest(f"unknown key(s) {sorted(unknown)}; accepted: {sorted(PREDICT_KEYS)}")
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
    except BadRequest as error:
        return 400, {"error": str(error)}
    except UnknownModel as error:
        return 400, {"error": str(error)}
    except ResourceNotFound as error:
        return 404, {"error": str(error) or "not found"}
    except Exception as error:
        log.exception("REST handler %s failed", handler.__name__)
        return 500, {"error": f"{error.__class__.__name__}: {error}"}
