"""Replaying Orthanc's change log after a crash (the real kill -9 test is in tests/integration)."""
from __future__ import annotations

import json

from orthanc_ai.events.recovery import BacklogRecovery


class FakeChangeLog:
    def __init__(self, changes, statuses, checkpoint=""):
        self.log = changes  # list of (seq, type, id)
        self.statuses = statuses
        self.checkpoint = checkpoint

    def last_change(self):
        return self.log[-1][0] if self.log else 0

    def changes(self, since, limit):
        page = [c for c in self.log if c[0] > since][:limit]
        return {"Changes": [{"Seq": s, "ChangeType": t, "ID": i} for s, t, i in page],
                "Done": not page or page[-1][0] == self.last_change(), "Last": page[-1][0] if page else since}

    def instance_metadata(self, instance_id):
        return {"AIStatus": "{}"} if instance_id in self.statuses else {}

    def get_checkpoint(self):
        return self.checkpoint

    def set_checkpoint(self, value):
        self.checkpoint = value


def test_first_start_does_not_process_the_archive():
    log = FakeChangeLog([(1, "NewInstance", "a"), (2, "NewInstance", "b")], statuses=set())
    queued = []
    recovery = BacklogRecovery(log, "node1", lambda i: queued.append(i) or True, lambda: True)
    assert recovery.replay() == 0 and queued == []
    assert json.loads(log.checkpoint) == {"node1": 2}


def test_instances_without_outcome_since_the_checkpoint_are_queued_once():
    changes = [(1, "NewInstance", "old"), (2, "NewInstance", "done"), (3, "NewSeries", "s"),
               (4, "NewInstance", "lost"), (5, "NewInstance", "lost"), (6, "NewInstance", "lost2")]
    log = FakeChangeLog(changes, statuses={"done"}, checkpoint=json.dumps({"node1": 1, "node2": 5}))
    queued = []
    recovery = BacklogRecovery(log, "node1", lambda i: queued.append(i) or True, lambda: True)
    assert recovery.replay() == 2
    assert queued == ["lost", "lost2"]


def test_checkpoint_moves_only_after_a_full_idle_period():
    log = FakeChangeLog([(1, "NewInstance", "a")], statuses=set(), checkpoint=json.dumps({"n": 0}))
    idle = [True]
    recovery = BacklogRecovery(log, "n", lambda i: True, lambda: idle[0])
    mark = recovery._advance(None)  # first idle tick: remembers the end of the log
    assert json.loads(log.checkpoint) == {"n": 0} and mark == 1
    log.log.append((2, "NewInstance", "b"))
    idle[0] = False
    assert recovery._advance(mark) is None  # busy: nothing written, mark dropped
    idle[0] = True
    mark = recovery._advance(None)
    recovery._advance(mark)
    assert json.loads(log.checkpoint) == {"n": 2}
