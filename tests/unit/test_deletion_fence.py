"""The deletion fence: a store-back never follows a deletion it could undo (the race itself: tests/integration)."""
from __future__ import annotations

import threading
import time

import pytest
from pydicom import Dataset

from orthanc_ai.events.deletion_fence import ANY_RESOURCE, DeletedMeanwhile, DeletionFence
from orthanc_ai.orthanc.orthanc_ids import OrthancIds, orthanc_ids

IDS = OrthancIds("patient-a", "study-a", "series-a", "instance-a")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 1.0) -> None:
        self.now += seconds


def store(fence: DeletionFence, ticket: float, ids: OrthancIds | None = IDS) -> bool:
    """True when the fence lets the store-back happen."""
    try:
        with fence.store_back(ticket, ids, "instance-a"):
            return True
    except DeletedMeanwhile:
        return False


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fence(clock: Clock) -> DeletionFence:
    return DeletionFence(pending_seconds=30, clock=clock)


def test_orthanc_ids_are_sha1_of_the_identifiers_in_orthancs_format():
    ds = Dataset()
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "P1 ", "1.2", "1.2.3", "1.2.3.4"
    ids = orthanc_ids(ds)
    # The values themselves are checked against Orthanc's own ids in tests/integration/test_deletion_race.py.
    assert all(len(part) == 8 for part in ids.patient.split("-")) and len(ids.patient.split("-")) == 5
    assert ids.patient == orthanc_ids(_with_patient("P1")).patient  # trailing padding is not part of the id
    assert len(set(ids.all())) == 4


def _with_patient(patient_id: str) -> Dataset:
    ds = Dataset()
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = patient_id, "1.2", "1.2.3", "1.2.3.4"
    return ds


def test_nothing_deleted_lets_the_store_back_happen(fence, clock):
    assert store(fence, fence.ticket())


@pytest.mark.parametrize("target", ["patient-a", "study-a", "series-a", "instance-a", ANY_RESOURCE])
def test_a_deletion_request_for_the_instance_or_a_parent_refuses_it(fence, clock, target):
    ticket = fence.ticket()
    clock.tick()
    fence.on_deletion_request(target)
    assert not store(fence, ticket)


def test_a_deletion_request_for_another_resource_does_not(fence, clock):
    ticket = fence.ticket()
    clock.tick()
    fence.on_deletion_request("patient-b")
    fence.on_deleted("instance-b")
    assert store(fence, ticket)


def test_a_deletion_requested_before_the_read_but_not_yet_run_refuses_it(fence, clock):
    fence.on_deletion_request("study-a")  # Orthanc runs the deletion after its filter returns
    clock.tick()
    ticket = fence.ticket()
    assert not store(fence, ticket)
    clock.tick()
    fence.on_deleted("study-a")  # ... it ran: still refused for a read made before it
    assert not store(fence, ticket)
    clock.tick()
    assert store(fence, fence.ticket())  # a read after the deletion is of a new instance


def test_a_request_that_deletes_nothing_stops_fencing_after_the_pending_time(fence, clock):
    fence.on_deletion_request("series-a")
    clock.tick(31)
    assert store(fence, fence.ticket())


def test_a_bulk_delete_fences_everything_until_its_deleted_changes_stop(fence, clock):
    fence.on_deletion_request(ANY_RESOURCE)
    clock.tick(1)
    fence.on_deleted("instance-b")  # the bulk delete at work
    clock.tick(1.5)
    assert not store(fence, fence.ticket())
    clock.tick(1)  # 2.5 s without a Deleted change: it is over
    assert store(fence, fence.ticket())


def test_a_deleted_change_after_the_read_refuses_it_one_before_does_not(fence, clock):
    fence.on_deleted("instance-a")
    clock.tick()
    ticket = fence.ticket()
    assert store(fence, ticket)  # a deletion before the read does not concern it
    clock.tick()
    fence.on_deleted("instance-a")  # the Deleted change of that store-back's own overwrite: not a deletion
    assert fence.refused == 0
    clock.tick()
    fence.on_deleted("instance-a")  # a real one
    assert not store(fence, ticket)
    assert fence.refused == 1


def test_unknown_parents_make_any_deletion_request_count(fence, clock):
    ticket = fence.ticket()
    clock.tick()
    fence.on_deletion_request("patient-b")
    assert not store(fence, ticket, ids=None)


def test_a_failed_store_back_expects_no_deleted_change_of_its_own(fence, clock):
    ticket = fence.ticket()
    with pytest.raises(RuntimeError), fence.store_back(ticket, IDS, "instance-a"):
        raise RuntimeError("POST refused")
    clock.tick()
    fence.on_deleted("instance-a")
    assert not store(fence, ticket)


def test_the_deletion_request_waits_for_the_store_back_under_way():
    fence = DeletionFence()
    inside, leave, events = threading.Event(), threading.Event(), []

    def store_back() -> None:
        with fence.store_back(fence.ticket(), IDS, "instance-a"):
            inside.set()
            leave.wait(5)
            events.append("stored")

    worker = threading.Thread(target=store_back)
    worker.start()
    inside.wait(5)
    deleter = threading.Thread(target=lambda: (fence.on_deletion_request("patient-a"), events.append("deleting")))
    deleter.start()
    time.sleep(0.2)
    assert events == []  # the deletion waits ...
    leave.set()
    worker.join(5)
    deleter.join(5)
    assert events == ["stored", "deleting"]  # ... so it deletes the stored copy, never the other way round


def test_an_own_overwrite_whose_deleted_change_never_came_is_forgotten(fence, clock):
    assert store(fence, fence.ticket())  # its Deleted change never comes (say, the instance was recreated)
    clock.tick(601)
    ticket = fence.ticket()
    clock.tick()
    fence.on_deleted("instance-a")  # so this one is a real deletion, not taken for ours
    assert not store(fence, ticket)


def test_a_new_instance_beside_the_source_counts_only_the_sources_deleted_change(fence, clock):
    """A heatmap Secondary Capture: our own overwrite of a one-image study signals its series, study and patient as
    deleted (emptied, then created again); those must not refuse it. The source's own deletion, and any deletion
    request of its parents, still do; and the store expects no Deleted change of an overwrite."""

    def beside(ticket: float) -> bool:
        try:
            with fence.store_back(ticket, IDS, "instance-a", overwrite=False):
                return True
        except DeletedMeanwhile:
            return False

    ticket = fence.ticket()
    clock.tick()
    for parent in ("series-a", "study-a", "patient-a"):
        fence.on_deleted(parent)
    assert beside(ticket)
    assert not store(fence, ticket), "a store-back still counts them"
    fence.on_deleted("instance-a")
    assert not beside(ticket), "the source itself was deleted"
    later = fence.ticket()
    clock.tick()
    fence.on_deletion_request("study-a")
    assert not beside(later), "a deletion of its study is under way"
    fence.on_deleted("study-a")
    clock.tick()
    assert beside(fence.ticket())
    fence.on_deleted("instance-a")  # no overwrite of ours to forget: a deletion like any other
    assert not beside(later)
