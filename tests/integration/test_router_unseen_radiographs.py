"""The shipped body-part router on real CR films from sources it never saw in training.

Full-size MONOCHROME1 films, stored by C-STORE exactly as published (no re-encoding): two from
pydicom's test-file store (the `pydicom-data` package, a test dependency) and one from Orthanc's own
test files in ../shared/data. The router's result is read back from the private tags Orthanc serves.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from orthanc_ai.config import DEFAULT_PRIVATE_CREATOR
from orthanc_ai.dicom.private_tags import read_results
from tests.support.dicom_files import ROBUSTNESS, read
from tests.support.orthanc_process import PROJECT, OrthancProcess, stop_all

ROUTER = "xray-bodypart"
# file → the classes a radiologist accepts for it (what the image shows, read from its header and by eye)
FILMS = {
    # CR THORAX, PA chest of a woman born 1940, 1955x1841, 15-bit, MONOCHROME1
    "RG1_UNCR.dcm": {"adult-chest"},
    # CR EXTREMITY, "Non-ossifying fibroma of distal tibia", 1760x1760, 10-bit, MONOCHROME1
    "RG3_UNCR.dcm": {"other"},
    # CR PA chest, no age in the header, 2446x2010, JPEG baseline, MONOCHROME1 (Orthanc issue 44)
    "Issue44/Monochrome1-Jpeg.dcm": {"adult-chest", "pediatric-chest"},
}


def film_path(name: str) -> Path | None:
    if "/" in name:
        path = ROBUSTNESS / name
        return path if path.is_file() else None
    found = get_testdata_file(name)  # only with the pydicom-data package installed
    return Path(found) if found else None


@pytest.mark.slow
def test_unseen_cr_films_get_the_right_body_part(tmp_path):
    if not (PROJECT / "models" / ROUTER / "model.onnx").is_file():
        pytest.skip(f"models/{ROUTER} is not shipped")
    films = {name: film_path(name) for name in FILMS}
    missing = [name for name, path in films.items() if path is None]
    if len(missing) == len(films):
        pytest.skip(f"none of the films is available (pydicom-data not installed, ../shared/data absent): {missing}")
    films = {name: path for name, path in films.items() if path is not None}
    by_uid = {read(path.read_bytes(), stop_before_pixels=True).SOPInstanceUID: name for name, path in films.items()}

    orthanc = OrthancProcess(tmp_path, PROJECT / "models").start()
    try:
        # -xy: also propose JPEG baseline, or storescu cannot send the JPEG film without re-encoding it
        stored = orthanc.store_cstore(list(films.values()), storescu_options=("-xy",))
        assert stored.returncode == 0, stored.stderr
        status = orthanc.wait_idle(len(films), timeout=180)
        assert status["failed"] == 0, orthanc.log_tail()
        verdicts = {}
        for instance_id in orthanc.get("/instances"):
            stored = read(orthanc.get_bytes(f"/instances/{instance_id}/file"))
            name = by_uid[stored.SOPInstanceUID]
            results = {r.model: r for r in read_results(stored, DEFAULT_PRIVATE_CREATOR)}
            assert ROUTER in results, f"{name}: no {ROUTER} result in the tags; log:\n{orthanc.log_tail()}"
            router = results[ROUTER]
            verdicts[name] = (router.top_class, round(router.top_probability, 3))
            original = read(films[name].read_bytes())
            assert stored.PixelData == original.PixelData  # the film itself is untouched
        print("\n" + "\n".join(f"{name}: {verdict}" for name, verdict in sorted(verdicts.items())))
        if missing:
            print(f"not available here: {missing}")
        assert set(verdicts) == set(films)
        wrong = {name: verdict for name, verdict in verdicts.items() if verdict[0] not in FILMS[name]}
        assert not wrong, f"wrong body part: {wrong} (accepted: { {n: FILMS[n] for n in wrong} })"
    finally:
        stop_all([orthanc])
