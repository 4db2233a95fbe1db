"""The JSON bodies of the plugin's POST routes: one parser, one kind of error (answered with 400)."""
from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any


class BadRequest(ValueError):
    """A request the route refuses; the message says what is expected."""


def json_object(body: bytes, accepted: Collection[str], example: str) -> dict[str, Any]:
    """The body as a JSON object with only ``accepted`` keys; an empty body is ``{}``."""
    if not body or not body.strip():
        return {}
    try:
        request = json.loads(body)
    except ValueError as error:
        raise BadRequest(f"request body is not JSON: {error}") from error
    if not isinstance(request, dict):
        raise BadRequest(f"request body must be a JSON object such as {example}")
    unknown = set(request) - set(accepted)
    if unknown:
        raise BadRequest(f"unknown key(s) {sorted(unknown)}; accepted: {sorted(accepted)}")
    return request
