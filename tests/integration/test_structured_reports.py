"""Each analysed series gets one DICOM Structured Report per model, once complete, valid and consistent.

Real Orthanc with the shipped models, ``StableAge`` 2 s. A 40-slice CT series (IQ-OTH/NCCD slices as CT
in Hounsfield units) goes in by C-STORE; a chest radiograph by HTTP. The SRs are read back from Orthanc
and checked against the images' private tags, validated with dciodvfy and read with highdicom.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.uid import generate_uid

from orthanc_ai.config import DEFAULT_PRIVATE_CREATOR
from orthanc_ai.dicom.private_tags import ModelResult, read_results
from tests.support.dicom_files import DATA, ct_from_grey, read, secondary_capture
from tests.support.orthanc_process import PROJECT, OrthancProcess, stop_all

IQ_OTHNCCD = DATA / "iq-othnccd" / "The IQ-OTHNCCD lung cancer dataset"
KERMANY = DATA / "kermany-pediatric-cxr-224"
ARTIFACTS = PROJECT / "test-artifacts"
CT_MODELS = ("lung-ct-3", "lung-ct-6")
SLICES = 40


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    if not IQ_OTHNCCD.is_dir():
        pytest.skip(f"shared data not found: {IQ_OTHNCCD}")
    server = OrthancProcess(tmp_path_factory.mktemp("orthanc"), PROJECT / "models", {"StableAge": 2})
    server.start()
    yield server
    stop_all([server])


def grey(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def ct_series_files(folder: Path) -> tuple[list[Path], str]:
    """40 slices, 8 from Malignant cases and 32 from Normal cases, as one CT series; and its UID."""
    malignant = sorted((IQ_OTHNCCD / "Malignant cases").glob("*.jpg"))[:8]
    normal = sorted((IQ_OTHNCCD / "Normal cases").glob("*.jpg"))[:32]
    study, series = generate_uid(), generate_uid()
    paths = []
    for number, source in enumerate(normal[:16] + malignant + normal[16:], start=1):
        path = folder / f"slice{number:03}.dcm"
        path.write_bytes(ct_from_grey(grey(source), study, series, number))
        paths.append(path)
    return paths, series


def series_id_of(orthanc: OrthancProcess, series_uid: str) -> str:
    found = json.loads(orthanc.request("POST", "/tools/lookup", series_uid.encode())[1])
    return next(item["ID"] for item in found if item["Type"] == "Series")


def reports_by_model(orthanc: OrthancProcess, study_id: str) -> dict[str, list[str]]:
    """The study's SR instances, by the model named in their series description ("AI <model> <version>")."""
    reports: dict[str, list[str]] = {}
    for series in orthanc.get(f"/studies/{study_id}/series"):
        if series["MainDicomTags"].get("Modality") == "SR":
            model = series["MainDicomTags"].get("SeriesDescription", "").split()[1]
            reports.setdefault(model, []).extend(series["Instances"])
    return reports


def wait_for_reports(orthanc: OrthancProcess, study_id: str, models: tuple[str, ...],
                     timeout: float = 180.0) -> dict[str, list[str]]:
    orthanc.wait_until(lambda: set(models) <= set(reports_by_model(orthanc, study_id)), timeout,
                       f"Structured Reports of {models}")
    return reports_by_model(orthanc, study_id)


def tag_results(orthanc: OrthancProcess, instance_ids: list[str]) -> dict[str, dict[str, ModelResult]]:
    """Each image's results from its private tags, by SOP Instance UID and model."""
    results = {}
    for instance_id in instance_ids:
        ds = read(orthanc.get_bytes(f"/instances/{instance_id}/file"), stop_before_pixels=True)
        results[ds.SOPInstanceUID] = {r.model: r for r in read_results(ds, DEFAULT_PRIVATE_CREATOR)}
    return results


def download_report(orthanc: OrthancProcess, instance_id: str, folder: Path) -> tuple[Path, hd.sr.Comprehensive3DSR]:
    path = folder / f"{instance_id}.dcm"
    path.write_bytes(orthanc.get_bytes(f"/instances/{instance_id}/file"))
    report = hd.sr.srread(path)
    assert isinstance(report, hd.sr.Comprehensive3DSR), type(report)
    return path, report


def dciodvfy_errors(path: Path) -> list[str]:
    if not shutil.which("dciodvfy"):
        pytest.fail("dciodvfy missing: make test installs Debian's dicom3tools")
    checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]


def wait_quiet(orthanc: OrthancProcess, seconds: float = 6.0) -> None:
    """Until nothing is queued or waiting for a report, then past another StableAge: no more SR can come."""
    orthanc.wait_until(lambda: (lambda s: s["queueLength"] == 0 and s["inProgress"] == 0
                                and s["structuredReports"]["seriesWaiting"] == 0)(orthanc.status()), 120,
                       "an idle plugin")
    time.sleep(seconds)


def test_ct_series_gets_one_valid_report_per_model_that_agrees_with_the_tags(orthanc, tmp_path):
    paths, series_uid = ct_series_files(tmp_path)
    stored = orthanc.store_cstore(paths)
    assert stored.returncode == 0, stored.stderr
    series_id = series_id_of(orthanc, series_uid)
    series = orthanc.get(f"/series/{series_id}")
    reports = wait_for_reports(orthanc, series["ParentStudy"], CT_MODELS)
    wait_quiet(orthanc)
    reports = reports_by_model(orthanc, series["ParentStudy"])
    assert {model: len(ids) for model, ids in reports.items()} == {model: 1 for model in CT_MODELS}

    tags = tag_results(orthanc, orthanc.get(f"/series/{series_id}")["Instances"])
    assert len(tags) == SLICES
    summary_answer = orthanc.get(f"/ai/series/{series_id}/summary")
    for model in CT_MODELS:
        path, sr = download_report(orthanc, reports[model][0], tmp_path)
        assert dciodvfy_errors(path) == []
        assert subprocess.run(["dsrdump", str(path)], capture_output=True).returncode == 0
        # Rendered as a document (kept in test-artifacts/ for people to read): the findings are in the text.
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(path, ARTIFACTS / f"sr-{model}.dcm")
        html = ARTIFACTS / f"sr-{model}.html"
        assert subprocess.run(["dsr2html", "+Cm", str(path), str(html)]).returncode == 0
        rendered = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html.read_text()))
        conclusion_meaning = sr.content.get_image_measurement_groups()[-1].get_qualitative_evaluations()[0].value
        for expected in ("Imaging Measurement Report", "Summary", model, "probability", "images",
                         conclusion_meaning.meaning):
            assert expected in rendered, expected
        evidence = {item.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                    for s in study.ReferencedSeriesSequence for item in s.ReferencedSOPSequence}
        assert evidence == set(tags), "the SR references every image of the series"

        groups = sr.content.get_image_measurement_groups()
        per_image, summary = groups[:-1], groups[-1]
        assert len(per_image) == SLICES
        for group in per_image:
            result = tags[group.source_images[0].referenced_sop_instance_uid][model]
            probabilities = {m.name.meaning: m.value for m in group.get_measurements()}
            assert list(probabilities.values()) == pytest.approx(result.probabilities, abs=1e-9)
        # The summary's counts and highest probabilities are what the tags say.
        top_counts = Counter(results[model].top_class for results in tags.values())
        highest = [max(results[model].probabilities[i] for results in tags.values())
                   for i in range(len(next(iter(tags.values()))[model].classes))]
        counts = [m.value for m in summary.get_measurements() if m.unit.value == "{images}"]
        maxima = [m.value for m in summary.get_measurements() if m.unit.value == "{probability}"]
        classes = next(iter(tags.values()))[model].classes
        assert counts == [top_counts[c] for c in classes]
        assert maxima == pytest.approx(highest, abs=1e-9)

        answer = next(m for m in summary_answer["models"] if m["model"] == model)
        assert answer["report"] == reports[model][0]
        assert [c["imagesWithTopClass"] for c in answer["classes"]] == [top_counts[c] for c in classes]
        conclusion = summary.get_qualitative_evaluations()[0].value.meaning
        assert conclusion.lower().replace(" ", "_") == answer["conclusion"]["class"].lower()
        print(f"{model}: {answer['conclusion']['text']}")


def test_repredicting_the_series_replaces_each_report(orthanc, tmp_path):
    paths, series_uid = ct_series_files(tmp_path)
    assert orthanc.store_cstore(paths).returncode == 0
    series_id = series_id_of(orthanc, series_uid)
    study_id = orthanc.get(f"/series/{series_id}")["ParentStudy"]
    wait_for_reports(orthanc, study_id, CT_MODELS)
    wait_quiet(orthanc)
    before = reports_by_model(orthanc, study_id)

    status, answer = orthanc.post_json(f"/ai/series/{series_id}/predict", {"force": True})
    assert status == 200, answer
    assert answer["counts"] == {"predicted": SLICES}
    assert answer["reports"][0]["state"] == "written"
    wait_quiet(orthanc)
    after = reports_by_model(orthanc, study_id)
    assert {model: len(ids) for model, ids in after.items()} == {model: 1 for model in CT_MODELS}
    for model in CT_MODELS:
        assert after[model] != before[model], "a new SR (new prediction times)"
        assert orthanc.request("GET", f"/instances/{before[model][0]}")[0] == 404, "the old SR is deleted"
        assert answer["reports"][0]["reports"][model] == after[model][0]


def test_radiograph_gets_a_report_whose_finding_is_the_body_part(orthanc, tmp_path):
    source = sorted((KERMANY / "test" / "NORMAL").glob("*.jpeg"))[0]
    study = generate_uid()
    dicom = secondary_capture(grey(source), modality="DX", study_uid=study)
    answer = orthanc.store_http(dicom)
    reports = wait_for_reports(orthanc, answer["ParentStudy"], ("xray-bodypart",))
    wait_quiet(orthanc)
    reports = reports_by_model(orthanc, answer["ParentStudy"])
    assert list(reports) == ["xray-bodypart"] and len(reports["xray-bodypart"]) == 1

    result = tag_results(orthanc, [answer["ID"]])[read(dicom).SOPInstanceUID]["xray-bodypart"]
    path, sr = download_report(orthanc, reports["xray-bodypart"][0], tmp_path)
    assert dciodvfy_errors(path) == []
    image_group, summary = sr.content.get_image_measurement_groups()
    assert image_group.finding_type.meaning.lower().startswith(result.top_class.split("-")[0])
    assert summary.get_qualitative_evaluations()[0].value == image_group.finding_type
    print(f"radiograph: {result.top_class} {result.top_probability:.2f}; SR finding {image_group.finding_type.meaning}")

