"""Routing rules and the forwarder's retry logic, without Orthanc (the real path is
tests/integration/test_router.py)."""
from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from orthanc_ai.dicom.private_tags import ModelResult
from orthanc_ai.orthanc.capabilities import OrthancCapabilities
from orthanc_ai.outputs.forwarding import Forwarder
from orthanc_ai.outputs.routing import Destination, RoutingRuleError, check_destinations, decide, parse_routing

RULES = {"Rules": [
    {"Name": "chest", "Model": "router", "Classes": ["chest"], "MinProbability": 0.8, "Forward": ["cxr"],
     "Labels": ["chest-film"]},
    {"Name": "malignant", "Model": "lung", "Classes": ["Malignant"], "ForwardToPeers": ["oncology"]},
], "MaxAttempts": 3, "RetryDelaySeconds": 1, "MaxRetryDelaySeconds": 3}


def result(model: str, top: str, p: float) -> ModelResult:
    classes = (top, "rest")
    return ModelResult(model, "1", "d", datetime.now(UTC), classes, (p, 1 - p))


def test_rules_fire_on_class_and_threshold():
    policy = parse_routing(RULES, ["router", "lung"])
    assert [d.rule.name for d in decide(policy, [result("router", "chest", 0.9)])] == ["chest"]
    assert decide(policy, [result("router", "chest", 0.7)]) == []  # below MinProbability
    assert decide(policy, [result("router", "spine", 0.99)]) == []
    [decision] = decide(policy, [result("lung", "Malignant", 0.51)])
    assert decision.destinations == (Destination("peer", "oncology"),)


@pytest.mark.parametrize("change, message", [
    ({"Rules": [{"Name": "a", "Model": "x", "Classes": ["c"]}]}, 'model "x" is not loaded'),
    ({"Rules": [{"Name": "a", "Model": "router", "Classes": []}]}, "at least one class"),
    ({"Rules": [{"Name": "a", "Model": "router", "Classes": ["c"], "MinProbability": 2}]}, "from 0 to 1"),
    ({"Rules": [{"Name": "a", "Model": "router", "Classes": ["c"], "Forwards": ["x"]}]}, "unknown key(s) Forwards"),
    ({"Rules": [{"Name": "a", "Model": "router", "Classes": ["c"], "Labels": ["bad label"]}]}, "labels may only"),
    ({"Rules": [{"Name": "a", "Model": "router", "Classes": ["c"]}] * 2}, "unique"),
    ({"Rulez": []}, "unknown key(s)"),
    ({"Rules": [], "MaxAttempts": 0}, "MaxAttempts"),
])
def test_bad_rules_are_refused_with_the_rule_named(change, message):
    with pytest.raises(RoutingRuleError) as error:
        parse_routing(change, ["router", "lung"])
    assert message in str(error.value)


def test_unknown_destinations_are_reported():
    policy = parse_routing(RULES, ["router", "lung"])
    problems = check_destinations(policy, ["cxr"], [])
    assert problems == ['routing rule "malignant": peer "oncology" is not declared in Orthanc (known: none)']


def test_back_off_doubles_up_to_the_cap():
    policy = parse_routing(RULES, ["router", "lung"])
    assert [policy.retry_delay(n) for n in (1, 2, 3, 4)] == [1, 2, 3, 3]


class FakeJobs:
    def __init__(self, outcomes):
        self.outcomes = list(outcomes)  # job states to hand out, in order
        self.started = []
        self.cancelled = []
        self.metadata = {}
        self.writes = 0

    def start_store_job(self, destination, instance_id):
        self.started.append((str(destination), instance_id))
        return f"job{len(self.started)}"

    def job_state(self, job_id):
        return self.outcomes.pop(0), "connection refused"

    def cancel_job(self, job_id):
        self.cancelled.append(job_id)

    def instance_metadata(self, instance_id):
        return dict(self.metadata)

    def set_instance_metadata(self, instance_id, name, value):
        self.metadata[name] = value
        self.writes += 1

    def system(self):
        return {"Version": "1.10.1", "CheckRevisions": True}


def test_failed_send_is_retried_with_back_off_then_reported():
    api = FakeJobs(["Failure", "Failure", "Failure"])
    policy = parse_routing({**RULES, "Rules": RULES["Rules"][:1]}, ["router"])
    forwarder = Forwarder(api, policy, capabilities=OrthancCapabilities(api.system))
    entries = forwarder.route("i1", decide(policy, [result("router", "chest", 0.9)]))
    assert [e["outcome"] for e in entries] == ["not labelled: this Orthanc has no labels (1.12 and later)", "queued"]
    now = 100.0
    for _ in range(3):
        forwarder.step(now)  # start
        forwarder.step(now)  # poll: failure
        now += 10
    status = forwarder.status()
    assert status["failed"] == 1 and status["retries"] == 2 and status["inFlight"] == 0
    assert len(api.started) == 3
    assert '"state": "failed"' in api.metadata["AIRouting"]


def test_successful_send_is_not_repeated():
    api = FakeJobs(["Success"])
    policy = parse_routing({**RULES, "Rules": RULES["Rules"][:1]}, ["router"])
    forwarder = Forwarder(api, policy, capabilities=OrthancCapabilities(api.system))
    decisions = decide(policy, [result("router", "chest", 0.9)])
    forwarder.route("i1", decisions)
    forwarder.step(0)
    forwarder.step(0)
    assert forwarder.status()["sent"] == 1
    again = forwarder.route("i1", decisions)
    assert again[-1]["outcome"] == "already sent"
    assert forwarder.route("i1", decisions, resend=True)[-1]["outcome"] == "queued"


def test_an_instance_s_sends_are_recorded_in_one_write_once_all_have_finished():
    api = FakeJobs(["Running", "Success", "Success"])
    policy = parse_routing({"Rules": [{"Name": "chest", "Model": "router", "Classes": ["chest"],
                                       "Forward": ["cxr", "archive"]}]}, ["router"])
    forwarder = Forwarder(api, policy, capabilities=OrthancCapabilities(api.system))
    decisions = decide(policy, [result("router", "chest", 0.9)])
    forwarder.route("i1", decisions)
    forwarder.step(0)  # both jobs start
    forwarder.step(0)  # one still running, one sent: nothing recorded yet
    assert api.writes == 0 and not forwarder.idle
    forwarder.step(0)
    assert forwarder.idle and api.writes == 1
    assert len(json.loads(api.metadata["AIRouting"])) == 2


def test_running_jobs_are_cancelled_at_stop():
    api = FakeJobs(["Running"])
    policy = parse_routing({**RULES, "Rules": RULES["Rules"][:1]}, ["router"])
    forwarder = Forwarder(api, policy, capabilities=OrthancCapabilities(api.system))
    forwarder.route("i1", decide(policy, [result("router", "chest", 0.9)]))
    forwarder.step(0)
    forwarder.stop()
    assert api.cancelled == ["job1"]
