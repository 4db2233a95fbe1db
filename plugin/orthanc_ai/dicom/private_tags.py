"""The private block in group 0055 that carries the models' results.

One table (``HEADER_ELEMENTS`` and ``MODEL_ELEMENTS``) defines the layout;
the encoder, the decoder, the Orthanc ``"Dictionary"`` entries and the private
dictionary in ``docs/private-tags.md`` are all generated from it
(``python -m orthanc_ai.dicom.private_tags``).

Notes
-----
PS3.5 §7.8.1: a private creator element (0055,00xx), xx in 10–FF, reserves the
elements (0055,xx00–xxFF). We reuse the slot already holding our creator
string, else take the lowest free one, and never move to another group:
pydicom's ``Dataset.private_block`` implements exactly that rule.

Inside the block, the low byte of an element is ``slot * 16 + field``:
slot 0 is the block header, slots 1–15 hold one model each. Re-prediction by
a model rewrites its own slot, so a model never has two entries.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import numpy as np
from pydicom.datadict import add_private_dict_entries
from pydicom.dataset import Dataset, PrivateBlock

GROUP = 0x0055
MAX_MODEL_SLOTS = 15
LAYOUT_VERSION = "1"
DISCLAIMER = "For research and decision support only; not for clinical diagnosis."


@dataclass(frozen=True)
class Field:
    offset: int  # within the slot (0–15)
    vr: str
    keyword: str  # Orthanc dictionary name; slot number is inserted for model fields
    vm: str
    description: str


HEADER_ELEMENTS = (
    Field(0x00, "LO", "AIResultsLayoutVersion", "1", "Version of this block layout (currently 1)"),
    Field(0x01, "LO", "AIResultsSoftware", "1", "Software that wrote the block, with its version"),
    Field(0x02, "LT", "AIResultsDisclaimer", "1", "Intended-use statement"),
)

MODEL_ELEMENTS = (
    Field(0x0, "LO", "AIModel{n}Name", "1", "Model name (models/<name>)"),
    Field(0x1, "LO", "AIModel{n}Version", "1", "Model version from its card"),
    Field(0x2, "LO", "AIModel{n}Dataset", "1", "Dataset the model was trained on"),
    Field(0x3, "DT", "AIModel{n}DateTime", "1", "When the prediction was made (local time with UTC offset)"),
    Field(0x4, "LO", "AIModel{n}SourceFileName", "1", "Name of the uploaded file, where known"),
    Field(0x5, "UL", "AIModel{n}SourceFileSize", "1", "Size in bytes of the instance as received, before tagging"),
    Field(0x6, "LO", "AIModel{n}ClassNames", "1-n", "Class names, in the model's output order"),
    Field(0x7, "DS", "AIModel{n}ClassProbabilities", "1-n", "Probability of each class (same order), 0–1"),
    Field(0x8, "LO", "AIModel{n}TopClass", "1", "Most probable class"),
    Field(0x9, "DS", "AIModel{n}TopProbability", "1", "Probability of the top class, 0–1"),
    Field(0xA, "IS", "AIModel{n}AnalysedFrame", "1",
          "Frame analysed (1-based; the middle frame of a multi-frame image)"),
    Field(0xB, "FL", "AIModel{n}HeatmapValues", "1-n",
          "Class-activation map of the top class, row by row (logit units; its mean is the class's logit)"),
    Field(0xC, "US", "AIModel{n}HeatmapRows", "1", "Rows of the heatmap grid"),
    Field(0xD, "US", "AIModel{n}HeatmapColumns", "1", "Columns of the heatmap grid"),
    Field(0xE, "FL", "AIModel{n}HeatmapRegion", "4",
          "Left, top, right, bottom edge of the analysed frame's area the grid covers, in pixels from the frame's "
          "top left corner (outside the frame where the model's input was padded)"),
)
_FIELD = {f.keyword.replace("{n}", ""): f for f in MODEL_ELEMENTS}


@dataclass(frozen=True)
class Heatmap:
    """Where a model looked for one class: its class-activation map on a coarse grid.

    ``values`` hold ``rows`` × ``columns`` cells row by row, in logit units: for a network ending in global
    average pooling and one linear layer the map is exact and its mean is the class's logit (Zhou et al.,
    "Learning Deep Features for Discriminative Localization", CVPR 2016). ``region`` places the grid on the
    analysed frame: (left, top, right, bottom) in pixels, with (0, 0) the top left corner of the top left
    pixel as in PS3.3 §C.10.5.1.2; it extends past the frame where the model's input was padded.
    """

    class_name: str
    rows: int
    columns: int
    values: tuple[float, ...]
    region: tuple[float, float, float, float]

    def grid(self) -> np.ndarray:
        return np.asarray(self.values, dtype=np.float32).reshape(self.rows, self.columns)

    def to_json(self) -> dict[str, Any]:
        return {"class": self.class_name, "rows": self.rows, "columns": self.columns,
                "region": list(self.region), "values": list(self.values)}


@dataclass(frozen=True)
class ModelResult:
    """One model's prediction for one instance, as stored in its slot."""

    model: str
    version: str
    dataset: str
    predicted_at: datetime
    classes: tuple[str, ...]
    probabilities: tuple[float, ...]
    frame: int = 1
    source_file_name: str | None = None
    source_file_size: int | None = None
    # The top class's map, for models whose card declares a heatmap output.
    heatmap: Heatmap | None = None

    @property
    def top_index(self) -> int:
        return max(range(len(self.probabilities)), key=self.probabilities.__getitem__)

    @property
    def top_class(self) -> str:
        return self.classes[self.top_index]

    @property
    def top_probability(self) -> float:
        return self.probabilities[self.top_index]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "dataset": self.dataset,
            "dateTime": self.predicted_at.isoformat(timespec="seconds"),
            "classes": dict(zip(self.classes, self.probabilities, strict=False)),
            "topClass": self.top_class,
            "topProbability": self.top_probability,
            "frame": self.frame,
            "sourceFileName": self.source_file_name,
            "sourceFileSize": self.source_file_size,
            "heatmap": None if self.heatmap is None else self.heatmap.to_json(),
        }


class PrivateBlockFull(RuntimeError):
    """No free private creator slot in group 0055, or all 15 model slots used."""


def element_tag(block_byte: int, slot: int, offset: int) -> int:
    return (GROUP << 16) | (block_byte << 8) | (slot * 16 + offset)


def write_results(dataset: Dataset, creator: str, software: str, results: Sequence[ModelResult]) -> None:
    """Write each result into its model's slot, replacing that model's previous entries."""
    try:
        block = dataset.private_block(GROUP, creator, create=True)
    except (KeyError, StopIteration) as error:  # pydicom 3.0 raises StopIteration when 0x10-0xFF are all taken
        raise PrivateBlockFull("no free private creator slot in (0055,0010-00FF)") from error
    _set(block, 0, HEADER_ELEMENTS[0], LAYOUT_VERSION)
    _set(block, 0, HEADER_ELEMENTS[1], software)
    _set(block, 0, HEADER_ELEMENTS[2], DISCLAIMER)
    for result in results:
        slot = _slot_for(block, result.model)
        for offset in range(16):
            if slot * 16 + offset in block:
                del block[slot * 16 + offset]
        _write_slot(block, slot, result)


def _write_slot(block: PrivateBlock, slot: int, result: ModelResult) -> None:
    f = _FIELD
    _set(block, slot, f["AIModelName"], result.model)
    _set(block, slot, f["AIModelVersion"], result.version)
    _set(block, slot, f["AIModelDataset"], result.dataset)
    _set(block, slot, f["AIModelDateTime"], result.predicted_at.strftime("%Y%m%d%H%M%S.%f%z"))
    if result.source_file_name:
        _set(block, slot, f["AIModelSourceFileName"], as_lo_text(result.source_file_name))
    if result.source_file_size is not None:
        _set(block, slot, f["AIModelSourceFileSize"], int(result.source_file_size))
    _set(block, slot, f["AIModelClassNames"], list(result.classes))
    _set(block, slot, f["AIModelClassProbabilities"], [format_ds(p) for p in result.probabilities])
    _set(block, slot, f["AIModelTopClass"], result.top_class)
    _set(block, slot, f["AIModelTopProbability"], format_ds(result.top_probability))
    _set(block, slot, f["AIModelAnalysedFrame"], str(int(result.frame)))
    if result.heatmap is not None:
        heatmap = result.heatmap
        _set(block, slot, f["AIModelHeatmapValues"], [float(v) for v in heatmap.values])
        _set(block, slot, f["AIModelHeatmapRows"], heatmap.rows)
        _set(block, slot, f["AIModelHeatmapColumns"], heatmap.columns)
        _set(block, slot, f["AIModelHeatmapRegion"], [float(v) for v in heatmap.region])


def _set(block: PrivateBlock, slot: int, field: Field, value: Any) -> None:
    block.add_new(slot * 16 + field.offset, field.vr, value)


def _slot_for(block: PrivateBlock, model: str) -> int:
    free = None
    for slot in range(1, MAX_MODEL_SLOTS + 1):
        name_offset = slot * 16
        if name_offset in block:
            if str(block[name_offset].value) == model:
                return slot
        elif free is None:
            free = slot
    if free is None:
        raise PrivateBlockFull(f"all {MAX_MODEL_SLOTS} model slots of the private block are used")
    return free


@lru_cache(maxsize=8)
def register_with_pydicom(creator: str) -> None:
    """Teach pydicom our VRs, which an Implicit VR Little Endian file does not carry."""
    entries = {
        (GROUP << 16) | low: (field.vr, field.vm, _keyword(field, slot), "")
        for low, field, slot in all_fields()
    }
    add_private_dict_entries(creator, entries)


def read_results(dataset: Dataset, creator: str) -> list[ModelResult]:
    """Every model result stored in our block; an absent block gives an empty list."""
    register_with_pydicom(creator)
    try:
        block = dataset.private_block(GROUP, creator)
    except KeyError:
        return []
    results = []
    for slot in range(1, MAX_MODEL_SLOTS + 1):
        if slot * 16 not in block:
            continue
        try:
            result = _read_slot(block, slot)
        except (ValueError, TypeError, OverflowError, NotImplementedError):
            result = None  # values that do not parse (damaged, or written by something else)
        if result is not None:
            results.append(result)
    return results


def _read_slot(block: PrivateBlock, slot: int) -> ModelResult | None:
    """One model's result; None for a damaged slot, which is ignored rather than misreported."""
    value = lambda name: _value(block, slot, _FIELD[name])  # noqa: E731 - local shorthand
    classes = tuple(str(name) for name in _as_list(value("AIModelClassNames")))
    probabilities = tuple(float(p) for p in _as_list(value("AIModelClassProbabilities")))
    if not classes or len(classes) != len(probabilities):
        return None
    size = value("AIModelSourceFileSize")
    frame = value("AIModelAnalysedFrame")
    top_class = classes[max(range(len(probabilities)), key=probabilities.__getitem__)]
    return ModelResult(
        model=str(value("AIModelName")),
        version=str(value("AIModelVersion") or ""),
        dataset=str(value("AIModelDataset") or ""),
        predicted_at=parse_dt(str(value("AIModelDateTime") or "")),
        classes=classes,
        probabilities=probabilities,
        frame=int(frame) if frame not in (None, "") else 1,
        source_file_name=str(value("AIModelSourceFileName")) if value("AIModelSourceFileName") else None,
        source_file_size=int(size) if size not in (None, "") else None,
        heatmap=_read_heatmap(value, top_class),
    )


def _read_heatmap(value: Callable[[str], Any], class_name: str) -> Heatmap | None:
    """The slot's heatmap; None where it has none or its parts do not fit together."""
    values = tuple(float(v) for v in _as_list(value("AIModelHeatmapValues")))
    rows, columns = value("AIModelHeatmapRows"), value("AIModelHeatmapColumns")
    region = tuple(float(v) for v in _as_list(value("AIModelHeatmapRegion")))
    if not values or rows is None or columns is None or len(region) != 4:
        return None
    if int(rows) * int(columns) != len(values) or not all(np.isfinite(values)):
        return None
    left, top, right, bottom = region
    return Heatmap(class_name, int(rows), int(columns), values, (left, top, right, bottom))


def _value(block: PrivateBlock, slot: int, field: Field) -> Any:
    offset = slot * 16 + field.offset
    return block[offset].value if offset in block else None


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def format_ds(probability: float) -> str:
    """A probability as a DS value (≤ 16 characters, PS3.5 Table 6.2-1)."""
    return f"{min(max(float(probability), 0.0), 1.0):.6f}"


def as_lo_text(text: str) -> str:
    """Untrusted text (a file name) made a valid LO value: no backslash or control characters, ≤ 64."""
    cleaned = "".join(ch if ch.isprintable() and ch != "\\" else "_" for ch in text)
    return cleaned.encode("ascii", "replace").decode("ascii")[:64]


def parse_dt(value: str) -> datetime:
    for pattern in ("%Y%m%d%H%M%S.%f%z", "%Y%m%d%H%M%S.%f", "%Y%m%d%H%M%S%z", "%Y%m%d%H%M%S"):
        try:
            return datetime.strptime(value, pattern)
        except ValueError:
            continue
    return datetime.min


def all_fields() -> list[tuple[int, Field, int]]:
    """(low byte of the element, field, slot) for every element of the block."""
    rows = [(f.offset, f, 0) for f in HEADER_ELEMENTS]
    for slot in range(1, MAX_MODEL_SLOTS + 1):
        rows += [(slot * 16 + f.offset, f, slot) for f in MODEL_ELEMENTS]
    return rows


def _keyword(field: Field, slot: int) -> str:
    return field.keyword.replace("{n}", f"{slot:02d}")


def orthanc_dictionary(creator: str, block_byte: int = 0x10) -> dict[str, list[Any]]:
    """Entries for Orthanc's ``"Dictionary"`` configuration option, for one block."""
    entries = {}
    for low, field, slot in all_fields():
        vm_min, _, vm_max = field.vm.partition("-")
        # Orthanc: a maximum of 0 means unbounded
        entries[f"{GROUP:04x},{(block_byte << 8) | low:04x}"] = [
            field.vr, _keyword(field, slot), int(vm_min), 0 if vm_max == "n" else int(vm_max or vm_min), creator]
    return entries


# Orthanc's dictionary (DCMTK's) matches private tags by their full element number,
# so each block byte our creator may land on needs its own entries. 0x10 is the usual
# one (orthanc.json); the plugin registers 0x11-0x1F itself for files where other
# creators already hold the first slots.
EXTRA_DICTIONARY_BLOCKS = range(0x11, 0x20)


def markdown_dictionary(creator: str) -> str:
    """The private dictionary, as published in docs/private-tags.md."""
    lines = [
        "| tag (block xx, usually 10) | VR | VM | name | meaning |",
        "|---|---|---|---|---|",
        f"| (0055,00xx) | LO | 1 | private creator | `{creator}` |",
    ]
    for field in HEADER_ELEMENTS:
        lines.append(f"| (0055,xx{field.offset:02X}) | {field.vr} | {field.vm} | {field.keyword} "
                     f"| {field.description} |")
    for field in MODEL_ELEMENTS:
        name = field.keyword.replace("{n}", "NN")
        lines.append(f"| (0055,xxN{field.offset:X}) | {field.vr} | {field.vm} | {name} | {field.description} |")
    return "\n".join(lines)


def update_orthanc_configuration(path: str, creator: str) -> None:
    """Rewrite the ``"Dictionary"`` of a configuration file, one entry per line."""
    import json

    configuration = json.loads(open(path, encoding="utf-8").read())
    configuration["Dictionary"] = orthanc_dictionary(creator)
    text = json.dumps({k: v for k, v in configuration.items() if k != "Dictionary"}, indent=2, ensure_ascii=False)
    entries = ",\n".join(
        f"    {json.dumps(tag)}: {json.dumps(entry)}" for tag, entry in configuration["Dictionary"].items()
    )
    text = text[: text.rstrip().rfind("}")].rstrip() + ',\n  "Dictionary": {\n' + entries + "\n  }\n}\n"
    open(path, "w", encoding="utf-8").write(text)


if __name__ == "__main__":
    from ..config import DEFAULT_PRIVATE_CREATOR

    if sys.argv[1:2] == ["--markdown"]:
        print(markdown_dictionary(DEFAULT_PRIVATE_CREATOR))
    elif sys.argv[1:2] == ["--update"] and len(sys.argv) == 3:
        update_orthanc_configuration(sys.argv[2], DEFAULT_PRIVATE_CREATOR)
    else:
        sys.exit("usage: python -m orthanc_ai.dicom.private_tags --markdown | --update path/to/orthanc.json")
