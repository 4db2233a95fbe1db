"""Deletion test of the class activation maps: does the map point at what the top class rests on?

    .venv/bin/python -m training.heatmap_faithfulness <name> [...]   # or: all

On each leakage-free test image, for the top class c, the input pixels under the hottest 10 % of the cells
of c's map are blanked (unit grey 0, the padding level, before normalisation), and, for comparison, the
pixels under the same number of randomly chosen cells (several draws per image, fixed seed). The drop is
p_c(original) - p_c(blanked). A faithful map gives a drop for the hottest cells at least PASS_RATIO times
the random one. The ratio of the mean drops gets a bootstrap 95 % CI over images. Many cells of a CT slice are
already black (air, padding, lungs in the soft-tissue window), and blanking them changes nothing, so a second,
stricter control (reported, not the pass criterion) draws the random cells among those with content first.
The result goes into the card's ``heatmap.faithfulness`` and a section of the model's REPORT.md. Only
onnxruntime and the plugin's preprocessing are used.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import data as D
from .class_activation_maps import LOGITS, OUTPUT
from .evaluate import softmax
from .report import with_section
from .test_split import TestSplit, load_test_split

FRACTION = 0.10  # of the map's cells blanked
RANDOM_DRAWS = 3  # random cell sets per image and control (more cost test time, hardly change the mean)
CONTENT_GREY = 0.02  # a cell whose mean unit grey is below this is already (nearly) black
SEED = 20261214
BOOTSTRAP_RESAMPLES = 2000
PASS_RATIO = 2.0
BATCH = 64
SECTION = "## Heatmap faithfulness (deletion test)"


@dataclass
class Faithfulness:
    """Per-image drops of the top class's probability and their summary."""

    drop_hottest: np.ndarray  # (n,)
    drop_random: np.ndarray  # (n,), mean over the random draws of each image
    drop_random_content: np.ndarray  # (n,), the same with cells that are not already black drawn first
    cells_blanked: int
    grid: tuple[int, int]

    @property
    def ratio(self) -> float:
        return float(self.drop_hottest.mean() / self.drop_random.mean())

    def ratio_ci95(self, control: np.ndarray | None = None) -> tuple[float, float]:
        """Percentile bootstrap over images (fixed seed) of hottest / ``control`` (default: random cells)."""
        control = self.drop_random if control is None else control
        rng = np.random.default_rng(SEED)
        idx = rng.integers(0, len(self.drop_hottest), (BOOTSTRAP_RESAMPLES, len(self.drop_hottest)))
        ratios = self.drop_hottest[idx].mean(axis=1) / control[idx].mean(axis=1)
        low, high = np.percentile(ratios, [2.5, 97.5])
        return float(low), float(high)

    def to_card(self) -> dict[str, Any]:
        low, high = self.ratio_ci95()
        content_low, content_high = self.ratio_ci95(self.drop_random_content)
        rows, columns = self.grid
        passed = self.ratio >= PASS_RATIO
        return {
            "test": (f"deletion: on each test image, blank (unit grey 0) the input under the {self.cells_blanked} "
                     f"hottest of the {rows * columns} cells of the top class's map, or under "
                     f"{self.cells_blanked} random cells ({RANDOM_DRAWS} draws per image, seed {SEED}); "
                     "drop = p_top(original) - p_top(blanked); pass when the hottest cells' mean drop is "
                     f"at least {PASS_RATIO:g} times the random cells'"),
            "images": len(self.drop_hottest),
            "cells_blanked": self.cells_blanked,
            "mean_drop_hottest": round(float(self.drop_hottest.mean()), 4),
            "mean_drop_random": round(float(self.drop_random.mean()), 4),
            "ratio": round(self.ratio, 3),
            "ratio_ci95": [round(low, 3), round(high, 3)],
            "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
            "pass": passed,
            "ci_lower_at_least_pass_ratio": low >= PASS_RATIO,
            "control_content_cells": (f"random cells drawn first among those whose mean unit grey is at least "
                                      f"{CONTENT_GREY:g} (not already black); stricter, not the pass criterion"),
            "mean_drop_random_content": round(float(self.drop_random_content.mean()), 4),
            "ratio_content": round(float(self.drop_hottest.mean() / self.drop_random_content.mean()), 3),
            "ratio_content_ci95": [round(content_low, 3), round(content_high, 3)],
            "finding": self.finding(),
        }

    def finding(self) -> str:
        """One line for the card and the report."""
        low, high = self.ratio_ci95()
        content = float(self.drop_hottest.mean() / self.drop_random_content.mean())
        content_low, content_high = self.ratio_ci95(self.drop_random_content)
        share = f"{100 * self.cells_blanked / (self.grid[0] * self.grid[1]):.0f} %"
        drops = (f"blanking the hottest {share} of the map lowers the top class's probability by "
                 f"{self.drop_hottest.mean():.3f} on average, the same area at random by "
                 f"{self.drop_random.mean():.3f}: {self.ratio:.2f}x (95 % CI {low:.2f}-{high:.2f})")
        control = f" Against random cells that are not already black: {content:.2f}x (95 % CI {content_low:.2f}-"
        if content < PASS_RATIO:
            control += (f"{content_high:.2f}), below {PASS_RATIO:g}x: part of the margin comes from random cells "
                        "falling on black background.")
        elif content_low < PASS_RATIO:
            control += f"{content_high:.2f}), the CI reaching below {PASS_RATIO:g}x."
        else:
            control += f"{content_high:.2f})."
        if self.ratio < PASS_RATIO:
            return (f"Fails: {drops}, below {PASS_RATIO:g}x: the map does not reliably show what this model's "
                    "decision rests on; read it as a rough hint at most." + control)
        if low < PASS_RATIO:
            return (f"Passes narrowly: {drops}; the CI reaches below {PASS_RATIO:g}x, so on other images the map "
                    "may point less precisely." + control)
        return f"Passes: {drops}; the map points at the regions the top class rests on." + control


def cell_of_pixel(grid: tuple[int, int], height: int, width: int) -> np.ndarray:
    """(height, width) index of the map cell (row-major) each input pixel lies under."""
    rows, columns = grid
    return ((np.arange(height) * rows) // height)[:, None] * columns + ((np.arange(width) * columns) // width)[None]


def measure(session: Any, split: TestSplit) -> Faithfulness:
    """Run the deletion test of the model in ``session`` on ``split``'s images."""
    x = split.x
    blank = (0.0 - split.spec.mean) / split.spec.std
    rng = np.random.default_rng(SEED)
    hottest, random, random_content = [], [], []
    grid: tuple[int, int] = (0, 0)
    k = 0
    for start in range(0, len(x), BATCH):
        batch = x[start:start + BATCH]
        logits, maps = session.run([LOGITS, OUTPUT], {"input": batch})
        n, _, rows, columns = maps.shape
        grid, cells = (rows, columns), rows * columns
        k = max(1, round(FRACTION * cells))
        pixel_cell = cell_of_pixel(grid, batch.shape[2], batch.shape[3])
        top = logits.argmax(axis=1)
        p_top = softmax(logits)[np.arange(n), top]
        heat = maps[np.arange(n), top].reshape(n, cells)
        grey = (batch[:, 0] * split.spec.std + split.spec.mean).reshape(n, -1)
        cell_grey = np.stack([np.bincount(pixel_cell.ravel(), g, cells) for g in grey])
        black = cell_grey / np.bincount(pixel_cell.ravel(), minlength=cells) < CONTENT_GREY
        # cell sets (variants, n, k): the hottest, the random draws, the random draws with content cells first
        chosen = [np.argsort(-heat, axis=1)[:, :k]]
        chosen += [np.argsort(rng.random((n, cells)), axis=1)[:, :k] for _ in range(RANDOM_DRAWS)]
        chosen += [np.argsort(rng.random((n, cells)) + black, axis=1)[:, :k] for _ in range(RANDOM_DRAWS)]
        selected = np.zeros((len(chosen), n, cells), bool)
        for v, cells_v in enumerate(chosen):
            np.put_along_axis(selected[v], cells_v, True, axis=1)
        mask = selected[:, :, pixel_cell]  # (variants, n, H, W)
        blanked = np.where(mask[:, :, None], np.float32(blank), batch[None]).reshape(-1, *batch.shape[1:])
        (blanked_logits,) = session.run([LOGITS], {"input": blanked.astype(np.float32)})
        p_blanked = softmax(blanked_logits)[np.arange(len(blanked)), np.tile(top, len(chosen))]
        drops = p_top[None] - p_blanked.reshape(len(chosen), n)
        hottest.append(drops[0])
        random.append(drops[1:1 + RANDOM_DRAWS].mean(axis=0))
        random_content.append(drops[1 + RANDOM_DRAWS:].mean(axis=0))
    return Faithfulness(np.concatenate(hottest), np.concatenate(random), np.concatenate(random_content), k, grid)


def session_for(folder: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])


def write_card(folder: Path, result: dict[str, Any]) -> None:
    """Put ``result`` into ``heatmap.faithfulness``; a failing model also says so in its limitations."""
    card_path = folder / "model.json"
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["heatmap"]["faithfulness"] = result
    limitations = [line for line in card.get("limitations", []) if not line.startswith("Heatmap:")]
    if not result["pass"]:
        limitations.append(f"Heatmap: the class activation map failed the deletion test ({result['finding']})")
    card["limitations"] = limitations
    card_path.write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")


def write_report(folder: Path, result: dict[str, Any]) -> None:
    """Replace (or append) the REPORT.md section, so that reruns leave one copy."""
    report = folder / "REPORT.md"
    low, high = result["ratio_ci95"]
    section = "\n".join([
        SECTION,
        "",
        f"`python -m training.heatmap_faithfulness {folder.name}` (onnxruntime, the plugin's preprocessing, "
        "the leakage-free test images). " + result["test"][0].upper() + result["test"][1:] + ".",
        "",
        "| images | cells blanked | mean drop, hottest cells | mean drop, random cells | ratio "
        f"| 95 % CI (bootstrap, {result['bootstrap_resamples']}) | pass (ratio ≥ {PASS_RATIO:g}) "
        f"| CI lower bound ≥ {PASS_RATIO:g} | mean drop, random cells with content | ratio to those (95 % CI) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {result['images']} | {result['cells_blanked']} | {result['mean_drop_hottest']:.4f} | "
        f"{result['mean_drop_random']:.4f} | {result['ratio']:.2f} | {low:.2f}-{high:.2f} | "
        f"{'yes' if result['pass'] else 'no'} | {'yes' if result['ci_lower_at_least_pass_ratio'] else 'no'} | "
        f"{result['mean_drop_random_content']:.4f} | {result['ratio_content']:.2f} "
        f"({result['ratio_content_ci95'][0]:.2f}-{result['ratio_content_ci95'][1]:.2f}) |",
        "",
        result["finding"],
        "",
    ])
    text = report.read_text(encoding="utf-8") if report.exists() else ""
    report.write_text(with_section(text, SECTION, section), encoding="utf-8")


def update(folder: Path) -> dict[str, Any]:
    """Measure the model in ``folder`` (``models/<name>``) and write the card and the report."""
    result = measure(session_for(folder), load_test_split(folder)).to_card()
    write_card(folder, result)
    write_report(folder, result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", help="model names (folders of models/), or 'all'")
    args = parser.parse_args()
    models = D.REPO_ROOT / "models"
    names = sorted(p.parent.name for p in models.glob("*/test_split.json")) if args.names == ["all"] else args.names
    print(f"{'model':<16} {'n':>5} {'drop hot':>9} {'drop rnd':>9} {'ratio':>6} {'95% CI':>13} pass "
          f"{'drop rnd content':>16} {'ratio':>6} {'95% CI':>13}")
    for name in names:
        result = update(models / name)
        low, high = result["ratio_ci95"]
        print(f"{name:<16} {result['images']:5d} {result['mean_drop_hottest']:9.4f} {result['mean_drop_random']:9.4f} "
              f"{result['ratio']:6.2f} {low:6.2f}-{high:<6.2f} {result['pass']!s:<4} "
              f"{result['mean_drop_random_content']:16.4f} {result['ratio_content']:6.2f} "
              f"{result['ratio_content_ci95'][0]:6.2f}-{result['ratio_content_ci95'][1]:<6.2f}")


if __name__ == "__main__":
    main()
