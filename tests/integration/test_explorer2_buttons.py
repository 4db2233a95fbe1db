"""The Predict buttons of Orthanc Explorer 2 (docker/orthanc-ai.json), sending exactly what OE2 sends.

OE2 cannot load plugin JavaScript; since 1.8.0 its ``UiOptions.CustomButtons`` add buttons that send one
HTTP request. What OE2 sends, from its source (github.com/orthanc-server/orthanc-explorer-2, 1.14.x):

* ``WebApplication/src/components/ResourceButtonGroup.vue``, ``customButtonClicked``: the ``Url`` and the
  ``Payload`` with their placeholders filled in, then ``axios.post(url, payload)``. axios sends a plain
  object as JSON (``JSON.stringify``, ``Content-Type: application/json``; a null payload: no body) and
  ``Accept: application/json, text/plain, */*``. The request carries no base URL, so the browser resolves a
  relative ``Url`` against the page's address.
* ``WebApplication/src/helpers/resource-helpers.js``: in a string, ``{<DICOM keyword>}`` is replaced by the
  resource's main tags, then the first ``{UUID}`` by its Orthanc id, then any ``{…}`` left by "undefined".
  In the payload only string values are filled in; an array of strings comes out as that array repeated
  inside an array (``output[k].push(v)``), so a payload must not hold arrays.
* The page: ``Root`` (default ``/ui/``) + ``app/`` (``Plugin/Plugin.cpp``); every route of the app is one
  segment below it (``router.js``), and OE2 itself reaches Orthanc's API at ``../../``
  (``globalConfigurations.js``), as the buttons do.

OE2 is not packaged in Debian, so these tests replay that request against a real Orthanc with the plugin.
"""
from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from pydicom.uid import generate_uid

from orthanc_ai.outputs.labels import label_for, supports_labels
from tests.support.dicom_files import synthetic_ct
from tests.support.orthanc_process import PROJECT

OE2_PAGE = "/ui/app/"  # where OE2 serves its study list (default "Root": "/ui/")
# Other addresses the study list has: OE2's own routes, and OE2 behind a reverse proxy under /pacs/.
OE2_PAGES = [OE2_PAGE, "/ui/app/index.html", "/ui/app/filtered-studies?StudyDate=20260101-", "/ui/app/jobs"]
AXIOS_ACCEPT = "application/json, text/plain, */*"
CUSTOM_BUTTON_KEYS = {"HttpMethod", "Id", "Tooltip", "Icon", "Url", "Payload", "Refresh", "StartMessage"}
ROUTE_LEVEL = {"study": "studies", "series": "series", "instance": "instances"}
TEST_MODELS = {"test-ct", "test-any"}  # a CT slice meets the rules of both test models (tests/conftest.py)


def custom_buttons() -> dict[str, list[dict[str, Any]]]:
    configuration = json.loads((PROJECT / "docker" / "orthanc-ai.json").read_text())
    return configuration["OrthancExplorer2"]["UiOptions"]["CustomButtons"]


def predict_button(level: str) -> dict[str, Any]:
    (button,) = custom_buttons()[level]
    return button


def oe2_fill(template: str, uuid: str) -> str:
    """resource-helpers.js ``replaceResourceTagsInStringPlainText`` for a resource: first {UUID}, then {…}."""
    return re.sub(r"{[^}]+}", "undefined", template.replace("{UUID}", uuid, 1))


def oe2_payload(template: dict[str, Any] | None, uuid: str) -> dict[str, Any] | None:
    """resource-helpers.js ``replaceResourceTagsInJson``, arrays included as OE2 (mis)handles them."""
    if template is None:
        return None
    output: dict[str, Any] = {}
    for key, value in template.items():
        if isinstance(value, str):
            output[key] = oe2_fill(value, uuid) if "{" in value else value
        elif isinstance(value, list):
            if any(isinstance(item, str) and "{" in item for item in value):
                raise TypeError("OE2 passes the whole array to its string substitution and fails")
            output[key] = [value for item in value if isinstance(item, str)]
        elif isinstance(value, dict):
            output[key] = oe2_payload(value, uuid)
        else:
            output[key] = value
    return output


def click(orthanc, level: str, resource_id: str, page: str = OE2_PAGE) -> tuple[int, Any]:
    """Send the request OE2 sends when the button of ``level`` is clicked on the resource ``resource_id``."""
    button = predict_button(level)
    assert button["HttpMethod"] == "POST"
    url = urljoin(orthanc.url + page, oe2_fill(button["Url"], resource_id))
    assert url.startswith(orthanc.url + "/"), url
    payload = oe2_payload(button["Payload"], resource_id)
    headers = {"Accept": AXIOS_ACCEPT}
    body = None
    if payload is not None:  # JSON.stringify: no spaces, non-ASCII as is, UTF-8 on the wire
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        headers["Content-Type"] = "application/json"
    status, answer = orthanc.request("POST", url[len(orthanc.url):], body, headers)
    return status, json.loads(answer)


def store_study(orthanc) -> tuple[str, dict[str, list[str]]]:
    """A CT study of two series of two slices: its Orthanc id and {series id: [instance ids]}."""
    study_uid = generate_uid()
    series: dict[str, list[str]] = {}
    study_ids = set()
    for series_number in range(2):
        series_uid = generate_uid()
        for number in range(1, 3):
            stored = orthanc.store_http(synthetic_ct(seed=700 + 10 * series_number + number, study_uid=study_uid,
                                                     series_uid=series_uid, instance_number=number))
            series.setdefault(stored["ParentSeries"], []).append(stored["ID"])
            study_ids.add(stored["ParentStudy"])
    (study_id,) = study_ids
    return study_id, series


def predictions(orthanc, instance_id: str) -> dict[str, Any]:
    return orthanc.get(f"/ai/instances/{instance_id}/predictions")


def instance_view_results(orthanc, instance_id: str) -> dict[str, str]:
    """What OE2's instance view shows of the private block: its tags as OE2 asks for them (orthancApi.js)."""
    tags = orthanc.get(f"/instances/{instance_id}/tags?ignore-length=VisitComments")
    return {tag["Name"]: tag["Value"] for key, tag in tags.items() if key.startswith("0055,")}


def test_buttons_are_oe2_custom_buttons_that_never_force_a_rerun():
    buttons = custom_buttons()
    assert set(buttons) == {"study", "series", "instance"}
    ids = [button["Id"] for level in buttons for button in buttons[level]]
    assert len(ids) == len(set(ids)) == 3  # OE2 uses Id as the HTML id and the Vue key
    for level, (button,) in buttons.items():
        assert set(button) == CUSTOM_BUTTON_KEYS, level
        assert button["HttpMethod"] == "POST" and button["Refresh"] is True
        assert re.fullmatch(r"bi bi-[a-z0-9-]+", button["Icon"])  # a Bootstrap icon, as OE2 requires
        assert button["Url"].count("{UUID}") == 1 and not button["Url"].startswith("/")
        assert "Not for diagnosis" in button["Tooltip"] and button["StartMessage"]
        # Explicitly not forced: the plugin's default for a request without "force" is to re-run.
        assert button["Payload"] == {"force": False}


@pytest.mark.parametrize("page", OE2_PAGES + ["/pacs" + page for page in OE2_PAGES])
@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_button_url_reaches_the_plugin_from_every_page_of_oe2(level, page):
    uuid = "6e3dd52d-3b6d9a1c-0b0d8f3a-5ab2a2cc-1f0e5d0b"
    prefix = "/pacs" if page.startswith("/pacs/") else ""
    url = urljoin("https://pacs.example.org" + page, oe2_fill(predict_button(level)["Url"], uuid))
    assert urlsplit(url).path == f"{prefix}/ai/{ROUTE_LEVEL[level]}/{uuid}/predict"


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_click_predicts_exactly_the_images_of_the_resource(start_orthanc, level):
    # Predict only on request: whatever is predicted, the click did it.
    orthanc = start_orthanc(plugin={"AutoPredict": False})
    study_id, series = store_study(orthanc)
    (first_series, first_instances), (_, other_instances) = series.items()
    everything = first_instances + other_instances
    target, expected = {"study": (study_id, everything), "series": (first_series, first_instances),
                        "instance": (first_instances[0], first_instances[:1])}[level]
    assert all(predictions(orthanc, i) == {"instance": i, "status": None, "predictions": []} for i in everything)

    status, answer = click(orthanc, level, target)

    assert status == 200, answer
    answered = [answer] if level == "instance" else answer["instances"]
    assert sorted(outcome["instance"] for outcome in answered) == sorted(expected)
    assert {outcome["state"] for outcome in answered} == {"predicted"}
    for instance_id in everything:
        result = predictions(orthanc, instance_id)
        if instance_id not in expected:
            assert result["status"] is None and result["predictions"] == [], "outside the clicked resource"
            continue
        assert result["status"]["state"] == "predicted"
        assert {p["model"] for p in result["predictions"]} == TEST_MODELS
        shown = instance_view_results(orthanc, instance_id)
        assert shown["PrivateCreator"] == "ORTHANC AI RESULTS 1", shown
        assert {shown["AIModel01Name"], shown["AIModel02Name"]} == TEST_MODELS
        top = {p["model"]: p["topClass"] for p in result["predictions"]}
        assert {shown["AIModel01TopClass"], shown["AIModel02TopClass"]} == set(top.values())
    # Orthanc >= 1.12: the study list OE2 reloads after the answer ("Refresh") shows the labels.
    if supports_labels(orthanc.get("/system")):
        labels = set(orthanc.get(f"/studies/{study_id}/labels"))
        for instance_id in expected:
            assert {label_for(p["model"], p["topClass"]) for p in predictions(orthanc, instance_id)["predictions"]} \
                <= labels


def test_click_on_an_already_predicted_study_rewrites_nothing(orthanc):
    # As in the Docker image: AutoPredict on, so the images are classified on arrival.
    study_id, series = store_study(orthanc)
    instances = [i for ids in series.values() for i in ids]
    orthanc.wait_until(lambda: all(predictions(orthanc, i)["status"] for i in instances), 60, "automatic prediction")
    files = {i: orthanc.get_bytes(f"/instances/{i}/file") for i in instances}

    status, answer = click(orthanc, "study", study_id)

    assert status == 200, answer
    assert answer["counts"] == {"unchanged": len(instances)}
    assert {i: orthanc.get_bytes(f"/instances/{i}/file") for i in instances} == files
