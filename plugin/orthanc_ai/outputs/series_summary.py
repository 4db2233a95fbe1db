"""One answer for a whole series from its images' results: counts, highest probabilities, key images, conclusion.

A CT series is 100–600 slices, each classified on its own; the radiologist wants "Malignant suspected:
top class in 42 of 120 images, highest 0.98 on image 63" and a jump to those images. The summary is
computed here from the results in the images' private tags, and then written into the series' Structured
Report (structured_report.py), answered by ``GET /ai/series/{id}/summary`` and shown in the Explorer.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..dicom.private_tags import ModelResult
from ..models.model_card import ModelCard


@dataclass(frozen=True)
class AnalysedImage:
    """One image of the series with one model's result on it."""

    instance_id: str  # Orthanc's id
    sop_class_uid: str
    sop_instance_uid: str
    instance_number: int | None
    result: ModelResult


@dataclass(frozen=True)
class ClassSummary:
    name: str
    images_with_top_class: int
    highest_probability: float
    highest_at: AnalysedImage  # the key image of this class


@dataclass(frozen=True)
class Conclusion:
    class_name: str
    suspected: bool  # a suspicion rule of the card fired, rather than the most frequent class
    text: str


@dataclass(frozen=True)
class SeriesSummary:
    model: str
    version: str
    images: tuple[AnalysedImage, ...]
    classes: tuple[ClassSummary, ...]  # in the model's class order
    conclusion: Conclusion

    @property
    def key_images(self) -> tuple[AnalysedImage, ...]:
        """The image of each class's highest probability, each image once, in series order."""
        unique = {c.highest_at.sop_instance_uid: c.highest_at for c in self.classes}
        return tuple(sorted(unique.values(), key=_series_order))

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "images": len(self.images),
            "conclusion": {"class": self.conclusion.class_name, "suspected": self.conclusion.suspected,
                           "text": self.conclusion.text},
            "classes": [
                {"class": c.name, "imagesWithTopClass": c.images_with_top_class,
                 "highestProbability": c.highest_probability,
                 "highestAt": {"instance": c.highest_at.instance_id, "instanceNumber": c.highest_at.instance_number}}
                for c in self.classes
            ],
            "keyImages": [{"instance": i.instance_id, "instanceNumber": i.instance_number} for i in self.key_images],
        }


def summarise(card: ModelCard, images: Sequence[AnalysedImage]) -> SeriesSummary:
    """The summary of one model's results over a series (``images`` non-empty, all of ``card``'s model)."""
    if not images:
        raise ValueError("a series summary needs at least one analysed image")
    ordered = tuple(sorted(images, key=_series_order))
    classes = ordered[0].result.classes
    top_counts = Counter(image.result.top_class for image in ordered)
    summaries = []
    for index, name in enumerate(classes):
        # Ties go to the first image in series order, so the key image does not depend on arrival order.
        _, best = max(enumerate(ordered), key=lambda item: (item[1].result.probabilities[index], -item[0]))
        summaries.append(ClassSummary(name, top_counts[name], best.result.probabilities[index], best))
    return SeriesSummary(card.name, ordered[0].result.version, ordered, tuple(summaries),
                         _conclude(card, ordered, summaries, top_counts))


def _conclude(card: ModelCard, images: Sequence[AnalysedImage], classes: Sequence[ClassSummary],
              top_counts: Counter[str]) -> Conclusion:
    by_name = {c.name: c for c in classes}
    total = len(images)
    for rule in card.series_conclusion.suspect:
        hits = [i for i in images if i.result.top_class == rule.class_name
                and i.result.top_probability >= rule.min_probability]
        if hits:
            best = by_name[rule.class_name]
            return Conclusion(rule.class_name, True,
                              f"{rule.class_name} suspected: top class with probability ≥ {rule.min_probability:g} "
                              f"in {len(hits)} of {total} images, highest {best.highest_probability:.2f} "
                              f"on {_image_name(best.highest_at)}")
    # Most frequent top class; a tie goes to the model's class order.
    name = max(by_name, key=lambda n: (top_counts[n], -list(by_name).index(n)))
    if total == 1:
        return Conclusion(name, False, f"{name} ({by_name[name].highest_probability:.2f})")
    return Conclusion(name, False, f"{name}: top class in {top_counts[name]} of {total} images")


def _image_name(image: AnalysedImage) -> str:
    return f"image {image.instance_number}" if image.instance_number is not None else f"instance {image.instance_id}"


def _series_order(image: AnalysedImage) -> tuple[bool, int, str]:
    return (image.instance_number is None, image.instance_number or 0, image.sop_instance_uid)
