"""Sending routed instances through Orthanc's own jobs, with retries, and the audit of every decision.

Each (instance, rule, destination) becomes one asynchronous Orthanc store job
(``POST /modalities/{name}/store`` or ``/peers/{name}/store``), so a slow or
unreachable destination never blocks the plugin: a failed job is retried with
exponential back-off up to ``MaxAttempts``, then reported with Orthanc's
reason. Once every send of an instance has finished, the outcomes are recorded
in the instance's ``AIRouting`` metadata (one write: with "CheckRevisions" on,
Orthanc's plugin SDK can create a metadata but not change it), so the instance
is not sent there again when it is predicted again, unless a resend is asked for.

Sends live in memory; after a crash or a stop with sends queued, the change-log
replay (recovery.py) routes again every predicted instance since its checkpoint,
which does not move while sends are on their way, and ``AIRouting`` keeps what
was already delivered from being sent twice. At a clean stop the running jobs
are cancelled, so that Orthanc, which saves unfinished jobs and resumes them at
its next start, does not send them a second time beside the replay.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from ..config import METADATA_ROUTING
from ..events.background import BackgroundTask
from ..events.instance_guards import InstanceLocks
from ..orthanc.capabilities import OrthancCapabilities
from ..orthanc.orthanc_api import MetadataConflict
from .routing import Destination, RoutingDecision, RoutingPolicy

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
AUDIT_ENTRIES = 10_000


class ForwardingApi(Protocol):
    def start_store_job(self, destination: Destination, instance_id: str) -> str: ...
    def job_state(self, job_id: str) -> tuple[str, str]: ...
    def cancel_job(self, job_id: str) -> None: ...
    def instance_metadata(self, instance_id: str) -> dict[str, str]: ...
    def set_instance_metadata(self, instance_id: str, name: str, value: str) -> None: ...
    def instance_study(self, instance_id: str) -> str: ...
    def add_study_label(self, study_id: str, label: str) -> None: ...


@dataclass
class Send:
    instance_id: str
    decision: RoutingDecision
    destination: Destination
    decided_at: float = field(default_factory=time.monotonic)
    attempts: int = 0
    job: str | None = None
    due: float = 0.0
    state: str = "waiting"  # waiting | running | sent | failed
    reason: str = ""

    @property
    def key(self) -> str:
        return f"{self.decision.rule.name}|{self.destination}"


class Forwarder(BackgroundTask):
    thread_name = "orthanc-ai-forwarder"

    def __init__(self, api: ForwardingApi, policy: RoutingPolicy, locks: InstanceLocks | None = None,
                 capabilities: OrthancCapabilities | None = None) -> None:
        super().__init__()
        self.api = api
        self.policy = policy
        self.capabilities = capabilities or OrthancCapabilities(dict)
        # The pipeline's per-instance locks: the routing record is never written while the
        # instance is being re-stored (the overwrite would drop it).
        self._instance_locks = locks or InstanceLocks()
        self._lock = threading.Lock()
        self._active: dict[tuple[str, str], Send] = {}
        self._audit: deque[dict[str, Any]] = deque(maxlen=AUDIT_ENTRIES)
        self._counts: Counter[str] = Counter()
        self._finished: dict[str, list[Send]] = {}  # instance → its sends finished while others still run

    # --- decisions in ----------------------------------------------------
    def route(self, instance_id: str, decisions: list[RoutingDecision], resend: bool = False) -> list[dict[str, Any]]:
        """Queue the sends and labels of these decisions; returns the audit entries made now."""
        already = set() if resend else sent_keys(self.api.instance_metadata(instance_id))
        entries = []
        for decision in decisions:
            for label in decision.labels:
                outcome = self._label(instance_id, label)
                entries.append(self._audit_entry(instance_id, decision, f"label:{label}", outcome))
            for destination in decision.destinations:
                send = Send(instance_id, decision, destination)
                if send.key in already:
                    entries.append(self._audit_entry(instance_id, decision, str(destination), "already sent"))
                    continue
                with self._lock:
                    if (instance_id, send.key) in self._active:
                        continue  # the same send is already on its way
                    self._active[(instance_id, send.key)] = send
                    self._counts["queued"] += 1
                entries.append(self._audit_entry(instance_id, decision, str(destination), "queued"))
        if not decisions:
            with self._lock:
                self._counts["noRuleMatched"] += 1
        return entries

    def _label(self, instance_id: str, label: str) -> str:
        if not self.capabilities.labels:
            return "not labelled: this Orthanc has no labels (1.12 and later)"
        self.api.add_study_label(self.api.instance_study(instance_id), label)
        return "labelled"

    @property
    def idle(self) -> bool:
        """No send queued, waiting for a retry or running (the replay checkpoint may move)."""
        with self._lock:
            return not self._active

    # --- the sending thread -------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.step()
            except Exception:
                log.exception("Forwarding step failed")

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self.cancel_running_jobs()

    def cancel_running_jobs(self) -> None:
        """Orthanc stopping: cancel our running jobs, which it would otherwise save and resume at its next
        start while the replay sends the same instances again."""
        with self._lock:
            running = [send for send in self._active.values() if send.state == "running" and send.job]
        for send in running:
            try:
                self.api.cancel_job(str(send.job))
            except Exception as error:  # it may have finished meanwhile
                log.debug("Job %s not cancelled: %s", send.job, error)
        if running:
            log.warning("Orthanc stopping: %d send(s) interrupted, resumed after the restart", len(running))

    def step(self, now: float | None = None) -> None:
        """Start due sends and collect finished jobs (one pass; the thread calls it repeatedly)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            sends = list(self._active.values())
        for send in sends:
            if send.state == "waiting" and send.due <= now:
                self._start(send, now)
            elif send.state == "running":
                self._poll(send, now)

    def _start(self, send: Send, now: float) -> None:
        send.attempts += 1
        try:
            send.job = self.api.start_store_job(send.destination, send.instance_id)
            send.state = "running"
        except LookupError:
            self._finish(send, "failed", "instance deleted before it could be sent")
        except Exception as error:
            self._failed_attempt(send, now, f"{error.__class__.__name__}: {error}")

    def _poll(self, send: Send, now: float) -> None:
        assert send.job is not None
        try:
            state, reason = self.api.job_state(send.job)
        except LookupError:
            state, reason = "Failure", "the job disappeared from Orthanc's job history"
        if state == "Success":
            self._finish(send, "sent", "")
        elif state in ("Failure", "Paused"):
            self._failed_attempt(send, now, reason or state)

    def _failed_attempt(self, send: Send, now: float, reason: str) -> None:
        send.reason = reason
        if send.attempts >= self.policy.max_attempts:
            self._finish(send, "failed", reason)
            return
        delay = self.policy.retry_delay(send.attempts)
        send.state, send.job, send.due = "waiting", None, now + delay
        with self._lock:
            self._counts["retries"] += 1
        log.warning("Sending instance %s to %s failed (attempt %d of %d: %s); retry in %.0f s", send.instance_id,
                    send.destination, send.attempts, self.policy.max_attempts, reason, delay)

    def _finish(self, send: Send, state: str, reason: str) -> None:
        send.state, send.reason = state, reason
        with self._lock:
            self._active.pop((send.instance_id, send.key), None)
            self._counts[state] += 1
            finished = self._finished.setdefault(send.instance_id, [])
            finished.append(send)
            last = not any(instance_id == send.instance_id for instance_id, _ in self._active)
            if last:
                del self._finished[send.instance_id]
        self._audit_entry(send.instance_id, send.decision, str(send.destination), state, send=send)
        if state == "failed":
            log.error("Instance %s not sent to %s after %d attempts: %s", send.instance_id, send.destination,
                      send.attempts, reason)
        if not last:
            return  # recorded with the instance's last send
        try:
            with self._instance_locks.hold(send.instance_id):
                self._record(send.instance_id, finished)
        except (LookupError, MetadataConflict) as error:
            log.warning("Routing record of instance %s not written: %s", send.instance_id, error)

    def _record(self, instance_id: str, sends: list[Send]) -> None:
        metadata = self.api.instance_metadata(instance_id)
        if METADATA_ROUTING in metadata and self.capabilities.check_revisions:
            # The SDK cannot send the revision Orthanc asks for: a second write would only be refused.
            log.warning("Routing record of instance %s not updated (\"CheckRevisions\" on): %s", instance_id,
                        ", ".join(f"{send.key} {send.state}" for send in sends))
            return
        record = routing_record(metadata)
        for send in sends:
            record[send.key] = {"state": send.state, "attempts": send.attempts, "reason": send.reason,
                                "at": datetime.now().astimezone().isoformat(timespec="seconds")}
        self.api.set_instance_metadata(instance_id, METADATA_ROUTING, json.dumps(record, sort_keys=True))

    # --- audit and status ---------------------------------------------------
    def _audit_entry(self, instance_id: str, decision: RoutingDecision, target: str, outcome: str,
                     send: Send | None = None) -> dict[str, Any]:
        entry = {
            "at": datetime.now().astimezone().isoformat(timespec="milliseconds"),
            "instance": instance_id,
            "rule": decision.rule.name,
            "model": decision.result.model,
            "topClass": decision.result.top_class,
            "topProbability": round(decision.result.top_probability, 6),
            "classes": dict(zip(decision.result.classes, decision.result.probabilities, strict=False)),
            "target": target,
            "outcome": outcome,
        }
        if send is not None:
            entry.update({"attempts": send.attempts, "reason": send.reason,
                          "secondsSinceDecision": round(time.monotonic() - send.decided_at, 3)})
        with self._lock:
            self._audit.append(entry)
        return entry

    def audit(self, instance_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            entries = [e for e in self._audit if instance_id is None or e["instance"] == instance_id]
        return entries[-limit:]

    def status(self) -> dict[str, Any]:
        with self._lock:
            active = list(self._active.values())
            counts = dict(self._counts)
        return {
            "rules": [rule.name for rule in self.policy.rules],
            "sent": counts.get("sent", 0),
            "failed": counts.get("failed", 0),
            "retries": counts.get("retries", 0),
            "queued": counts.get("queued", 0),
            "inFlight": len(active),
            "waitingForRetry": sum(1 for s in active if s.state == "waiting" and s.attempts > 0),
            "lastFailures": [e for e in self.audit(limit=AUDIT_ENTRIES) if e["outcome"] == "failed"][-10:],
        }


def routing_record(metadata: dict[str, str]) -> dict[str, Any]:
    try:
        record = json.loads(metadata.get(METADATA_ROUTING, "{}"))
        return record if isinstance(record, dict) else {}
    except ValueError:
        return {}


def sent_keys(metadata: dict[str, str]) -> set[str]:
    return {key for key, value in routing_record(metadata).items()
            if isinstance(value, dict) and value.get("state") == "sent"}
