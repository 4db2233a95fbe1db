"""Every real-world file of ../shared/data/dicom-robustness: Orthanc stays up, each instance is predicted or
skipped with a reason."""
from __future__ import annotations

import json
import struct

from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import JPEG2000Lossless

from orthanc_ai.config import DEFAULT_PRIVATE_CREATOR
from orthanc_ai.dicom.private_tags import read_results
from tests.support.dicom_files import read, shared_data, synthetic_ct, to_bytes

# Orthanc 1.10.1 itself (DCMTK's parser) dies with SIGSEGV on this file, with no plugin loaded at all
# (reproduced with an empty "Plugins" list); the file is a regression test for a later Orthanc fix.
CRASHES_ORTHANC_ITSELF = {"2026-05-06-Deeply-Nested-Sequence.dcm"}


def test_every_robustness_file_is_predicted_or_skipped_and_none_lost(orthanc):
    folder = shared_data("dicom-robustness/orthanc-tests")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in CRASHES_ORTHANC_ITSELF)
    assert len(files) >= 60

    accepted: dict[str, str] = {}  # Orthanc id → file
    refused = []
    originals: dict[str, bytes] = {}
    for path in files:
        status, answer = orthanc.request("POST", "/instances", path.read_bytes())
        if status == 200:
            for item in json.loads(answer) if answer.startswith(b"[") else [json.loads(answer)]:
                accepted[item["ID"]] = path.name
                originals[item["ID"]] = orthanc.get_bytes(f"/instances/{item['ID']}/file")
        else:
            refused.append(path.name)  # Orthanc itself refuses some (e.g. DICOMDIR, no SOP UID)
        assert orthanc.alive, f"Orthanc died after {path}:\n{orthanc.log_tail()}"

    def outcome(instance_id: str) -> dict | None:
        return orthanc.get(f"/ai/instances/{instance_id}/predictions")["status"]

    orthanc.wait_until(lambda: all(outcome(i) for i in accepted), 300, "an outcome for every instance")
    assert orthanc.alive
    states: dict[str, list[str]] = {"predicted": [], "skipped": [], "failed": []}
    for instance_id, name in accepted.items():
        status = outcome(instance_id)
        assert status is not None
        states[status["state"]].append(f"{name}: {status['reason']}")
        assert status["state"] != "skipped" or status["reason"], name
        if status["state"] != "predicted":
            # Skipped or failed: the original is untouched, byte for byte, and nothing was written to
            # Orthanc about it (no metadata of the plugin's, no change in the log but its arrival).
            assert orthanc.get_bytes(f"/instances/{instance_id}/file") == originals[instance_id], name
            assert not [m for m in orthanc.get(f"/instances/{instance_id}/metadata") if m.startswith("AI")], name
        else:
            stored = read(orthanc.get_bytes(f"/instances/{instance_id}/file"))
            assert read_results(stored, DEFAULT_PRIVATE_CREATOR), name
            original = read(originals[instance_id])
            assert stored.get("PixelData") == original.get("PixelData"), name
    # None lost: every accepted instance is still there.
    assert sorted(orthanc.get("/instances")) == sorted(accepted)
    print(f"\n{len(accepted)} stored, {len(refused)} refused by Orthanc: {refused}")
    for state, lines in states.items():
        print(f"{state}: {len(lines)}")
        for line in sorted(lines):
            print("   ", line)
    assert not states["failed"], states["failed"]
    # The decoders cover the compressed transfer syntaxes: these real images must be predicted.
    predicted = " ".join(states["predicted"])
    for expected in ("1.2.840.10008.1.2.4.50.dcm", "1.2.840.10008.1.2.4.51.dcm", "1.2.840.10008.1.2.4.70.dcm",
                     "1.2.840.10008.1.2.4.80.dcm", "1.2.840.10008.1.2.4.90.dcm", "1.2.840.10008.1.2.4.91.dcm",
                     "1.2.840.10008.1.2.5.dcm", "1.2.840.10008.1.2.2.dcm", "1.2.840.10008.1.2.1.99.dcm",
                     "Monochrome1-Jpeg.dcm"):
        assert expected in predicted, f"{expected} not predicted"


def test_a_frame_declaring_a_huge_size_is_skipped_before_any_decoder_allocates_it(orthanc):
    """The fuzzer's find: a 64 × 64 JPEG 2000 CT whose codestream claims 16777344 columns. Decoding it
    would take gigabytes inside Orthanc's process; it must be skipped, untouched, at no memory cost."""
    ds = read(synthetic_ct(seed=5))
    ds.compress(JPEG2000Lossless)
    codestream = get_frame(ds.PixelData, 0, number_of_frames=1)
    xsiz = 8  # SOC (2 bytes), SIZ marker, Lsiz and Rsiz (2 each), then Xsiz
    ds.PixelData = encapsulate([codestream[:xsiz] + struct.pack(">I", 16_777_344) + codestream[xsiz + 4:]])
    dicom = to_bytes(ds)
    _, peak_before = orthanc.memory_mib()

    instance_id = orthanc.store_http(dicom)["ID"]

    def outcome() -> dict | None:
        return orthanc.get(f"/ai/instances/{instance_id}/predictions")["status"]

    orthanc.wait_until(lambda: outcome() is not None, 60, "the instance's outcome")
    assert outcome()["state"] == "skipped"
    assert "compressed frame declares 64 x 16777344 x 1 samples, the header 64 x 64 x 1" in outcome()["reason"]
    assert orthanc.get_bytes(f"/instances/{instance_id}/file") == dicom
    assert orthanc.memory_mib()[1] - peak_before < 200, "Orthanc's peak memory grew by hundreds of MiB"
