"""Study labels for Orthanc Explorer 2 (Orthanc 1.12 and later): a predicted study can be found by its result."""
from __future__ import annotations

import pytest

from orthanc_ai.config import DEFAULT_PRIVATE_CREATOR
from orthanc_ai.dicom.private_tags import read_results
from orthanc_ai.outputs.labels import conclusion_label, label_for, supports_labels
from tests.support.dicom_files import read, synthetic_ct


@pytest.fixture
def with_labels(orthanc) -> None:
    system = orthanc.get("/system")
    if not supports_labels(system):
        pytest.skip(f"labels need Orthanc >= 1.12 (this is {system['Version']}); make test-compat runs this test "
                    "on 1.12.7 and 1.13.0")


def _predict_one_ct(orthanc, seed: int) -> tuple[str, dict[str, str]]:
    """Store a CT, wait for its prediction; its study id and each model's top class."""
    before = orthanc.status()
    stored = orthanc.store_http(synthetic_ct(seed=seed, rows=128, columns=128))
    orthanc.wait_idle(sum(before[k] for k in ("predicted", "skipped", "unchanged", "failed", "gone")) + 1)
    results = read_results(read(orthanc.get_bytes(f"/instances/{stored['ID']}/file")), DEFAULT_PRIVATE_CREATOR)
    return stored["ParentStudy"], {r.model: r.top_class for r in results}


def test_predicted_study_carries_its_labels_and_is_found_by_them(orthanc, with_labels):
    study, top_classes = _predict_one_ct(orthanc, seed=42)
    expected = {label_for(model, top_class) for model, top_class in top_classes.items()}
    assert expected == {f"ai-test-ct-{top_classes['test-ct']}", f"ai-test-any-{top_classes['test-any']}"}
    orthanc.wait_until(lambda: expected <= set(orthanc.get(f"/studies/{study}/labels")), 30, f"labels {expected}")

    # What Explorer 2's label filter does: find studies by label.
    for label in expected:
        status, found = orthanc.post_json("/tools/find", {"Level": "Study", "Query": {}, "Labels": [label],
                                                          "LabelsConstraint": "All"})
        assert status == 200 and study in found, (label, found)
    status, none = orthanc.post_json("/tools/find", {"Level": "Study", "Query": {}, "Labels": ["ai-test-ct-Nothing"]})
    assert status == 200 and none == []


def test_study_carries_the_series_conclusion_once_reported(orthanc, with_labels):
    study, _ = _predict_one_ct(orthanc, seed=43)
    [series] = orthanc.get(f"/studies/{study}/series")
    status, answer = orthanc.post_json(f"/ai/series/{series['ID']}/report")
    assert status == 200 and answer["reports"][0]["state"] == "written", answer
    summary = {m["model"]: m["conclusion"] for m in orthanc.get(f"/ai/series/{series['ID']}/summary")["models"]}
    expected = {conclusion_label(model, c["class"], c["suspected"]) for model, c in summary.items()}
    assert len(expected) == 2 and all("-series-" in label or "-suspected-" in label for label in expected)
    orthanc.wait_until(lambda: expected <= set(orthanc.get(f"/studies/{study}/labels")), 30, f"labels {expected}")


def test_find_answers_from_labels(orthanc, with_labels):
    studies = dict(_predict_one_ct(orthanc, seed=seed) for seed in (44, 45, 46))
    for wanted in sorted({classes["test-ct"] for classes in studies.values()}):
        answer = orthanc.get(f"/ai/find?model=test-ct&class={wanted}&level=studies")
        expected = sorted(study for study, classes in studies.items() if classes["test-ct"] == wanted)
        assert answer["searched"]["by"] == "labels", answer
        assert set(expected) <= set(answer["matches"]), (wanted, answer)
        # Only the studies labelled with that class were visited, not every instance.
        labelled = orthanc.post_json("/tools/find", {"Level": "Study", "Query": {},
                                                     "Labels": [f"ai-test-ct-{wanted}"]})[1]
        assert answer["searched"]["studies"] == len(labelled)
        assert set(answer["matches"]) <= set(labelled)
