"""The imaging router: the body-part model decides which models run and where each image is forwarded.

Three real Orthanc processes: the plugin's, and two plain Orthancs as DICOM destinations (chest AI and
spine AI), registered in the first one's "DicomModalities". The router here is a small test model that
calls bright radiographs "chest", dark ones "spine" and mid-grey ones "other"; a second-stage "chest
pathology" model is routed by it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from orthanc_ai.config import DEFAULT_PRIVATE_CREATOR
from orthanc_ai.dicom.private_tags import read_results
from tests.support.dicom_files import read, secondary_capture, synthetic_ct
from tests.support.onnx_models import build_model
from tests.support.orthanc_process import OrthancProcess, stop_all

ROUTER = "test-router"


@pytest.fixture(scope="module")
def router_models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("router-models")
    build_model(folder, ROUTER, ["chest", "spine", "other"], {"Modality": ["CR", "DX"]},
                brightness_weights=[(4.0, 0.0), (-4.0, 0.0), (0.0, 2.0)])
    build_model(folder, "test-chest-pathology", ["Normal", "Abnormal"], {"Modality": ["CR", "DX"]}, seed=7,
                routed_by={"model": ROUTER, "classes": ["chest"], "min_probability": 0.5})
    build_model(folder, "test-ct", ["Benign", "Malignant", "Normal"], {"Modality": ["CT"]}, seed=0)
    return folder


def radiograph(level: int, modality: str = "CR") -> bytes:
    return secondary_capture(np.full((64, 64), level, dtype=np.uint8), modality=modality)


def start_destination(tmp_path_factory, name: str) -> OrthancProcess:
    # A plain Orthanc (no plugin) acting as a downstream AI server.
    server = OrthancProcess(tmp_path_factory.mktemp(name), Path("/nonexistent"),
                            {"Plugins": [], "DicomAet": name, "Name": name})
    return server.start()


@pytest.fixture(scope="module")
def site(tmp_path_factory, router_models):
    chest = start_destination(tmp_path_factory, "CHESTAI")
    spine = start_destination(tmp_path_factory, "SPINEAI")
    rules = {
        "Rules": [
            {"Name": "chest-films", "Model": ROUTER, "Classes": ["chest"], "MinProbability": 0.5,
             "Forward": ["chest-ai"]},
            {"Name": "spine-films", "Model": ROUTER, "Classes": ["spine"], "Forward": ["spine-ai"]},
        ],
        "MaxAttempts": 30, "RetryDelaySeconds": 0.3, "MaxRetryDelaySeconds": 1.0,
    }
    main = OrthancProcess(tmp_path_factory.mktemp("main"), router_models, {
        "DicomModalities": {"chest-ai": ["CHESTAI", "127.0.0.1", chest.dicom_port],
                            "spine-ai": ["SPINEAI", "127.0.0.1", spine.dicom_port]},
    }, {"Routing": rules}).start()
    yield main, chest, spine
    stop_all([main, chest, spine])


def wait_for_instances(server: OrthancProcess, count: int, timeout: float = 60) -> list[str]:
    server.wait_until(lambda: len(server.get("/instances")) >= count, timeout, f"{count} instance(s) on {server.aet}")
    return server.get("/instances")


def models_in(server: OrthancProcess, instance_id: str) -> dict:
    dicom = server.get_bytes(f"/instances/{instance_id}/file")
    return {r.model: r for r in read_results(read(dicom), DEFAULT_PRIVATE_CREATOR)}


def test_radiographs_go_where_their_rules_say_and_ct_is_not_routed(site):
    main, chest, spine = site
    bright = main.store_http(radiograph(250, "CR"))["ID"]
    dark = main.store_http(radiograph(5, "DX"))["ID"]
    grey = main.store_http(radiograph(128, "CR"))["ID"]
    ct = main.store_http(synthetic_ct(seed=3))["ID"]

    [chest_copy] = wait_for_instances(chest, 1)
    [spine_copy] = wait_for_instances(spine, 1)
    main.wait_until(lambda: main.status()["routing"]["sent"] >= 2, 30, "both sends")
    time.sleep(1.0)  # nothing else may arrive
    assert len(chest.get("/instances")) == 1 and len(spine.get("/instances")) == 1

    # The destinations received the tagged instances, router result included.
    assert chest_copy == bright and spine_copy == dark  # same SOP Instance UID, hence same Orthanc id
    on_chest = models_in(chest, chest_copy)
    assert on_chest[ROUTER].top_class == "chest"
    assert "test-chest-pathology" in on_chest  # second stage ran before forwarding
    assert models_in(spine, spine_copy)[ROUTER].top_class == "spine"
    assert "test-chest-pathology" not in models_in(main, dark)  # not routed to the chest model

    assert set(models_in(main, grey)) == {ROUTER}  # "other": tagged, sent nowhere
    assert set(models_in(main, ct)) == {"test-ct"}  # a CT runs the CT model, never the X-ray router

    # The decision is audited and recorded on the instance.
    log = main.get(f"/ai/routing?instance={bright}")["entries"]
    assert [e["outcome"] for e in log] == ["queued", "sent"]
    assert log[-1]["rule"] == "chest-films" and log[-1]["target"] == "modality:chest-ai"
    record = json.loads(main.get_bytes(f"/instances/{bright}/metadata/AIRouting"))
    assert record["chest-films|modality:chest-ai"]["state"] == "sent"


def test_sent_once_per_rule_even_when_predicted_again(site):
    main, chest, _ = site
    instance = main.store_http(radiograph(240, "CR"))["ID"]
    main.wait_until(lambda: [e["outcome"] for e in main.get(f"/ai/routing?instance={instance}")["entries"]]
                    == ["queued", "sent"], 30, "first send")
    sent = main.status()["routing"]["sent"]
    status, _ = main.post_json(f"/ai/instances/{instance}/predict", {"models": [ROUTER]})
    assert status == 200
    time.sleep(1.5)
    assert main.status()["routing"]["sent"] == sent  # not sent again
    status, answer = main.post_json(f"/ai/instances/{instance}/route", {"resend": True})
    assert status == 200 and answer["rules"] == ["chest-films"]
    main.wait_until(lambda: main.status()["routing"]["sent"] == sent + 1, 30, "the resend")


def test_destination_down_during_a_burst_gets_everything_exactly_once(site):
    main, chest, _ = site
    before = set(chest.get("/instances"))
    chest.stop()
    burst = [main.store_http(radiograph(230 + n % 20, "DX"))["ID"] for n in range(20)]
    main.wait_until(lambda: main.status()["routing"]["retries"] > 0, 60, "failed sends to be retried")
    retries_while_down = main.status()["routing"]["retries"]
    chest.start()
    main.wait_until(lambda: set(burst) <= set(chest.get("/instances")), 120, "the burst to arrive")
    main.wait_until(lambda: main.status()["routing"]["inFlight"] == 0, 60, "no send in flight")
    arrived = set(chest.get("/instances")) - before
    assert arrived == set(burst)
    sends = [e for e in main.get("/ai/routing?limit=10000")["entries"]
             if e["instance"] in burst and e["outcome"] == "sent"]
    assert sorted(e["instance"] for e in sends) == sorted(burst)  # one successful send each
    assert max(e["attempts"] for e in sends) > 1
    print(f"\n20 instances sent while the destination was down: {retries_while_down} retries before it came back; "
          f"status {main.status()['routing']}")


@pytest.mark.parametrize("stop", ["kill -9", "SIGTERM"])
def test_sends_queued_when_orthanc_stops_are_delivered_once_after_the_restart(tmp_path_factory, router_models, stop):
    """Orthanc killed (or stopped) while its sends wait for a destination that is down: after the restart
    every instance reaches the destination, each exactly once."""
    destination = OrthancProcess(tmp_path_factory.mktemp("late"), Path("/nonexistent"),
                                 {"Plugins": [], "DicomAet": "LATEAI", "Name": "LATEAI"})
    rules = {"Rules": [{"Name": "chest-films", "Model": ROUTER, "Classes": ["chest"], "Forward": ["late-ai"]}],
             "MaxAttempts": 1000, "RetryDelaySeconds": 0.3, "MaxRetryDelaySeconds": 1.0}
    main = OrthancProcess(tmp_path_factory.mktemp("main"), router_models, {
        "DicomModalities": {"late-ai": ["LATEAI", "127.0.0.1", destination.dicom_port]},
    }, {"Routing": rules, "EnabledModels": [ROUTER]}).start()
    try:
        main.wait_until(lambda: main.status()["queueLength"] == 0, 10, "start-up")
        time.sleep(6)  # the first checkpoint (a first start begins at the end of the change log)
        burst = [main.store_http(radiograph(230 + n % 20, "DX"))["ID"] for n in range(20)]
        main.wait_until(lambda: main.status()["predicted"] == 20 and main.status()["routing"]["retries"] >= 20,
                        60, "every send to fail once")
        assert main.status()["routing"]["inFlight"] == 20
        if stop == "kill -9":
            main.kill()
        else:
            assert main.stop() == 0
        destination.start()
        main.start()
        main.wait_until(lambda: set(burst) <= set(destination.get("/instances")), 120, "the burst to arrive")
        main.wait_until(lambda: main.status()["routing"]["inFlight"] == 0, 60, "no send in flight")
        time.sleep(2)  # a duplicate would arrive now
        received = [c["ID"] for c in destination.get("/changes?limit=1000")["Changes"]
                    if c["ChangeType"] == "NewInstance"]
        assert sorted(received) == sorted(burst), "each instance received exactly once"
        assert main.status()["routedAgainAtStartup"] == 20
        for instance_id in burst:
            record = json.loads(main.get_bytes(f"/instances/{instance_id}/metadata/AIRouting"))
            assert record["chest-films|modality:late-ai"]["state"] == "sent", record
    finally:
        stop_all([main, destination])


def test_find_by_result(site):
    main, _, _ = site
    answer = main.get(f"/ai/find?model={ROUTER}&class=spine&minProbability=0.5")
    assert answer["matches"] and all(m["topClass"] == "spine" for m in answer["matches"])
    if answer["searched"]["by"] == "scan":  # Orthanc 1.10: every instance visited, and said so
        assert answer["searched"]["instances"] == len(main.get("/instances"))
    studies = main.get(f"/ai/find?model={ROUTER}&class=chest&level=studies")["matches"]
    assert studies and all(isinstance(s, str) for s in studies)
    status, _ = main.request("GET", "/ai/find?class=chest")
    assert status == 400


def test_structured_report_follows_the_images_it_reports(site):
    main, chest, spine = site
    answer = main.store_http(radiograph(245, "DX"))
    main.wait_until(lambda: answer["ID"] in chest.get("/instances"), 30, "the radiograph at the chest AI")
    spine_before = set(spine.get("/instances"))

    status, predicted = main.post_json(f"/ai/series/{answer['ParentSeries']}/predict", {"force": False})
    assert status == 200
    [report] = predicted["reports"]
    assert report["state"] == "written" and set(report["reports"]) == {ROUTER, "test-chest-pathology"}
    for model, report_id in report["reports"].items():
        main.wait_until(lambda report_id=report_id: report_id in chest.get("/instances"), 30,
                        f"the {model} SR at the chest AI")
        tags = chest.get(f"/instances/{report_id}/simplified-tags")
        assert (tags["Modality"], tags["SeriesDescription"].split()[1]) == ("SR", model)
        main.wait_until(lambda report_id=report_id: [(e["outcome"], e["rule"]) for e in main.get(
            f"/ai/routing?instance={report_id}")["entries"]] == [("queued", "chest-films"), ("sent", "chest-films")],
                        30, f"the audit of the {model} SR's send")
    time.sleep(1.0)
    assert set(spine.get("/instances")) == spine_before, "nothing went where the image did not"


def test_a_heatmap_capture_goes_where_its_image_went(tmp_path_factory):
    """With heatmap Secondary Captures on, each capture is sent to the destinations its image's rules chose
    (as an SR follows its images), with the same audit; the capture of an image no rule sends stays."""
    models = tmp_path_factory.mktemp("heat-router-models")
    build_model(models, ROUTER, ["chest", "spine", "other"], {"Modality": ["CR", "DX"]},
                brightness_weights=[(4.0, 0.0), (-4.0, 0.0), (0.0, 2.0)], heatmap=True)
    chest = start_destination(tmp_path_factory, "CHESTAI")
    rules = {"Rules": [{"Name": "chest-films", "Model": ROUTER, "Classes": ["chest"], "Forward": ["chest-ai"]}],
             "RetryDelaySeconds": 0.3}
    main = OrthancProcess(tmp_path_factory.mktemp("main"), models, {
        "DicomModalities": {"chest-ai": ["CHESTAI", "127.0.0.1", chest.dicom_port]},
    }, {"Routing": rules, "Outputs": {"HeatmapSecondaryCapture": True}}).start()
    try:
        bright = main.store_http(radiograph(250, "CR"))
        main.store_http(radiograph(128, "DX"))  # "other": no rule sends it
        main.wait_until(lambda: main.status()["heatmapSecondaryCaptures"]["outcomes"].get("written", 0) == 2, 60,
                        "both captures written")
        [capture_series] = [s for s in main.get(f"/studies/{bright['ParentStudy']}/series")
                            if s["MainDicomTags"].get("SeriesDescription") == f"AI heatmap: {ROUTER}"]
        [capture] = capture_series["Instances"]
        main.wait_until(lambda: [(e["outcome"], e["rule"]) for e in main.get(f"/ai/routing?instance={capture}")[
            "entries"]] == [("queued", "chest-films"), ("sent", "chest-films")], 30, "the audit of the capture's send")
        time.sleep(1.0)  # the other image's capture would arrive now
        assert sorted(chest.get("/instances")) == sorted([bright["ID"], capture])
        sent = read(chest.get_bytes(f"/instances/{capture}/file"))
        assert sent.SourceImageSequence[0].ReferencedSOPInstanceUID == read(
            main.get_bytes(f"/instances/{bright['ID']}/file")).SOPInstanceUID
    finally:
        stop_all([main, chest])


def test_bad_rules_refuse_to_start(start_orthanc, router_models):
    server = start_orthanc(models=router_models, expect_failure=True,
                           plugin={"Routing": {"Rules": [{"Name": "x", "Model": "no-such-model", "Classes": ["a"]}]}})
    server.process.wait(30)
    assert 'routing rule "x": model "no-such-model" is not loaded' in server.log_text()
