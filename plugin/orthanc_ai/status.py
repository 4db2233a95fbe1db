"""Counters and latencies the ``/ai/status`` route reports."""
from __future__ import annotations

import threading
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

LATENCY_WINDOW = 1000
RECENT_PROBLEMS = 50
# Instances not predicted get no write in Orthanc (no metadata, no change): their outcome is remembered
# here instead, for the series reports and the Explorer, for this many instances (about 20 MB at most).
REMEMBERED_OUTCOMES = 100_000
NOT_WRITTEN_STATES = ("skipped", "failed")


@dataclass
class Outcome:
    """What happened to one instance."""

    instance_id: str
    state: str  # predicted | unchanged | skipped | failed | gone | elsewhere (claimed by another node)
    reason: str | None = None
    results: list[Any] = field(default_factory=list)  # ModelResult
    seconds: float = 0.0
    # The earlier results (ModelResult) this prediction replaced in the instance: their outputs are outdated.
    replaced: list[Any] = field(default_factory=list)
    # Orthanc's id of the instance's study, where computed from its file (saves the after-prediction hooks a call).
    study_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance_id,
            "state": self.state,
            "reason": self.reason,
            "seconds": round(self.seconds, 4),
            "predictions": [r.to_json() for r in self.results],
        }


class PluginStatus:
    """Thread-safe tally of outcomes since Orthanc started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: Counter[str] = Counter()
        self._skip_reasons: Counter[str] = Counter()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._recent_problems: deque[dict[str, str]] = deque(maxlen=RECENT_PROBLEMS)
        self._stages: dict[str, str] = {}  # instance id → what the pipeline is doing with it
        self._deletion_requests: Counter[str] = Counter()  # by the stages they found the pipeline at
        self._not_written: OrderedDict[str, dict[str, str]] = OrderedDict()  # instance id → state, reason
        self.echoes_ignored = 0
        self.dropped = 0
        # The heatmap Secondary Captures (heatmap_writer.py): whether they are on, and their outcomes.
        self.heatmap_captures_enabled = False
        self._heatmap_captures: Counter[str] = Counter()

    def set_stage(self, instance_id: str, stage: str | None) -> None:
        """The pipeline's progress on one instance (None: done), counted per stage in the snapshot."""
        with self._lock:
            if stage is None:
                self._stages.pop(instance_id, None)
            else:
                self._stages[instance_id] = stage

    def record(self, outcome: Outcome) -> None:
        with self._lock:
            self._states[outcome.state] += 1
            if outcome.state == "predicted":
                self._latencies.append(outcome.seconds)
            if outcome.state in NOT_WRITTEN_STATES:
                self._not_written[outcome.instance_id] = {"state": outcome.state, "reason": outcome.reason or ""}
                self._not_written.move_to_end(outcome.instance_id)
                if len(self._not_written) > REMEMBERED_OUTCOMES:
                    self._not_written.popitem(last=False)
            else:
                self._not_written.pop(outcome.instance_id, None)
            if outcome.state in NOT_WRITTEN_STATES:
                self._skip_reasons[f"{outcome.state}: {reason_category(outcome.reason or '')}"] += 1
                self._recent_problems.append(
                    {"instance": outcome.instance_id, "state": outcome.state, "reason": outcome.reason or ""}
                )

    def unwritten_outcome(self, instance_id: str) -> dict[str, str] | None:
        """The last outcome of an instance the plugin did not predict (skipped or failed), since start-up."""
        with self._lock:
            outcome = self._not_written.get(instance_id)
            return dict(outcome) if outcome else None

    def record_deletion_request(self, queued: bool) -> None:
        """A deletion request arrived (deletion filter): count it under each stage instances are at."""
        with self._lock:
            stages = set(self._stages.values()) | ({"queued"} if queued else set())
            self._deletion_requests.update(stages or {"idle"})

    def record_heatmap_capture(self, state: str) -> None:
        """One heatmap Secondary Capture's outcome: written, unchanged (already stored), gone or failed."""
        with self._lock:
            self._heatmap_captures[state] += 1

    def record_echo(self) -> None:
        with self._lock:
            self.echoes_ignored += 1

    def record_dropped(self) -> None:
        with self._lock:
            self.dropped += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            latencies = sorted(self._latencies)
            return {
                "predicted": self._states["predicted"],
                "unchanged": self._states["unchanged"],
                "skipped": self._states["skipped"],
                "failed": self._states["failed"],
                "gone": self._states["gone"],
                "claimedElsewhere": self._states["elsewhere"],
                "echoesIgnored": self.echoes_ignored,
                "droppedQueueFull": self.dropped,
                "reasons": dict(self._skip_reasons),
                "stages": dict(Counter(self._stages.values())),
                "deletionRequestsByStage": dict(self._deletion_requests),
                "recentProblems": list(self._recent_problems),
                "heatmapSecondaryCaptures": {"enabled": self.heatmap_captures_enabled,
                                             "outcomes": dict(self._heatmap_captures)},
                "latencySeconds": {
                    "count": len(latencies),
                    "mean": round(sum(latencies) / len(latencies), 4) if latencies else None,
                    "p50": _quantile(latencies, 0.50),
                    "p95": _quantile(latencies, 0.95),
                },
            }


def reason_category(reason: str) -> str:
    """The stable part of a reason ('image too large: 46341 x 46341 …' → 'image too large')."""
    for separator in (":", "("):
        reason = reason.split(separator, 1)[0]
    return reason.strip() or "unknown"


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 4)
