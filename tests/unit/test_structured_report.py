"""The series summary and the SR built from it: values, references, codes and DICOM validity.

The SRs are checked as a PACS vendor would: dicom3tools' dciodvfy (no errors), DCMTK's dsrdump and
dsr2html, and highdicom's reader, which must give back the probabilities the results hold.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import highdicom as hd
import pytest
from pydicom.sr import _concepts_dict
from pydicom.uid import generate_uid

from orthanc_ai.dicom.private_tags import ModelResult
from orthanc_ai.models.model_card import PROJECT_CODING_SCHEME, ModelCard, ModelCardError
from orthanc_ai.outputs.series_summary import AnalysedImage, summarise
from orthanc_ai.outputs.structured_report import build_report, encode, report_instance_uid, report_series_uid
from tests.support.dicom_files import read, synthetic_ct
from tests.support.orthanc_process import PROJECT

LUNG_CT_3 = ModelCard.load(PROJECT / "models" / "lung-ct-3")
PREDICTED_AT = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def series_of(probabilities: Sequence[tuple[float, ...]], card: ModelCard = LUNG_CT_3, numbered: bool = True,
              predicted_at: datetime = PREDICTED_AT):
    """Headers (by SOP Instance UID) and analysed images of a CT series with these results."""
    study, series = generate_uid(), generate_uid()
    headers, images = {}, []
    for number, probs in enumerate(probabilities, start=1):
        header = read(synthetic_ct(seed=number, study_uid=study, series_uid=series, instance_number=number),
                      stop_before_pixels=True)
        header.SeriesNumber = 4
        result = ModelResult(card.name, card.version, card.dataset, predicted_at, card.classes, probs)
        headers[header.SOPInstanceUID] = header
        images.append(AnalysedImage(f"orthanc-{number}", header.SOPClassUID, header.SOPInstanceUID,
                                    number if numbered else None, result))
    return headers, images


# Benign, Malignant, Normal
MOSTLY_NORMAL = [(0.1, 0.2, 0.7), (0.2, 0.1, 0.7), (0.05, 0.93, 0.02), (0.3, 0.3, 0.4), (0.6, 0.1, 0.3)]


def test_summary_counts_highest_probabilities_and_key_images():
    _, images = series_of(MOSTLY_NORMAL)
    summary = summarise(LUNG_CT_3, list(reversed(images)))  # arrival order does not matter
    by_class = {c.name: c for c in summary.classes}
    assert {name: c.images_with_top_class for name, c in by_class.items()} == {"Benign": 1, "Malignant": 1,
                                                                               "Normal": 3}
    assert by_class["Malignant"].highest_probability == 0.93
    assert by_class["Malignant"].highest_at.instance_number == 3
    # Normal's 0.7 is on images 1 and 2: the first in series order is the key image.
    assert by_class["Normal"].highest_at.instance_number == 1
    assert [i.instance_number for i in summary.key_images] == [1, 3, 5]
    assert [i.instance_number for i in summary.images] == [1, 2, 3, 4, 5]


def test_conclusion_follows_the_cards_suspicion_rules_else_the_most_frequent_class():
    _, images = series_of(MOSTLY_NORMAL)
    # lung-ct-3: Malignant at ≥ 0.9 on any image concludes the series.
    conclusion = summarise(LUNG_CT_3, images).conclusion
    assert (conclusion.class_name, conclusion.suspected) == ("Malignant", True)
    assert conclusion.text == ("Malignant suspected: top class with probability ≥ 0.9 in 1 of 5 images, "
                               "highest 0.93 on image 3")
    # Below every threshold: the most frequent top class.
    _, calm = series_of([(0.1, 0.2, 0.7), (0.2, 0.1, 0.7), (0.05, 0.85, 0.1)])
    conclusion = summarise(LUNG_CT_3, calm).conclusion
    assert (conclusion.class_name, conclusion.suspected, conclusion.text) == (
        "Normal", False, "Normal: top class in 2 of 3 images")


def test_a_one_image_series_concludes_with_its_class_and_probability():
    card = ModelCard.load(PROJECT / "models" / "xray-bodypart")
    _, images = series_of([(0.81, 0.09, 0.05, 0.05)], card=card)
    assert summarise(card, images).conclusion.text == "adult-chest (0.81)"


def test_report_references_every_image_and_gives_back_the_probabilities(tmp_path: Path):
    headers, images = series_of(MOSTLY_NORMAL)
    summary = summarise(LUNG_CT_3, images)
    path = tmp_path / "sr.dcm"
    path.write_bytes(encode(build_report(LUNG_CT_3, summary, headers)))

    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert sr.Modality == "SR"
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    first = headers[images[0].sop_instance_uid]
    assert (sr.PatientID, sr.StudyInstanceUID) == (first.PatientID, first.StudyInstanceUID)
    assert sr.SeriesInstanceUID != first.SeriesInstanceUID
    assert sr.SeriesDescription == f"AI lung-ct-3 {LUNG_CT_3.version}"
    evidence = {item.ReferencedSOPInstanceUID
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert evidence == set(headers)
    equipment = sr.ContributingEquipmentSequence[0]
    assert equipment.ManufacturerModelName == "lung-ct-3"
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Equipment"

    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    groups = report.get_image_measurement_groups()
    per_image, summary_group = groups[:-1], groups[-1]
    assert len(per_image) == len(images)
    for group, image in zip(per_image, images, strict=True):
        assert [s.referenced_sop_instance_uid for s in group.source_images] == [image.sop_instance_uid]
        values = {m.name.meaning: m.value for m in group.get_measurements()}
        assert values == pytest.approx(dict(zip(("Benign", "Malignant", "Normal"), image.result.probabilities,
                                                strict=True)))
        finding = group.finding_type
        assert finding is not None
        assert (finding.scheme_designator, finding.meaning) == ("SCT", image.result.top_class)

    assert summary_group.tracking_identifier == "series summary"
    counts = {m.name.meaning: m.value for m in summary_group.get_measurements() if m.unit.value == "{images}"}
    assert counts == {"Benign": 1, "Malignant": 1, "Normal": 3}
    highest = {m.name.meaning: m.value for m in summary_group.get_measurements()
               if m.unit.value == "{probability}"}
    assert highest == pytest.approx({"Benign": 0.6, "Malignant": 0.93, "Normal": 0.7})
    key_images = [s.referenced_sop_instance_uid for s in summary_group.source_images]
    assert key_images == [i.sop_instance_uid for i in summary.key_images]
    conclusion = summary_group.get_qualitative_evaluations()[0]
    assert conclusion.name.meaning == "Conclusion"
    value = conclusion.value
    assert isinstance(value, hd.sr.CodedConcept) and value.value == "21594007"  # SCT Malignant


@pytest.mark.skipif(not shutil.which("dciodvfy"), reason="dciodvfy not installed (Debian package dicom3tools)")
def test_report_passes_dciodvfy_dsrdump_and_dsr2html(tmp_path: Path):
    headers, images = series_of(MOSTLY_NORMAL)
    # A header without the optional patient and study attributes (real modalities omit them).
    for header in headers.values():
        del header.StudyDate, header.StudyTime
    path = tmp_path / "sr.dcm"
    path.write_bytes(encode(build_report(LUNG_CT_3, summarise(LUNG_CT_3, images), headers)))

    verified = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    errors = [line for line in (verified.stdout + verified.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], verified.stderr
    assert "Comprehensive3DSR" in verified.stdout + verified.stderr
    dumped = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True)
    assert dumped.returncode == 0, dumped.stderr
    assert '<contains CODE:(,,"Conclusion")=(21594007,SCT,"Malignant")>' in dumped.stdout
    html = tmp_path / "sr.html"
    assert subprocess.run(["dsr2html", str(path), str(html)]).returncode == 0
    text = re.sub(r"<[^>]+>", " ", html.read_text())
    assert "Imaging Measurement Report" in text and "Malignant" in text and "0.93" in text


def test_uids_are_derived_from_the_results():
    headers, images = series_of(MOSTLY_NORMAL)
    first = headers[images[0].sop_instance_uid]
    summary = summarise(LUNG_CT_3, images)
    report = build_report(LUNG_CT_3, summary, headers)
    # Built twice (another node, or again later): the same UIDs.
    again = build_report(LUNG_CT_3, summarise(LUNG_CT_3, images), headers,
                         created_at=datetime.now().astimezone() + timedelta(minutes=5))
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (report.SeriesInstanceUID, report.SOPInstanceUID)
    assert report.SeriesInstanceUID == report_series_uid(first.StudyInstanceUID, first.SeriesInstanceUID,
                                                         "lung-ct-3")
    # Predicted again: same SR series, a new SR instance.
    repredicted = [AnalysedImage(i.instance_id, i.sop_class_uid, i.sop_instance_uid, i.instance_number,
                                 ModelResult(**{**i.result.__dict__, "predicted_at": PREDICTED_AT + timedelta(1)}))
                   for i in images]
    new_summary = summarise(LUNG_CT_3, repredicted)
    assert report_instance_uid(first.SeriesInstanceUID, new_summary) != report.SOPInstanceUID
    assert build_report(LUNG_CT_3, new_summary, headers).SeriesInstanceUID == report.SeriesInstanceUID


def test_shipped_snomed_codes_are_in_pydicoms_concept_dictionary():
    snomed: dict[str, set[str]] = {}  # one code may have several meanings (keywords) in the dictionary
    for entries in _concepts_dict.concepts["SCT"].values():
        for value, (meaning, _) in entries.items():
            snomed.setdefault(value, set()).add(meaning.lower())
    checked = 0
    for card_path in sorted((PROJECT / "models").glob("*/model.json")):
        card = ModelCard.load(card_path.parent)
        for name in card.classes:
            code = card.class_code(name)
            if code.scheme == "SCT":
                assert code.value in snomed, (card.name, name)
                assert code.meaning.lower() in snomed[code.value], (card.name, name, snomed[code.value])
                checked += 1
            else:
                assert code.scheme == PROJECT_CODING_SCHEME
    assert checked >= 9


def test_card_without_codes_uses_the_project_scheme_and_bad_codes_are_refused():
    raw = dict(LUNG_CT_3.raw)
    raw.pop("class_codes")
    card = ModelCard.from_json(raw, LUNG_CT_3.folder)
    assert card.class_code("Malignant").scheme == PROJECT_CODING_SCHEME
    with pytest.raises(ModelCardError, match="class_codes names classes the model does not have"):
        ModelCard.from_json({**raw, "class_codes": {"Tumour": {"scheme": "SCT", "value": "1", "meaning": "x"}}},
                            LUNG_CT_3.folder)
    with pytest.raises(ModelCardError, match="series_conclusion.suspect"):
        ModelCard.from_json({**raw, "series_conclusion": {"suspect": [{"class": "Tumour"}]}}, LUNG_CT_3.folder)
