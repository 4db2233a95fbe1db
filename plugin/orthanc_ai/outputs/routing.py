"""Routing rules: which results send an instance where.

A rule names a model, the classes that trigger it and a minimum probability,
and its actions: forward to Orthanc DICOM modalities (C-STORE) or Orthanc
peers, and labels (Orthanc 1.12+). Rules live in ``"OrthancAI" → "Routing"``
and are validated once at start-up; the README has worked examples.

A rule fires for an instance when the instance's result for that model has a
top class among ``Classes`` with at least ``MinProbability``. Each
(rule, destination) pair is sent once per instance, even when the instance is
predicted again, unless a resend is asked for.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigurationError
from ..dicom.private_tags import ModelResult

RULE_KEYS = {"Name", "Model", "Classes", "MinProbability", "Forward", "ForwardToPeers", "Labels"}
ROUTING_KEYS = {"Rules", "MaxAttempts", "RetryDelaySeconds", "MaxRetryDelaySeconds"}
_LABEL = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class RoutingRuleError(ConfigurationError):
    """A routing rule that cannot work; the message names the rule and the key."""


@dataclass(frozen=True)
class Destination:
    kind: str  # "modality" or "peer"
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class RoutingRule:
    name: str
    model: str
    classes: tuple[str, ...]
    min_probability: float = 0.0
    destinations: tuple[Destination, ...] = ()
    labels: tuple[str, ...] = ()

    def matches(self, result: ModelResult) -> bool:
        return (
            result.model == self.model
            and result.top_class in self.classes
            and result.top_probability >= self.min_probability
        )


@dataclass(frozen=True)
class RoutingPolicy:
    rules: tuple[RoutingRule, ...] = ()
    max_attempts: int = 8
    retry_delay_seconds: float = 2.0
    max_retry_delay_seconds: float = 60.0

    def retry_delay(self, attempt: int) -> float:
        """Exponential back-off after the ``attempt``-th failure (1-based)."""
        return min(self.retry_delay_seconds * 2 ** (attempt - 1), self.max_retry_delay_seconds)


@dataclass(frozen=True)
class RoutingDecision:
    """What one rule decided for one instance."""

    rule: RoutingRule
    result: ModelResult
    destinations: tuple[Destination, ...] = field(default=())
    labels: tuple[str, ...] = field(default=())


def decide(policy: RoutingPolicy, results: Sequence[ModelResult]) -> list[RoutingDecision]:
    """The rules that fire for these results, in configuration order."""
    by_model = {result.model: result for result in results}
    decisions = []
    for rule in policy.rules:
        result = by_model.get(rule.model)
        if result is not None and rule.matches(result):
            decisions.append(RoutingDecision(rule, result, rule.destinations, rule.labels))
    return decisions


def decide_for_report(policy: RoutingPolicy, images: Sequence[Sequence[ModelResult]]) -> list[RoutingDecision]:
    """Where a series' Structured Report goes: wherever a rule sent any of the images it reports.

    ``images`` holds each reported image's results (of every model, as the rules saw them). One decision
    per rule that fired for at least one image; labels stay with the images, which already set them.
    """
    decisions: dict[str, RoutingDecision] = {}
    for results in images:
        for decision in decide(policy, results):
            if decision.destinations:
                decisions.setdefault(decision.rule.name,
                                     RoutingDecision(decision.rule, decision.result, decision.destinations))
    return list(decisions.values())


def parse_routing(section: Mapping[str, Any] | None, models: Sequence[str] | None = None) -> RoutingPolicy:
    """Validate ``"OrthancAI" → "Routing"``. ``models``: the names that can be routed on, if known."""
    if not section:
        return RoutingPolicy()
    if not isinstance(section, Mapping):
        raise RoutingRuleError('"OrthancAI.Routing" must be a JSON object with "Rules"')
    unknown = set(section) - ROUTING_KEYS
    if unknown:
        raise RoutingRuleError(f'unknown key(s) in "OrthancAI.Routing": {", ".join(sorted(unknown))}')
    raw_rules = section.get("Rules", [])
    if not isinstance(raw_rules, list):
        raise RoutingRuleError('"OrthancAI.Routing.Rules" must be a list of rules')
    rules = [_parse_rule(raw, index, models) for index, raw in enumerate(raw_rules)]
    names = [rule.name for rule in rules]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise RoutingRuleError(f"routing rule names must be unique: {', '.join(duplicates)}")
    policy = RoutingPolicy(
        rules=tuple(rules),
        max_attempts=_number(section, "MaxAttempts", 8, int, 1, 1000),
        retry_delay_seconds=_number(section, "RetryDelaySeconds", 2.0, float, 0.01, 3600),
        max_retry_delay_seconds=_number(section, "MaxRetryDelaySeconds", 60.0, float, 0.01, 86400),
    )
    return policy


def _parse_rule(raw: Any, index: int, models: Sequence[str] | None) -> RoutingRule:
    where = f"routing rule #{index + 1}"
    if not isinstance(raw, Mapping):
        raise RoutingRuleError(f"{where} must be a JSON object")
    name = raw.get("Name")
    if not isinstance(name, str) or not name:
        raise RoutingRuleError(f'{where} needs a "Name"')
    where = f'routing rule "{name}"'
    unknown = set(raw) - RULE_KEYS
    if unknown:
        raise RoutingRuleError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: "
                               f"{', '.join(sorted(RULE_KEYS))}")
    model = raw.get("Model")
    if not isinstance(model, str) or not model:
        raise RoutingRuleError(f'{where}: "Model" must name a model')
    if models is not None and model not in models:
        raise RoutingRuleError(f'{where}: model "{model}" is not loaded (loaded: {", ".join(models) or "none"})')
    classes = _strings(raw, "Classes", where, required=True)
    probability = raw.get("MinProbability", 0.0)
    if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0 <= probability <= 1:
        raise RoutingRuleError(f'{where}: "MinProbability" must be a number from 0 to 1')
    destinations = tuple(Destination("modality", n) for n in _strings(raw, "Forward", where)) + tuple(
        Destination("peer", n) for n in _strings(raw, "ForwardToPeers", where)
    )
    labels = _strings(raw, "Labels", where)
    bad = [label for label in labels if not _LABEL.match(label)]
    if bad:
        raise RoutingRuleError(f"{where}: labels may only hold A-Z, a-z, 0-9, '_' and '-' (1-64): {bad}")
    return RoutingRule(name, model, classes, float(probability), destinations, labels)


def _strings(raw: Mapping[str, Any], key: str, where: str, required: bool = False) -> tuple[str, ...]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RoutingRuleError(f'{where}: "{key}" must be a list of names')
    if required and not value:
        raise RoutingRuleError(f'{where}: "{key}" must name at least one class')
    return tuple(value)


def _number(section: Mapping[str, Any], key: str, default: float, kind: type, low: float, high: float) -> Any:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RoutingRuleError(f'"OrthancAI.Routing.{key}" must be a number from {low} to {high}')
    return kind(value)


def check_destinations(policy: RoutingPolicy, modalities: Sequence[str], peers: Sequence[str]) -> list[str]:
    """Problems with destinations Orthanc does not know (checked once Orthanc has started)."""
    problems = []
    for rule in policy.rules:
        for destination in rule.destinations:
            known = modalities if destination.kind == "modality" else peers
            if destination.name not in known:
                problems.append(
                    f'routing rule "{rule.name}": {destination.kind} "{destination.name}" is not declared in Orthanc '
                    f"(known: {', '.join(known) or 'none'})"
                )
    return problems
