"""Two Orthanc nodes on one PostgreSQL database: every instance predicted exactly once, nothing lost."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from orthanc_ai.config import DEFAULT_PRIVATE_CREATOR
from orthanc_ai.dicom.private_tags import read_results
from tests.support.dicom_files import read, synthetic_ct
from tests.support.orthanc_process import OrthancProcess, stop_all
from tests.support.postgres import PostgresServer, postgres_bin

INSTANCES = 300
PG_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so")


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    if postgres_bin() is None or not PG_PLUGIN.exists():
        pytest.skip("needs Debian's postgresql and orthanc-postgresql packages (make test installs them)")
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.mark.slow
def test_300_instances_alternately_to_two_nodes(postgres, test_models, tmp_path_factory):
    # "CheckRevisions" makes the per-instance claim exclusive across nodes.
    cluster = {**postgres.orthanc_settings(), "CheckRevisions": True}
    nodes = [OrthancProcess(tmp_path_factory.mktemp(f"node{n}"), test_models, {**cluster, "Name": f"node-{n}"})
             for n in range(2)]
    try:
        for node in nodes:
            node.start()
        for number in range(INSTANCES):
            nodes[number % 2].store_http(synthetic_ct(seed=5000 + number, rows=128, columns=128))

        def settled() -> bool:
            states = [node.status() for node in nodes]
            done = sum(s["predicted"] + s["skipped"] + s["failed"] for s in states)
            return done >= INSTANCES and all(s["queueLength"] == 0 and s["inProgress"] == 0 for s in states)

        nodes[0].wait_until(settled, 300, "both nodes to finish")
        statuses = [node.status() for node in nodes]
        print("\n" + "\n".join(f"{node.config['Name']}: predicted {s['predicted']}, unchanged {s['unchanged']}, "
                               f"claimed elsewhere {s['claimedElsewhere']}, failed {s['failed']}, "
                               f"problems {s['recentProblems']}"
                               for node, s in zip(nodes, statuses, strict=True)))
        assert sum(s["predicted"] for s in statuses) == INSTANCES  # exactly once across the nodes
        assert all(s["failed"] == 0 and s["skipped"] == 0 for s in statuses)

        # Both nodes see the same 300 instances, each with one block per model.
        for node in nodes:
            assert len(node.get("/instances")) == INSTANCES
        for instance_id in nodes[0].get("/instances"):
            dicom = nodes[1].get_bytes(f"/instances/{instance_id}/file")
            tagged = read_results(read(dicom), DEFAULT_PRIVATE_CREATOR)
            assert sorted(r.model for r in tagged) == ["test-any", "test-ct"]
            assert json.loads(nodes[0].get_bytes(f"/instances/{instance_id}/metadata/AIStatus"))["state"] == "predicted"
    finally:
        stop_all(nodes)


@pytest.mark.slow
def test_node_killed_with_a_backlog_catches_up_on_restart(postgres, test_models, tmp_path_factory, tmp_path):
    cluster = {**postgres.orthanc_settings(), "CheckRevisions": True}
    nodes = [OrthancProcess(tmp_path_factory.mktemp(f"node{n}"), test_models, {**cluster, "Name": f"node-{n}"},
                            {"Workers": 1}) for n in range(2)]
    try:
        for node in nodes:
            node.start()
        time.sleep(6)  # let each node write its first change-log checkpoint
        files = []
        for number in range(200):
            path = tmp_path / f"{number}.dcm"
            path.write_bytes(synthetic_ct(seed=7000 + number, rows=256, columns=256))
            files.append(path)
        assert nodes[0].store_cstore(files[:100]).returncode == 0
        assert nodes[1].store_cstore(files[100:]).returncode == 0
        backlog = nodes[1].status()["queueLength"]
        nodes[1].kill()
        assert backlog > 0, "node-1 had no backlog to lose"

        nodes[1].start()
        every_instance_done = lambda: all(  # noqa: E731
            "AIStatus" in nodes[0].get(f"/instances/{i}/metadata") for i in nodes[0].get("/instances"))
        nodes[0].wait_until(every_instance_done, 300, "every instance to have an outcome")
        assert len(nodes[0].get("/instances")) == 200
        for instance_id in nodes[0].get("/instances"):
            dicom = nodes[0].get_bytes(f"/instances/{instance_id}/file")
            tagged = read_results(read(dicom), DEFAULT_PRIVATE_CREATOR)
            assert sorted(r.model for r in tagged) == ["test-any", "test-ct"]
        # node-1's replay also meets node-0's not yet finished instances: the claims keep it from doing them twice.
        print(f"\nnode-1 lost a backlog of {backlog}; after its restart it queued "
              f"{nodes[1].status()['recoveredAtStartup']} (claimed elsewhere: {nodes[1].status()['claimedElsewhere']})")
    finally:
        stop_all(nodes)


@pytest.mark.slow
def test_two_nodes_write_one_structured_report_per_series_and_model(postgres, test_models, tmp_path_factory):
    # Both nodes store half of one series, so both see it become stable and both report it.
    cluster = {**postgres.orthanc_settings(), "CheckRevisions": True, "StableAge": 2}
    nodes = [OrthancProcess(tmp_path_factory.mktemp(f"node{n}"), test_models, {**cluster, "Name": f"node-{n}"})
             for n in range(2)]
    try:
        for node in nodes:
            node.start()
        study, series = generate_uid(), generate_uid()
        for number in range(1, 21):
            nodes[number % 2].store_http(synthetic_ct(seed=9000 + number, study_uid=study, series_uid=series,
                                                      instance_number=number))
        study_id = nodes[0].store_http(synthetic_ct(seed=9000, study_uid=study, series_uid=series,
                                                    instance_number=21))["ParentStudy"]

        def report_series() -> dict[str, list[str]]:
            found: dict[str, list[str]] = {}
            for item in nodes[0].get(f"/studies/{study_id}/series"):
                if item["MainDicomTags"].get("Modality") == "SR":
                    found.setdefault(item["MainDicomTags"]["SeriesDescription"], []).extend(item["Instances"])
            return found

        nodes[0].wait_until(lambda: len(report_series()) == 2, 180, "an SR of each model")
        # Both nodes reported it (each saw it become stable); give the slower one time to finish.
        nodes[0].wait_until(lambda: sum(n.status()["structuredReports"]["outcomes"].get("written", 0)
                                        + n.status()["structuredReports"]["outcomes"].get("unchanged", 0)
                                        for n in nodes) >= 2, 60, "both nodes to report the series")
        time.sleep(3)
        outcomes = [node.status()["structuredReports"]["outcomes"] for node in nodes]
        print(f"\nSR outcomes per node: {outcomes}; SR series: {report_series()}")
        assert {description.split()[1]: len(ids) for description, ids in report_series().items()} == {
            "test-any": 1, "test-ct": 1}
    finally:
        stop_all(nodes)
