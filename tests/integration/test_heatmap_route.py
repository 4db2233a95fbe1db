"""GET /ai/instances/{id}/heatmap against a real Orthanc: the stored map as PNG and JSON, another class
computed on demand, and the errors.

The test model's map is exact (tests/support/onnx_models.py): with brightness weights (-4, 0) for "dark"
and (4, 12) for "bright", cell p of "bright" is 4·pooled[p] + 12 and of "dark" -4·pooled[p], so "bright" is
hottest where the image is brightest, "dark" where it is darkest (or padded).
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from tests.support.dicom_files import secondary_capture
from tests.support.heatmap_images import HEAT_CLASSES, HEAT_WEIGHTS, hottest, quarters_ct
from tests.support.onnx_models import build_model
from tests.support.orthanc_process import OrthancProcess

MODEL = "test-heat"
ROWS, COLUMNS = 128, 192  # not square: the model's input is padded, the grid extends past the frame


@pytest.fixture(scope="module")
def heat_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    models = tmp_path_factory.mktemp("heat-models")
    build_model(models, MODEL, HEAT_CLASSES, {"Modality": ["CT"]}, brightness_weights=HEAT_WEIGHTS, heatmap=True)
    build_model(models, "test-plain", ["First", "Second"], {"Modality": ["CT"]}, seed=3)
    server = OrthancProcess(tmp_path_factory.mktemp("orthanc-heat"), models)
    server.start()
    yield server
    assert server.stop() == 0, server.log_tail()


def store_predicted(server: OrthancProcess, dicom: bytes) -> str:
    instance_id = server.store_http(dicom)["ID"]
    server.wait_until(lambda: "AIStatus" in server.get(f"/instances/{instance_id}/metadata"), 60, "prediction")
    return instance_id


@pytest.fixture(scope="module")
def quarters(heat_orthanc: OrthancProcess) -> str:
    return store_predicted(heat_orthanc, quarters_ct(ROWS, COLUMNS, generate_uid(), generate_uid()))


def heatmap(server: OrthancProcess, instance_id: str, query: str) -> tuple[int, bytes]:
    return server.request("GET", f"/ai/instances/{instance_id}/heatmap?{query}")


def png(server: OrthancProcess, instance_id: str, query: str) -> np.ndarray:
    status, body = heatmap(server, instance_id, query)
    assert status == 200, body[:300]
    image = Image.open(io.BytesIO(body))
    assert image.format == "PNG" and image.mode == "RGB"  # opaque
    return np.asarray(image)


def test_png_lies_on_the_frame_and_is_hottest_where_the_image_is_bright(heat_orthanc, quarters):
    request = f"/ai/instances/{quarters}/heatmap?model={MODEL}"
    status, body = heat_orthanc.request("GET", request)
    assert status == 200 and body.startswith(b"\x89PNG")
    rgb = png(heat_orthanc, quarters, f"model={MODEL}&format=png")
    assert rgb.shape == (ROWS, COLUMNS, 3)  # the frame's pixel grid, so the aspect ratio is the frame's
    row, column = hottest(rgb)
    assert row < ROWS / 2 and column >= COLUMNS / 2, (row, column)  # the bright top-right quarter
    # The stored top class is "bright"; asking for it by name is the same answer, from the tags.
    assert np.array_equal(png(heat_orthanc, quarters, f"model={MODEL}&class=bright"), rgb)


def test_json_is_what_the_tags_hold(heat_orthanc, quarters):
    status, body = heatmap(heat_orthanc, quarters, f"model={MODEL}&format=json")
    assert status == 200
    answer = json.loads(body)
    tags = heat_orthanc.get(f"/instances/{quarters}/tags?simplify")
    slot = next(n for n in range(1, 16) if tags.get(f"AIModel{n:02d}Name") == MODEL)
    tag = lambda field: tags[f"AIModel{slot:02d}{field}"]  # noqa: E731
    assert answer["model"] == MODEL and answer["version"] == tag("Version") == "1.0.0"
    assert answer["class"] == tag("TopClass") == "bright"
    assert answer["source"] == "tags"
    assert answer["classes"] == ["dark", "bright"]
    assert (answer["frame"], answer["frameRows"], answer["frameColumns"]) == (1, ROWS, COLUMNS)
    assert (answer["rows"], answer["columns"]) == (int(tag("HeatmapRows")), int(tag("HeatmapColumns"))) == (4, 4)
    # Orthanc's /tags says "TooLong" for the 16 FL values: read the element's bytes (little endian float32).
    element = f"0055-10{slot:X}b"
    stored = np.frombuffer(heat_orthanc.get_bytes(f"/instances/{quarters}/content/{element}"), "<f4")
    assert answer["values"] == stored.tolist()  # float32 values, exactly
    assert answer["region"] == pytest.approx([float(v) for v in tag("HeatmapRegion").split("\\")])
    assert answer["region"] == [0.0, -32.0, 192.0, 160.0]  # padded to 192 × 192, centred
    grid = np.array(answer["values"]).reshape(4, 4)
    assert np.unravel_index(grid.argmax(), grid.shape) in ((1, 2), (1, 3))  # the cells inside the bright quarter
    assert min(answer["values"]) <= answer["min"] < answer["max"] <= max(answer["values"])


def test_another_class_is_computed_on_demand(heat_orthanc, quarters):
    bright = json.loads(heatmap(heat_orthanc, quarters, f"model={MODEL}&format=json")[1])
    status, body = heatmap(heat_orthanc, quarters, f"model={MODEL}&class=dark&format=json")
    assert status == 200
    dark = json.loads(body)
    assert dark["source"] == "computed" and dark["class"] == "dark"
    assert dark["region"] == bright["region"] and (dark["rows"], dark["columns"]) == (4, 4)
    # Weights (-4, 0) and (4, b): the dark map is b minus the bright map.
    bias = HEAT_WEIGHTS[1][1]
    assert dark["values"] == pytest.approx([bias - v for v in bright["values"]], abs=1e-5)
    assert dark["probability"] == pytest.approx(1 - bright["probability"], abs=2e-6)
    row, column = hottest(png(heat_orthanc, quarters, f"model={MODEL}&class=dark"))
    assert row >= ROWS / 2 and column < COLUMNS / 2, (row, column)  # the dark bottom-left quarter
    # The same class by its index in "classes" (what the Explorer sends: names may not survive a query string).
    by_index = json.loads(heatmap(heat_orthanc, quarters, f"model={MODEL}&classIndex=0&format=json")[1])
    assert bright["classes"][0] == "dark" and by_index["values"] == dark["values"]


def test_png_of_a_large_frame_is_at_most_512_pixels_with_its_aspect_ratio(heat_orthanc):
    instance_id = store_predicted(heat_orthanc, quarters_ct(600, 1000, generate_uid(), generate_uid()))
    rgb = png(heat_orthanc, instance_id, f"model={MODEL}")
    assert rgb.shape == (307, 512, 3)  # 600 × 1000 scaled by 0.512
    row, column = hottest(rgb)
    assert row < 307 / 2 and column >= 256


def test_an_instance_the_model_did_not_predict(heat_orthanc):
    grey = np.full((64, 64), 40, dtype=np.uint8)
    grey[:32, :32] = 250  # bright top-left
    instance_id = heat_orthanc.store_http(secondary_capture(grey))["ID"]  # not a CT: no model applies
    status, body = heatmap(heat_orthanc, instance_id, f"model={MODEL}")
    assert status == 404 and json.loads(body)["error"] == f"not predicted by {MODEL}: predict first"
    # A class asked for is computed all the same.
    answer = json.loads(heatmap(heat_orthanc, instance_id, f"model={MODEL}&class=bright&format=json")[1])
    assert answer["source"] == "computed" and answer["region"] == [0.0, 0.0, 64.0, 64.0]
    row, column = hottest(png(heat_orthanc, instance_id, f"model={MODEL}&class=bright"))
    assert row < 32 and column < 32


@pytest.mark.parametrize(("query", "status", "message"), [
    ("", 400, '"model" is required'),
    (f"model={MODEL}&format=gif", 400, '"format" must be png or json'),
    (f"model={MODEL}&class=Malignant", 400, "unknown class 'Malignant' of model test-heat; classes: dark, bright"),
    ("model=no-such-model", 400, "unknown model 'no-such-model'"),
    ("model=test-plain", 409, "model test-plain has no heatmap output"),
    ("model=test-plain&class=First&format=json", 409, "model test-plain has no heatmap output"),
    (f"model={MODEL}&classIndex=2", 400, "classIndex 2 is out of range: model test-heat has 2 class(es) here"),
    (f"model={MODEL}&classIndex=x", 400, '"classIndex" must be a whole number'),
    (f"model={MODEL}&class=dark&classIndex=0", 400, 'give "class" or "classIndex", not both'),
])
def test_errors_are_json_with_a_clear_message(heat_orthanc, quarters, query, status, message):
    answer_status, body = heatmap(heat_orthanc, quarters, query)
    assert answer_status == status, body[:300]
    assert message in json.loads(body)["error"]


def test_unknown_and_malformed_instances_and_wrong_method(heat_orthanc):
    status, body = heatmap(heat_orthanc, "00000000-00000000-00000000-00000000-00000000", f"model={MODEL}")
    assert status == 404 and "error" in json.loads(body)
    status, body = heatmap(heat_orthanc, "not-an-id", f"model={MODEL}")
    assert status == 404 and "not an Orthanc id" in json.loads(body)["error"]
    status, _ = heat_orthanc.request("POST", f"/ai/instances/00000000-00000000-00000000-00000000-00000000/heatmap"
                                     f"?model={MODEL}", b"")
    assert status == 405


def test_the_series_table_says_which_predictions_have_a_heatmap(heat_orthanc, quarters):
    series = heat_orthanc.get(f"/instances/{quarters}")["ParentSeries"]
    [row] = heat_orthanc.get(f"/ai/series/{series}/predictions")["instances"]
    assert {p["model"]: p["heatmap"] for p in row["predictions"]} == {MODEL: True, "test-plain": False}
