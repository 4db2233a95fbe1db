"""Fuzzing with real files: seeded mutations of ../shared/data/dicom-robustness stored into a real Orthanc
with the plugin. Orthanc never crashes or hangs, every instance it accepts ends predicted or skipped with a
reason, the skipped ones byte-identical; what Orthanc refuses is Orthanc's own refusal.

ORTHANC_AI_FUZZ_SEED and ORTHANC_AI_FUZZ_COUNT change the run (the defaults are what CI runs). A mutation
that fails is written to test-artifacts/fuzz-failures/ and named by its source, seed and index; add that
triple to REGRESSIONS below, so it is stored in every later run, whatever the seed. (The mutated files are
not committed: they derive from ../shared/data, which the project does not redistribute; the triple makes
the same bytes again.)
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter

from tests.support.dicom_files import shared_data
from tests.support.dicom_mutations import mutate
from tests.support.orthanc_process import PROJECT

SEED = int(os.environ.get("ORTHANC_AI_FUZZ_SEED", "20261202"))
COUNT = int(os.environ.get("ORTHANC_AI_FUZZ_COUNT", "2100"))
# Orthanc 1.10.1 itself dies on this one (test_robustness.py); mutations of it would only show that again.
EXCLUDED = {"2026-05-06-Deeply-Nested-Sequence.dcm"}
MAX_SOURCE_BYTES = 600_000  # keeps 2,000 stores within a few minutes
FAILURES = PROJECT / "test-artifacts" / "fuzz-failures"
# (source, seed, index) of mutations that once failed, and what was wrong then.
REGRESSIONS = [
    ("Encodings/DavidClunie/SCSX2", 20261202, 318, "pydicom's writer raised AttributeError: failed"),
    ("Formats/Rle.dcm", 20261202, 802, "pylibjpeg-rle panicked (a BaseException): the worker thread died"),
    ("Formats/Rle.dcm", 20261202, 1282, "the same panic"),
    ("TransferSyntaxes/1.2.840.10008.1.2.5.dcm", 20261202, 1555, "the same panic"),
    ("2020-11-16-SalimKanounAnonymization.dcm", 20261202, 1083, "our creator, a probability not a number: failed"),
    ("Issue94.dcm", 20261202, 1356, "the same"),
    ("2023-04-21-RLEPlanarConfigurationYBR_FULL.dcm", 20261202, 1746, "an unknown VR, raised when writing: failed"),
    ("KarstenHilbertRF.dcm", 20261202, 1837, "the same"),
    ("Issue140.dcm", 20261202, 2010, "an unknown VR in Rows, raised after parsing: failed"),
]


def test_mutated_real_files_never_crash_hang_or_lose_anything(start_orthanc):
    folder = shared_data("dicom-robustness/orthanc-tests")
    sources = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in EXCLUDED
                     and p.stat().st_size <= MAX_SOURCE_BYTES)
    assert len(sources) >= 40
    orthanc = start_orthanc()
    accepted: dict[str, tuple[int, str, bytes]] = {}  # Orthanc id → (index, mutation, bytes as stored)
    refused: Counter[str] = Counter()
    mutations: Counter[str] = Counter()
    started = time.monotonic()
    for index in range(COUNT):
        source = sources[index % len(sources)]
        name, dicom = mutate(source.read_bytes(), SEED, index)
        mutations[name] += 1
        status, answer = orthanc.request("POST", "/instances", dicom)
        assert orthanc.alive, f"Orthanc died on mutation {index} ({name} of {source.name}):\n{orthanc.log_tail()}"
        if status != 200:
            assert 400 <= status < 500, (index, status, answer[:300])
            refused[json.loads(answer).get("Message", "?") if answer.startswith(b"{") else str(status)] += 1
            continue
        for item in json.loads(answer) if answer.startswith(b"[") else [json.loads(answer)]:
            if item.get("Status") in ("Success", "AlreadyStored"):
                accepted[item["ID"]] = (index, name, dicom)
    stored_in = time.monotonic() - started

    def outcome(instance_id: str) -> dict | None:
        return orthanc.get(f"/ai/instances/{instance_id}/predictions")["status"]

    orthanc.wait_until(lambda: orthanc.status()["queueLength"] == 0 and orthanc.status()["inProgress"] == 0,
                       600, "the plugin to finish")
    states: Counter[str] = Counter()
    problems = []
    present = set(orthanc.get("/instances"))
    assert set(accepted) <= present, "an accepted instance was lost"
    for instance_id, (index, name, dicom) in accepted.items():
        status = outcome(instance_id)
        state = status["state"] if status else "no outcome"
        states[state] += 1
        if state == "skipped" and not status["reason"]:
            problems.append((index, name, instance_id, "skipped without a reason"))
        # Mutations of one source share its UIDs: ``dicom`` is the last one stored under this id.
        if state == "skipped" and orthanc.get_bytes(f"/instances/{instance_id}/file") != dicom:
            problems.append((index, name, instance_id, "skipped but its file changed"))
        if state not in ("predicted", "skipped"):
            problems.append((index, name, instance_id, f"{state}: {status}"))
    assert orthanc.alive
    print(f"\nseed {SEED}: {COUNT} mutations ({dict(mutations)}) stored in {stored_in:.0f} s; "
          f"{len(accepted)} accepted, outcomes {dict(states)}; refused by Orthanc: {sum(refused.values())} "
          f"({dict(refused.most_common(5))})")
    if problems:
        FAILURES.mkdir(parents=True, exist_ok=True)
        for index, name, _, _ in problems:
            source = sources[index % len(sources)]
            label = str(source.relative_to(folder)).replace("/", "_")
            _, dicom = mutate(source.read_bytes(), SEED, index)
            (FAILURES / f"{label}-seed{SEED}-{index}-{name}.dcm").write_bytes(dicom)
    assert not problems, problems[:20]
    assert states["predicted"] > 0 and states["skipped"] > 0  # both paths were exercised


def test_mutations_that_once_failed_are_predicted_or_skipped(start_orthanc):
    folder = shared_data("dicom-robustness/orthanc-tests")
    orthanc = start_orthanc()
    stored = {}
    for source, seed, index, found in REGRESSIONS:
        _, dicom = mutate((folder / source).read_bytes(), seed, index)
        status, answer = orthanc.request("POST", "/instances", dicom)
        assert status in (200, 400, 404), (source, index, answer[:200])  # Orthanc refuses some itself
        if status == 200:
            stored[json.loads(answer)["ID"]] = (source, index, found)
    assert len(stored) >= 5
    orthanc.wait_idle(len(stored), 120)
    for instance_id, case in stored.items():
        status = orthanc.get(f"/ai/instances/{instance_id}/predictions")["status"]
        assert status and status["state"] in ("predicted", "skipped"), (case, status)
    status = orthanc.status()
    assert status["failed"] == 0 and status["stages"] == {}, status

