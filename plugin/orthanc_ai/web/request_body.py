"""The JSON bodies of the plugin's POST routes: one parser, one kind of error (400; 413 above the size limit)."""
from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

# The JSON bodies of the plugin's routes are a few hundred bytes, but an upload's: its file in base64.
SMALL_BODY_BYTES = 64 * 1024


class BadRequest(ValueError):
    """A request the route refuses; the message says what is expected."""


class BodyTooLarge(BadRequest):
    """A body above the route's limit, refused before it is parsed (answered with 413)."""


def check_body_size(body: bytes, limit: int) -> None:
    if len(body) > limit:
        raise BodyTooLarge(f"request body of {len(body)} bytes is larger than this route accepts ({limit} bytes)")


def json_object(body: bytes, accepted: Collection[str], example: str, limit: int = SMALL_BODY_BYTES) -> dict[str, Any]:
    """The body as a JSON object with only ``accepted`` keys; an empty body is ``{}``. A body larger than
    ``limit`` is refused before it is parsed."""
    check_body_size(body, limit)
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
