"""``GET /ai/instances/{id}/heatmap``: one model's heatmap of an instance, as a PNG or as JSON.

The top class's map is read from the instance's private tags (no inference); any other class of the
model is computed on demand by running the model again on the analysed frame, decoded as the pipeline
decodes it. The PNG is the map on the analysed frame's pixel grid (clipped to the frame, so it lies
exactly over Orthanc's own rendering of that frame), normalised to its own range and coloured with the
jet scale, opaque; its longest side is at most ``PNG_MAX_SIDE`` pixels, with the frame's aspect ratio.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dicom.decoding import InstanceHeader, InstanceSkipped, decode_analysed_frame, read_header
from ..dicom.private_tags import Heatmap, ModelResult, read_results
from ..outputs.heatmap_rendering import encode_png, jet, normalised, on_frame
from ..service import PluginService
from .request_body import BadRequest

PNG_MAX_SIDE = 512
FORMATS = ("png", "json")


class Conflict(Exception):
    """The request is well formed but cannot be answered for this model or instance (HTTP 409)."""


class NotPredicted(LookupError):
    """The instance holds no heatmap of the model (HTTP 404)."""


@dataclass(frozen=True)
class BinaryAnswer:
    """A non-JSON answer (the glue sends it as it is, with its content type)."""

    data: bytes
    content_type: str


@dataclass(frozen=True)
class HeatmapView:
    model: str
    version: str
    classes: tuple[str, ...]
    source: str  # "tags" | "computed"
    frame: int  # 1-based
    frame_rows: int
    frame_columns: int
    heatmap: Heatmap
    probability: float | None


def instance_heatmap(service: PluginService, instance_id: str, query: dict[str, str]) -> tuple[int, Any]:
    model = query.get("model") or ""
    if not model:
        raise BadRequest('"model" is required, e.g. /ai/instances/{id}/heatmap?model=lung-ct-3&format=png')
    answer_format = query.get("format") or "png"
    if answer_format not in FORMATS:
        raise BadRequest(f'"format" must be png or json, not {answer_format!r}')
    wanted: str | int | None = query.get("class") or None
    if query.get("classIndex"):
        if wanted is not None:
            raise BadRequest('give "class" or "classIndex", not both')
        try:
            wanted = int(query["classIndex"])
        except ValueError:
            raise BadRequest(f'"classIndex" must be a whole number, not {query["classIndex"]!r}') from None
    view = heatmap_view(service, instance_id, model, wanted)
    rendered = rendered_map(view)
    if answer_format == "png":
        return 200, BinaryAnswer(encode_png(jet(normalised(rendered))), "image/png")
    heatmap = view.heatmap
    return 200, {
        "instance": instance_id,
        "model": view.model,
        "version": view.version,
        "class": heatmap.class_name,
        "probability": view.probability,
        "classes": list(view.classes),
        "source": view.source,
        "frame": view.frame,
        "frameRows": view.frame_rows,
        "frameColumns": view.frame_columns,
        "rows": heatmap.rows,
        "columns": heatmap.columns,
        "region": list(heatmap.region),
        "values": list(heatmap.values),
        # The ends of the colour scale: the lowest and highest value of the map over the frame.
        "min": float(rendered.min()),
        "max": float(rendered.max()),
    }


def heatmap_view(service: PluginService, instance_id: str, model: str, wanted: str | int | None) -> HeatmapView:
    """The heatmap of ``model`` for class ``wanted``: a name, an index in the model's classes (as the answer's
    ``classes`` list them), or None for the top class stored in the tags.

    The index exists because a class name can hold characters (``&``, ``=``, ``%``) that some Orthanc versions
    decode before they split the query string: 1.13.0 hands ``class=bright%20%26%20dark`` to plugins as
    ``bright ``.
    """
    dicom = service.api.instance_file(instance_id)  # ResourceNotFound → 404
    try:
        instance = read_header(dicom, service.config.max_frame_pixels)
    except InstanceSkipped as skip:
        raise Conflict(f"this instance cannot be analysed: {skip}") from skip
    stored = next((r for r in read_results(instance.dataset, service.config.private_creator) if r.model == model),
                  None)
    loaded = service.registry.models.get(model)
    if loaded is None and stored is None:
        service.registry.get([model])  # raises UnknownModel (400), naming the models served
    mapper = loaded if loaded is not None and loaded.heatmap_output is not None else None
    from_tags = stored.heatmap if stored is not None else None
    # Every class a loaded model with a heatmap output can map; else only what the tags hold.
    if mapper is not None:
        classes = tuple(mapper.card.classes)
    elif from_tags is not None:
        classes = (from_tags.class_name,)
    else:
        raise Conflict(f"model {model} has no heatmap output")
    if isinstance(wanted, int):
        if not 0 <= wanted < len(classes):
            raise BadRequest(f"classIndex {wanted} is out of range: model {model} has {len(classes)} class(es) here")
        wanted = classes[wanted]
    if wanted is not None and wanted not in classes:
        raise BadRequest(f"unknown class {wanted!r} of model {model}; classes: {', '.join(classes)}")

    if from_tags is not None and stored is not None and wanted in (None, from_tags.class_name):
        return HeatmapView(model, stored.version, classes, "tags", stored.frame, instance.rows, instance.columns,
                           from_tags, _probability(stored, from_tags.class_name))
    if wanted is None:
        if stored is None:
            raise NotPredicted(f"not predicted by {model}: predict first")
        raise NotPredicted(f"the result of {model} in this instance has no heatmap (predicted by version "
                           f"{stored.version or '?'}): predict again")
    assert mapper is not None  # else the only class is the one the tags hold
    frame = decode_analysed_frame(instance, fallback=lambda index: service.api.decode_frame(dicom, index))
    probabilities, maps = mapper.class_activation_maps(frame, instance.pixels)
    if maps is None:  # pragma: no cover - a model with a heatmap output always returns maps
        raise Conflict(f"model {model} has no heatmap output")
    index = mapper.card.classes.index(wanted)
    heatmap = mapper.heatmap(maps, index, frame.shape[0], frame.shape[1])
    return HeatmapView(model, mapper.card.version, classes, "computed", _frame_number(instance),
                       instance.rows, instance.columns, heatmap, float(probabilities[index]))


def rendered_map(view: HeatmapView) -> np.ndarray:
    """The map on the frame's pixel grid, at most ``PNG_MAX_SIDE`` pixels on its longest side."""
    rows, columns = view.frame_rows, view.frame_columns
    scale = min(1.0, PNG_MAX_SIDE / max(rows, columns))
    out_rows, out_columns = max(1, round(rows * scale)), max(1, round(columns * scale))
    heatmap = view.heatmap
    if (out_rows, out_columns) != (rows, columns):
        # The same resampling on a coarser pixel grid: the region in the output's pixels.
        along_columns, along_rows = out_columns / columns, out_rows / rows
        left, top, right, bottom = heatmap.region
        heatmap = dataclasses.replace(heatmap, region=(left * along_columns, top * along_rows,
                                                       right * along_columns, bottom * along_rows))
    return on_frame(heatmap, out_rows, out_columns)


def _probability(result: ModelResult, class_name: str) -> float | None:
    return result.probabilities[result.classes.index(class_name)] if class_name in result.classes else None


def _frame_number(instance: InstanceHeader) -> int:
    return instance.analysed_frame_index + 1
