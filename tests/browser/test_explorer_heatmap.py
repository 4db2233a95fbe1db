"""The heatmap viewer of Orthanc Explorer's instance page, in a real browser: the overlay lies over
Orthanc's rendering of the analysed frame, is hottest where the image is bright, follows the opacity
slider, the toggle and the class choice; the series table links to it; models without a heatmap say so.

The model's map is exact (tests/support/onnx_models.py, brightness weights): "bright" is hottest on the
bright mass of the phantom (top-right quarter), "dark" in the air and padding far from it.
"""
from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from tests.browser.conftest import ExplorerOrthanc, browser_unavailable, start_explorer_orthanc
from tests.support.dicom_files import ct_from_grey, secondary_capture
from tests.support.heatmap_images import HEAT_CLASSES, HEAT_WEIGHTS, heat_from_jet, hottest, phantom_grey
from tests.support.onnx_models import build_model

if reason := browser_unavailable():
    pytest.skip(reason, allow_module_level=True)

MODEL = "test-heat"
PLAIN = "test-plain"  # no heatmap output
MARKUP_MODEL = "test-heat-markup"
MARKUP_CLASS = '<img src=x id="ai-xss-heat" onerror="window.__xss=5">'
ROWS, COLUMNS = 256, 320


@pytest.fixture(scope="module")
def heat_explorer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExplorerOrthanc]:
    models = tmp_path_factory.mktemp("heat-browser-models")
    build_model(models, MODEL, HEAT_CLASSES, {"Modality": ["CT"]}, brightness_weights=HEAT_WEIGHTS, heatmap=True)
    build_model(models, PLAIN, ["First", "Second"], {"Modality": ["CT"]}, seed=3)
    build_model(models, MARKUP_MODEL, [MARKUP_CLASS, "bright & <b>"], {"Modality": ["MR"]},
                brightness_weights=HEAT_WEIGHTS, heatmap=True)
    server = start_explorer_orthanc(tmp_path_factory.mktemp("orthanc-heat-explorer"), models)
    yield server
    assert server.stop() == 0, server.log_tail()


def predict(server: ExplorerOrthanc, instance_id: str, models: list[str]) -> None:
    status, answer = server.post_json(f"/ai/instances/{instance_id}/predict", {"models": models})
    assert status == 200 and answer["state"] == "predicted", answer


def explorer(server: ExplorerOrthanc, fragment: str) -> str:
    return f"{server.url}/app/explorer.html#{fragment}"


def overlay_pixels(page) -> np.ndarray:
    """The overlay <img> as the page shows it: drawn at its displayed size into a canvas (RGB)."""
    data_url = page.evaluate("""() => {
        const img = document.getElementById('ai-heatmap-overlay');
        const canvas = document.createElement('canvas');
        canvas.width = img.clientWidth;
        canvas.height = img.clientHeight;
        canvas.getContext('2d').drawImage(img, 0, 0, canvas.width, canvas.height);
        return canvas.toDataURL('image/png');
    }""")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def stage_screenshot(page) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.locator("#ai-heatmap-stage").screenshot())).convert("RGB"),
                      dtype=np.float64)


def wait_ready(page, cls: str) -> None:
    # A CSS string is quoted and escaped as JSON's is (class names may hold quotes).
    page.wait_for_selector(f"#ai-heatmap-stage[data-ready=true] #ai-heatmap-overlay[data-class={json.dumps(cls)}]")


def test_heatmap_over_the_frame(heat_explorer, watched_page, artifacts):
    page = watched_page.page
    grey, mass = phantom_grey(ROWS, COLUMNS)
    stored = heat_explorer.store_http(ct_from_grey(grey, generate_uid(), generate_uid(), 1))
    instance_id = stored["ID"]
    predict(heat_explorer, instance_id, [MODEL, PLAIN])

    page.goto(explorer(heat_explorer, f"instance?uuid={instance_id}"))
    wait_ready(page, "bright")
    # The model without a heatmap output says so, and is not offered.
    assert page.locator(f'.ai-card[data-model="{PLAIN}"] .ai-no-heatmap').text_content() == "No heatmap for this model."
    assert page.locator("#ai-heatmap-model option").all_text_contents() == [MODEL]
    assert page.locator("#ai-heatmap-class option").all_text_contents() == HEAT_CLASSES
    chosen = page.eval_on_selector("#ai-heatmap-class", "select => select.options[select.selectedIndex].text")
    assert chosen == "bright"  # the top class, from the tags

    # The overlay is stacked exactly over Orthanc's rendering of the analysed frame.
    geometry = page.evaluate("""() => {
        const box = (id) => { const r = document.getElementById(id).getBoundingClientRect();
                              return [r.left, r.top, r.width, r.height]; };
        const base = document.getElementById('ai-heatmap-image');
        return { base: box('ai-heatmap-image'), overlay: box('ai-heatmap-overlay'), src: base.getAttribute('src'),
                 natural: [base.naturalWidth, base.naturalHeight] };
    }""")
    assert geometry["overlay"] == geometry["base"]
    assert geometry["src"] == f"../instances/{instance_id}/frames/0/preview"
    assert geometry["natural"] == [COLUMNS, ROWS]
    left, top, width, height = geometry["base"]
    assert width / height == pytest.approx(COLUMNS / ROWS, rel=0.01)

    # Its hottest part lies on the bright mass (top-right quarter of the image).
    rgb = overlay_pixels(page)
    row, column = hottest(rgb)
    scale = rgb.shape[1] / COLUMNS
    assert row < rgb.shape[0] / 2 and column >= rgb.shape[1] / 2, (row, column)
    assert abs(row / scale - mass[0]) < 0.1 * ROWS and abs(column / scale - mass[1]) < 0.1 * COLUMNS

    # The legend: the jet scale, low and high with the map's range (the JSON route's min and max).
    answer = heat_explorer.get(f"/ai/instances/{instance_id}/heatmap?model={MODEL}&format=json")
    legend = page.locator("#ai-heatmap-legend").text_content()
    assert "low" in legend and "high" in legend
    low, high = (float(page.locator(f"#ai-heatmap-{end}").text_content()) for end in ("min", "max"))
    assert low == pytest.approx(answer["min"], rel=0.01) and high == pytest.approx(answer["max"], rel=0.01)
    assert page.locator(".ai-heatmap-scale").evaluate(
        "e => getComputedStyle(e).backgroundImage").startswith("linear-gradient")
    assert "stored with the result" in page.locator("#ai-heatmap-info").text_content()

    # Opacity: 40 % by default; the slider changes what the page shows.
    overlay = page.locator("#ai-heatmap-overlay")
    assert overlay.evaluate("e => getComputedStyle(e).opacity") == "0.4"
    page.screenshot(path=str(artifacts / "explorer-heatmap-page.png"), full_page=True)
    page.locator("#ai-instance").screenshot(path=str(artifacts / "explorer-heatmap.png"))
    at_40 = stage_screenshot(page)
    page.fill("#ai-heatmap-opacity", "80")
    assert overlay.evaluate("e => getComputedStyle(e).opacity") == "0.8"
    assert page.locator("#ai-heatmap-opacity-value").text_content() == "80 %"
    at_80 = stage_screenshot(page)
    # The toggle hides it: the frame alone.
    page.uncheck("#ai-heatmap-toggle")
    assert overlay.is_hidden()
    alone = stage_screenshot(page)
    change_40, change_80 = (float(np.abs(shot - alone).mean()) for shot in (at_40, at_80))
    assert 5 < change_40 < change_80, (change_40, change_80)
    page.check("#ai-heatmap-toggle")
    assert overlay.is_visible()

    # Another class is computed on demand: the hot region leaves the bright mass.
    page.select_option("#ai-heatmap-class", label="dark")
    wait_ready(page, "dark")
    assert "computed now" in page.locator("#ai-heatmap-info").text_content()
    assert overlay.evaluate("e => getComputedStyle(e).opacity") == "0.8"  # the slider's choice stays
    dark = overlay_pixels(page)
    mass_at = (int(mass[0] * scale), int(mass[1] * scale))
    assert heat_from_jet(rgb)[mass_at] > 0.9 and heat_from_jet(dark)[mass_at] < 0.3
    heat = heat_from_jet(dark)
    rows, columns = np.nonzero(heat >= heat.max() - 0.02)  # the hottest pixels: in the corners (air), all far
    assert np.hypot(rows / scale - mass[0], columns / scale - mass[1]).min() > 0.3 * COLUMNS
    assert watched_page.dialogs == [] and watched_page.errors == []


def test_series_table_links_each_image_to_its_heatmap(heat_explorer, watched_page):
    page = watched_page.page
    grey, _ = phantom_grey(ROWS, COLUMNS)
    study, series_uid = generate_uid(), generate_uid()
    ids = [heat_explorer.store_http(ct_from_grey(np.roll(grey, 40 * n, axis=1), study, series_uid, n + 1))["ID"]
           for n in range(2)]
    for instance_id in ids:
        predict(heat_explorer, instance_id, [MODEL, PLAIN])
    series = heat_explorer.get(f"/instances/{ids[0]}")["ParentSeries"]
    page.goto(explorer(heat_explorer, f"series?uuid={series}"))
    link = page.locator(f'#ai-series tr[data-instance="{ids[1]}"] td[data-model="{MODEL}"] a.ai-heatmap-link')
    link.wait_for()
    assert page.locator(f'#ai-series td[data-model="{PLAIN}"] a.ai-heatmap-link').count() == 0
    assert page.locator("#ai-series a.ai-heatmap-link").count() == 2
    link.click()
    page.wait_for_url(f"**#instance?uuid={ids[1]}&heatmap={MODEL}")
    wait_ready(page, "bright")
    assert page.input_value("#ai-heatmap-model") == MODEL
    assert page.locator("#ai-heatmap").is_visible()
    assert watched_page.dialogs == [] and watched_page.errors == []


def test_class_names_with_markup_are_text(heat_explorer, watched_page):
    page = watched_page.page
    grey, _ = phantom_grey(128, 128)
    instance_id = heat_explorer.store_http(secondary_capture(grey, "MR"))["ID"]
    predict(heat_explorer, instance_id, [MARKUP_MODEL])
    page.goto(explorer(heat_explorer, f"instance?uuid={instance_id}"))
    top = heat_explorer.get(f"/ai/instances/{instance_id}/predictions")["predictions"][0]["topClass"]
    wait_ready(page, top)
    assert page.locator("#ai-heatmap-class option").all_text_contents() == [MARKUP_CLASS, "bright & <b>"]
    other = next(name for name in (MARKUP_CLASS, "bright & <b>") if name != top)
    page.select_option("#ai-heatmap-class", label=other)  # by its index: Orthanc 1.13 would cut the name at "&"
    wait_ready(page, other)
    assert other in page.locator("#ai-heatmap-info").text_content()
    injected = page.evaluate("""() => ({ xss: window.__xss === undefined ? null : window.__xss,
        elements: document.querySelectorAll('#ai-xss-heat, .ai-panel b').length })""")
    assert injected == {"xss": None, "elements": 0}
    assert watched_page.dialogs == [] and watched_page.errors == []

