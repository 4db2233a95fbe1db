"""Heatmaps without Orthanc: the model's map output, its place on the frame, its private elements, its PNG."""
from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import ImplicitVRLittleEndian

from orthanc_ai.dicom.private_tags import Heatmap, ModelResult, read_results, write_results
from orthanc_ai.models.inference import LoadedModel, ModelLoadError
from orthanc_ai.models.model_card import ModelCard
from orthanc_ai.models.preprocessing import InputTensors, PixelAttributes, Preprocessing, input_region
from orthanc_ai.outputs import heatmap_rendering
from tests.support.dicom_files import read, synthetic_ct
from tests.support.onnx_models import build_model

CREATOR = "ORTHANC AI RESULTS 1"
BRIGHTNESS = [(-4.0, 0.0), (4.0, 0.0)]  # "dark" and "bright": the bright class's map is hot where the image is


def bright_corner_frame(rows: int = 300, columns: int = 200) -> np.ndarray:
    """A dark frame with a bright block near its top right corner."""
    frame = np.zeros((rows, columns), dtype=np.uint16)
    frame[20:70, columns - 60:columns - 10] = 255
    return frame


@pytest.fixture(scope="module")
def heatmap_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    folder = build_model(tmp_path_factory.mktemp("models"), "mapper", ["dark", "bright"], {},
                         brightness_weights=BRIGHTNESS, heatmap=True)
    return LoadedModel(ModelCard.load(folder))


def test_each_class_map_averages_to_its_logit(heatmap_model: LoadedModel):
    probabilities, maps = heatmap_model.class_activation_maps(bright_corner_frame(), PixelAttributes())
    assert maps is not None and maps.shape == (2, 4, 4)
    logits = maps.mean(axis=(1, 2))
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(softmax, probabilities, atol=1e-6)


def test_the_result_carries_the_top_class_map_placed_on_the_frame(heatmap_model: LoadedModel):
    result = heatmap_model.predict(InputTensors(bright_corner_frame(), PixelAttributes()))
    assert result.top_class == "dark" and result.heatmap is not None
    assert (result.heatmap.class_name, result.heatmap.rows, result.heatmap.columns) == ("dark", 4, 4)
    # 300 rows × 200 columns padded to a 300 square: the grid starts 50 pixels left of the frame.
    assert result.heatmap.region == (-50.0, 0.0, 250.0, 300.0)
    _, maps = heatmap_model.class_activation_maps(bright_corner_frame(), PixelAttributes())
    assert maps is not None
    bright = heatmap_model.heatmap(maps, 1, 300, 200)
    on_frame = heatmap_rendering.on_frame(bright, 300, 200)
    row, column = np.unravel_index(int(on_frame.argmax()), on_frame.shape)
    assert row < 150 and column >= 100, "the bright class is hottest in the frame's top right quarter"


def test_a_card_without_heatmap_gives_results_without_one(tmp_path: Path):
    model = LoadedModel(ModelCard.load(build_model(tmp_path, "plain", ["a", "b"], {})))
    assert model.predict(InputTensors(bright_corner_frame(), PixelAttributes())).heatmap is None
    assert model.card.summary()["heatmap"] is False


def test_a_card_naming_an_output_the_graph_lacks_is_refused(tmp_path: Path):
    folder = build_model(tmp_path, "liar", ["a", "b"], {})
    card = json.loads((folder / "model.json").read_text())
    card["heatmap"] = {"output": "class_activation_maps"}
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="heatmap output 'class_activation_maps' is not an output"):
        LoadedModel(ModelCard.load(folder))


@pytest.mark.parametrize(("rows", "columns", "resize", "expected"), [
    (512, 512, "pad", (0, 0, 512, 512)),
    (300, 200, "pad", (-50, 0, 250, 300)),
    (200, 301, "pad", (0, -50, 301, 251)),
    (300, 200, "stretch", (0, 0, 200, 300)),
    # A 2,049-pixel square is box-reduced by 3 for a 160-pixel input: its last 2 rows and columns are unused.
    (2049, 2049, "pad", (0, 0, 2049 // 3 * 3, 2049 // 3 * 3)),
])
def test_input_region_inverts_the_preprocessing_geometry(rows, columns, resize, expected):
    assert input_region(rows, columns, Preprocessing(resize=resize, height=160, width=160)) == expected


def heatmap(values=(0.0, 1.0, 2.0, 3.0, 4.0, 5.0), rows=2, columns=3) -> Heatmap:
    return Heatmap("Malignant", rows, columns, values, (-50.0, 0.0, 250.0, 300.0))


def result(**extra) -> ModelResult:
    return ModelResult("lung", "1.0.0", "IQ-OTH/NCCD", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                       ("Benign", "Malignant", "Normal"), (0.2, 0.7, 0.1), **extra)


def saved(dataset: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=False)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("implicit", [False, True])
def test_heatmap_elements_round_trip_with_their_vrs(implicit: bool):
    dataset = read(synthetic_ct())
    if implicit:
        dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    written = result(heatmap=heatmap((0.5, -1.25, 3.0, 2.0, 0.0, 1e-3)))
    write_results(dataset, CREATOR, "sw", [written])
    dataset = saved(dataset)
    if not implicit:
        assert dataset[0x0055101B].VR == "FL" and dataset[0x0055101C].VR == "US" and dataset[0x0055101E].VR == "FL"
    assert [float(v) for v in dataset[0x0055101E].value] == [-50.0, 0.0, 250.0, 300.0]
    [back] = read_results(dataset, CREATOR)
    assert back.heatmap is not None
    assert back.heatmap.values == tuple(float(np.float32(v)) for v in written.heatmap.values)  # type: ignore[union-attr]
    assert (back.heatmap.class_name, back.heatmap.rows, back.heatmap.columns) == ("Malignant", 2, 3)


def test_re_prediction_without_a_map_leaves_no_stale_heatmap():
    dataset = read(synthetic_ct())
    write_results(dataset, CREATOR, "sw", [result(heatmap=heatmap())])
    write_results(dataset, CREATOR, "sw", [result()])
    assert 0x0055101B not in dataset and read_results(dataset, CREATOR)[0].heatmap is None


def test_a_heatmap_whose_parts_disagree_is_ignored_not_the_result():
    dataset = read(synthetic_ct())
    write_results(dataset, CREATOR, "sw", [result(heatmap=heatmap())])
    dataset[0x0055101C].value = 5  # 5 rows × 3 columns ≠ 6 values
    [back] = read_results(saved(dataset), CREATOR)
    assert back.top_class == "Malignant" and back.heatmap is None


def test_png_is_the_map_coloured_on_the_frame():
    hot_top_right = Heatmap("bright", 2, 2, (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 40.0, 30.0))
    unit = heatmap_rendering.normalised(heatmap_rendering.on_frame(hot_top_right, 30, 40))
    image = Image.open(io.BytesIO(heatmap_rendering.encode_png(heatmap_rendering.jet(unit))))
    assert image.size == (40, 30) and image.mode == "RGB"
    pixels = np.asarray(image)
    assert tuple(pixels[0, -1]) == (128, 0, 0) and tuple(pixels[-1, 0]) == (0, 0, 128)  # jet's dark red and blue
    assert (pixels == heatmap_rendering.jet(unit)).all()
    row, column = np.unravel_index(int(unit.argmax()), unit.shape)
    assert row < 8 and column >= 30, "the hottest pixels are in the top right corner, where the hot cell is"


def test_blend_keeps_the_image_under_the_colour():
    grey = np.full((2, 2), 0.5)
    mixed = heatmap_rendering.blend(grey, np.zeros((2, 2)), opacity=0.0)
    assert (mixed == 128).all()
    assert (heatmap_rendering.blend(grey, np.ones((2, 2)), opacity=1.0) == heatmap_rendering.jet(np.ones((2, 2)))).all()
