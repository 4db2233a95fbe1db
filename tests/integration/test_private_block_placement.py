"""Our private creator takes the next free slot of group 0055 when another vendor holds (0055,0010)."""
from __future__ import annotations

from orthanc_ai.config import DEFAULT_PRIVATE_CREATOR
from orthanc_ai.dicom.private_tags import read_results
from tests.support.dicom_files import read, synthetic_ct, to_bytes


def test_block_goes_to_next_free_slot_and_other_vendor_block_is_kept(orthanc):
    ds = read(synthetic_ct(seed=40))
    vendor = ds.private_block(0x0055, "OTHER VENDOR", create=True)
    vendor.add_new(0x01, "LO", "vendor value")
    original = to_bytes(ds)
    instance_id = orthanc.store_http(original)["ID"]
    orthanc.wait_until(lambda: "AIStatus" in orthanc.get(f"/instances/{instance_id}/metadata"), 30, "prediction")

    stored = read(orthanc.get_bytes(f"/instances/{instance_id}/file"))
    assert stored[0x00550010].value == "OTHER VENDOR"
    assert stored[0x00551001].value == "vendor value"
    assert stored[0x00550011].value == DEFAULT_PRIVATE_CREATOR
    assert {r.model for r in read_results(stored, DEFAULT_PRIVATE_CREATOR)} == {"test-ct", "test-any"}
    # Orthanc knows our names and VRs in that block too.
    tags = orthanc.get(f"/instances/{instance_id}/tags")
    assert tags["0055,1110"]["Name"] in ("AIModel01Name",)
    assert tags["0055,1110"]["Value"] in ("test-ct", "test-any")
