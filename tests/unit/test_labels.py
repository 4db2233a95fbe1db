"""Label naming for Orthanc Explorer 2 (Orthanc ≥ 1.12): ai-<model>-<top class>, [A-Za-z0-9_-], ≤ 64."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from orthanc_ai.orthanc.capabilities import OrthancCapabilities
from orthanc_ai.outputs.labels import StudyLabeler, is_valid_label, label_for, supports_labels


@pytest.mark.parametrize(
    "model, top_class, expected",
    [
        ("lung-ct-3", "Malignant", "ai-lung-ct-3-Malignant"),
        ("lung-ct-6", "adenocarcinoma", "ai-lung-ct-6-adenocarcinoma"),
        ("chest.xr_2", "Pleural effusion", "ai-chest_xr_2-Pleural_effusion"),
        ("m", "Grade II/III (a+b)", "ai-m-Grade_II_III_a_b"),
        ("m", "Œdème", "ai-m-deme"),  # accents dropped; only ASCII letters are allowed
        ("m", "<script>", "ai-m-script"),
        ("m", "日本", "ai-m-x"),  # nothing label-safe left
    ],
)
def test_label_names(model, top_class, expected):
    assert label_for(model, top_class) == expected
    assert is_valid_label(expected)


def test_long_labels_are_shortened_and_stay_distinct():
    model = "a-very-long-model-name-for-a-chest-radiograph-classifier"
    first = label_for(model, "Consolidation of the left lower lobe")
    second = label_for(model, "Consolidation of the left upper lobe")
    assert len(first) == len(second) == 64
    assert is_valid_label(first) and is_valid_label(second)
    assert first != second
    assert first == label_for(model, "Consolidation of the left lower lobe")  # stable


@pytest.mark.parametrize("label, valid", [("ai-x-Y_1", True), ("", False), ("a.b", False), ("a b", False),
                                          ("x" * 64, True), ("x" * 65, False)])
def test_label_validity_matches_orthanc(label, valid):
    assert is_valid_label(label) is valid


@pytest.mark.parametrize(
    "system, expected",
    [
        ({"Version": "1.10.1", "ApiVersion": 17}, False),  # Debian 12
        ({"Version": "1.11.3", "ApiVersion": 19}, False),
        ({"Version": "1.12.0", "ApiVersion": 20}, True),
        ({"Version": "1.12.4", "ApiVersion": 24, "HasLabels": True}, True),
        ({"Version": "1.12.4", "HasLabels": False}, False),  # a database back-end without labels
        ({"Version": "mainline"}, True),
        ({"Version": "2.0"}, True),
        ({}, False),
    ],
)
def test_labels_only_where_orthanc_has_them(system, expected):
    assert supports_labels(system) is expected


class FakeApi:
    def __init__(self, version: str) -> None:
        self.version = version
        self.labels: list[tuple[str, str]] = []
        self.system_calls = 0

    def system(self):
        self.system_calls += 1
        return {"Version": self.version}

    def instance_study(self, instance_id):
        return f"study-of-{instance_id}"

    def add_study_label(self, study_id, label):
        self.labels.append((study_id, label))


def outcome(state="predicted", study_id=None):
    results = [SimpleNamespace(model="lung-ct-3", top_class="Normal"), SimpleNamespace(model="m.2", top_class="A b")]
    return SimpleNamespace(state=state, instance_id="i1", results=results, study_id=study_id)


def test_labeler_labels_the_study_once_orthanc_has_labels():
    api = FakeApi("1.12.1")
    capabilities = OrthancCapabilities(api.system)
    labeler = StudyLabeler(api, lambda: capabilities.labels)
    labeler(outcome())
    labeler(outcome("skipped"))
    labeler(outcome())
    assert api.labels == [("study-of-i1", "ai-lung-ct-3-Normal"), ("study-of-i1", "ai-m_2-A_b")] * 2
    assert api.system_calls == 1


def test_labeler_takes_the_study_from_the_outcome_where_the_pipeline_knows_it():
    api = FakeApi("1.12.1")
    api.instance_study = None  # an Orthanc call per image (it slows as the index grows): not made
    capabilities = OrthancCapabilities(api.system)
    StudyLabeler(api, lambda: capabilities.labels)(outcome(study_id="study-from-file"))
    assert api.labels == [("study-from-file", "ai-lung-ct-3-Normal"), ("study-from-file", "ai-m_2-A_b")]


def test_labeler_does_nothing_on_orthanc_1_10():
    api = FakeApi("1.10.1")
    capabilities = OrthancCapabilities(api.system)
    labeler = StudyLabeler(api, lambda: capabilities.labels)
    labeler(outcome())
    labeler(outcome())
    assert api.labels == [] and api.system_calls == 1
