"""The queue between Orthanc's change callback and the workers."""
from __future__ import annotations

import threading
import time

from orthanc_ai.events.instance_guards import EchoGuard, InstanceLocks
from orthanc_ai.events.work_queue import PredictionQueue
from orthanc_ai.status import PluginStatus, reason_category


def make_queue(process, workers=1, capacity=100):
    echoes, status = EchoGuard(), PluginStatus()
    return PredictionQueue(process, echoes, status, workers, capacity), echoes, status


def test_echo_of_our_own_store_is_not_queued():
    seen = []
    work_queue, echoes, status = make_queue(seen.append)
    echoes.expect("a")
    work_queue.on_new_instance("a")
    work_queue.on_new_instance("b")
    assert work_queue.length == 1 and status.echoes_ignored == 1
    work_queue.on_new_instance("a")  # a second event is a real new store
    assert work_queue.length == 2


def test_pending_instance_is_queued_once_and_queue_full_is_counted():
    work_queue, _, status = make_queue(lambda _: None, capacity=2)
    assert work_queue.submit("a") and not work_queue.submit("a")
    assert work_queue.submit("b") and not work_queue.submit("c")
    assert status.dropped == 1


def test_workers_process_everything_and_stop():
    done, gate = [], threading.Event()

    def process(instance_id):
        gate.wait(5)
        done.append(instance_id)

    work_queue, _, _ = make_queue(process, workers=2)
    work_queue.start()
    for number in range(20):
        work_queue.submit(str(number))
    gate.set()
    deadline = time.monotonic() + 5
    while len(done) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    work_queue.stop(timeout=5)
    assert sorted(done, key=int) == [str(n) for n in range(20)]


def test_stop_leaves_the_rest_of_the_queue():
    work_queue, _, _ = make_queue(lambda _: time.sleep(0.05))
    for number in range(50):
        work_queue.submit(str(number))
    work_queue.start()
    work_queue.stop(timeout=5)
    assert work_queue.length == 0


def test_instance_locks_serialise_one_instance_only():
    locks, order = InstanceLocks(), []

    def hold(name, instance, pause):
        with locks.hold(instance):
            order.append(f"{name}+")
            time.sleep(pause)
            order.append(f"{name}-")

    first = threading.Thread(target=hold, args=("a", "x", 0.1))
    first.start()
    time.sleep(0.02)
    hold("b", "x", 0)
    first.join()
    assert order == ["a+", "a-", "b+", "b-"]
    assert not locks._locks  # no lock left behind


def test_reason_categories_are_stable():
    assert reason_category("image too large: 46341 x 46341 pixels") == "image too large"
    assert reason_category("no pixel data (Modality SR)") == "no pixel data"
