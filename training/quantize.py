"""Static int8 quantization of a shipped model, and the check that decides whether it ships (issue 13).

    .venv/bin/python -m training.quantize <name> [...]   # or: all
    .venv/bin/python -m training.quantize <name> --check-only   # figures only, nothing written

``models/<name>/model-fp32.onnx`` is the source of truth (the exported float32 graph; on the first run it is
taken from ``model.onnx``). It is quantized with ONNX Runtime's ``quantize_static`` (QDQ format, per-channel
symmetric int8 weights, asymmetric uint8 activations, MinMax calibration) on a fixed set of the model's
TRAINING images (leakage-free split rebuilt by ``training.data`` / ``training.pipeline``, never the test or
validation part), preprocessed by the plugin's code as in training. The global average pooling, the linear
heads, the class-activation-map branch and the ops that combine the heads (ensemble mean, temperature) stay
in float32 on the dequantized last features, so the map output keeps its exact relation to the logits (the
spatial mean of a class's map is its logit); so does the first convolution, on the raw grey input (see
``float_nodes``).

The candidate is then compared with the float32 graph on the leakage-free test images: micro and macro
accuracy, per-image top-class agreement, max |delta probability|, the map output and its shape, and the
heatmap deletion test (``training.heatmap_faithfulness.measure``) on the int8 graph. It ships as
``model.onnx`` only if the accuracies stay within ``MAX_ACCURACY_DELTA_POINTS`` (both), the agreement is at
least ``MIN_AGREEMENT`` and the deletion test still passes; otherwise ``model.onnx`` is a copy of the float32
file. Either way the card gets a ``precision`` section (what ships and why, the check's figures) and its
``metrics.leakage_free``, ``heatmap.faithfulness``, ``latency_ms_batch1_1thread`` and ``file_size_bytes``
describe the file that ships; REPORT.md gets a "Precision" section. Re-running gives the same file (fixed
calibration images and order).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from . import configs, data as D
from .class_activation_maps import LOGITS, OUTPUT, _consumers, _heads
from .evaluate import evaluate, softmax
from .heatmap_faithfulness import (
    PASS_RATIO,
    measure,
    write_card as write_faithfulness_card,
    write_report as write_faithfulness_report,
)
from .pipeline import LEAKAGE_FREE_FRACTIONS, LEAKAGE_FREE_SEED, ModelData, leakage_free_split, preprocess_file
from .report import with_section
from .test_split import TestSplit, load_test_split

sys.path.insert(0, str(D.PLUGIN_DIR))
from orthanc_ai.models.preprocessing import Preprocessing

FP32_FILE = "model-fp32.onnx"
SHIPPED_FILE = "model.onnx"
CALIBRATION_IMAGES = 300  # of the training part; more hardly moves the MinMax ranges
CALIBRATION_SEED = 20261213
CALIBRATION_BATCH = 30
MAX_ACCURACY_DELTA_POINTS = 0.5  # |int8 - fp32|, micro and macro accuracy, in percentage points
MIN_AGREEMENT = 0.99  # share of test images with the same top class
SECTION = "## Precision (int8 quantization, issue 13)"
METHOD = ("ONNX Runtime static quantization (quantize_static), QDQ format, per-channel symmetric int8 weights, "
          "asymmetric uint8 activations, MinMax calibration; the first convolution (on the raw grey input) and "
          "the global average pooling, linear heads, class-activation-map branch and the ops combining the heads "
          "(ensemble mean, temperature) run in float32, the latter on the dequantized last features")


def fp32_path(folder: Path) -> Path:
    """The float32 source of truth: ``model-fp32.onnx``, or ``model.onnx`` before the first quantization."""
    path = folder / FP32_FILE
    return path if path.exists() else folder / SHIPPED_FILE


def is_quantized(path: Path) -> bool:
    """True when the graph holds QuantizeLinear / DequantizeLinear nodes (or other integer ops)."""
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    return bool(ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger"})


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes kept in float32.

    Everything downstream of the pooled features (pooling, heads, map branch, ensemble mean, temperature), so
    that the maps and the logits come from the same dequantized features by the same float arithmetic; and the
    nodes reading the network input (the first convolution of each member), whose single grey channel loses
    most to 8 bits: with them in int8, 3 of lung-ct-3's 165 validation images changed top class, without them
    none (chosen on the validation part, not the test part), and a 1-channel convolution gains nothing from int8.
    """
    graph = model.graph
    seen: list[str] = []
    first = [node for node in graph.node if any(i in {x.name for x in graph.input} for i in node.input)]
    stack = [node for pool, _ in _heads(graph) for node in _consumers(graph, pool.input[0])]
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.append(node.name)
        stack.extend(c for out in node.output for c in _consumers(graph, out))
    return sorted(seen + [node.name for node in first if node.name not in seen])


@dataclass
class Calibration:
    """The fixed calibration images (training part only) and what the check needs from the split."""

    x: np.ndarray
    files: list[str]
    train_prior: np.ndarray  # training class counts, for the log-loss reduction
    test_groups: np.ndarray  # duplicate/patient groups of the test images, for the group bootstrap

    @property
    def files_sha256(self) -> str:
        return hashlib.sha256("\n".join(self.files).encode()).hexdigest()


def calibration_set(name: str, folder: Path, spec: Preprocessing) -> Calibration:
    """Rebuild the leakage-free split and preprocess a fixed sample of its training part."""
    root = D.data_dir()
    items = configs.load_items(name, root)
    groups, stats = D.assign_groups(items, root)
    y = np.array([it.label for it in items])
    parts = leakage_free_split(ModelData(items, y, np.array(groups), stats, spec, np.empty(0)))
    shipped_test = [f["file"] for f in json.loads((folder / "test_split.json").read_text(encoding="utf-8"))["files"]]
    rebuilt_test = [items[i].path for i in parts["test"]]
    if rebuilt_test != shipped_test:
        raise RuntimeError(f"{name}: the rebuilt leakage-free split (seed {LEAKAGE_FREE_SEED}, "
                           f"{LEAKAGE_FREE_FRACTIONS}) does not give test_split.json's test images; not calibrating")
    train = np.sort(parts["train"])
    if set(train) & set(parts["test"]) or set(train) & set(parts["val"]):
        raise RuntimeError(f"{name}: training part overlaps validation or test")
    rng = np.random.default_rng(CALIBRATION_SEED)
    chosen = rng.choice(train, size=min(CALIBRATION_IMAGES, len(train)), replace=False)  # fixed order
    files = [items[i].path for i in chosen]
    x = np.stack([preprocess_file(root / f, spec) for f in files]).astype(np.float32)
    return Calibration(x, files, np.bincount(y[train], minlength=int(y.max()) + 1).astype(float),
                       np.array(groups)[parts["test"]])


def quantize(source: Path, target: Path, calibration: np.ndarray) -> list[str]:
    """Write the int8 QDQ graph of ``source`` to ``target``; returns the nodes kept in float32."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calibration[i:i + CALIBRATION_BATCH]}
                                 for i in range(0, len(calibration), CALIBRATION_BATCH)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    keep_float = float_nodes(onnx.load(str(source)))
    quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep_float,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    return keep_float


def session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def outputs(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits and maps of every row of ``x``."""
    sess = session(path)
    batches = [sess.run([LOGITS, OUTPUT], {"input": x[i:i + 64]}) for i in range(0, len(x), 64)]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def _accuracies(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    pred = logits.argmax(axis=1)
    recalls = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
    return float((pred == y).mean()), float(np.mean(recalls))


def check(fp32: Path, candidate: Path, split: TestSplit) -> dict[str, Any]:
    """The acceptance figures of ``candidate`` against ``fp32`` on the test images."""
    card = split.card
    logits32, _ = outputs(fp32, split.x)
    logits8, maps8 = outputs(candidate, split.x)
    micro32, macro32 = _accuracies(logits32, split.y)
    micro8, macro8 = _accuracies(logits8, split.y)
    agreement = float((logits32.argmax(1) == logits8.argmax(1)).mean())
    rows, columns = card["heatmap"]["grid"]
    expected_shape = [len(split.y), len(card["classes"]), rows, columns]
    faith8 = measure(session(candidate), split)
    faith32 = measure(session(fp32), split)
    result: dict[str, Any] = {
        "test_images": len(split.y),
        "fp32": {"micro_accuracy": round(micro32, 4), "macro_accuracy": round(macro32, 4),
                 "faithfulness_ratio": round(faith32.ratio, 3)},
        "int8": {"micro_accuracy": round(micro8, 4), "macro_accuracy": round(macro8, 4),
                 "faithfulness_ratio": round(faith8.ratio, 3)},
        "delta_micro_points": round(100 * (micro8 - micro32), 2),
        "delta_macro_points": round(100 * (macro8 - macro32), 2),
        "top_class_agreement": round(agreement, 4),
        "top_class_disagreements": int((logits32.argmax(1) != logits8.argmax(1)).sum()),
        "max_abs_delta_probability": round(float(np.abs(softmax(logits8) - softmax(logits32)).max()), 4),
        "map_output_shape": list(maps8.shape),
        "map_output_shape_ok": list(maps8.shape) == expected_shape,
        "max_abs_map_mean_minus_logit": float(f"{np.abs(maps8.mean(axis=(2, 3)) - logits8).max():.2e}"),
    }
    reasons = []
    for kind in ("micro", "macro"):
        if abs(result[f"delta_{kind}_points"]) > MAX_ACCURACY_DELTA_POINTS:
            reasons.append(f"{kind} accuracy moves by {result[f'delta_{kind}_points']:+.2f} points "
                           f"(limit {MAX_ACCURACY_DELTA_POINTS})")
    if agreement < MIN_AGREEMENT:
        reasons.append(f"top class agrees on {100 * agreement:.1f} % of the test images "
                       f"(needs {100 * MIN_AGREEMENT:g} %)")
    if faith8.ratio < PASS_RATIO:
        reasons.append(f"heatmap deletion test ratio {faith8.ratio:.2f} < {PASS_RATIO:g}")
    if not result["map_output_shape_ok"]:
        reasons.append(f"map output shape {list(maps8.shape)} instead of {expected_shape}")
    result["pass"] = not reasons
    result["failed"] = reasons
    result["_logits"] = {"fp32": logits32, "int8": logits8}
    result["_faithfulness"] = {"fp32": faith32, "int8": faith8}
    return result


def _leakage_free_metrics(logits: np.ndarray, split: TestSplit, calibration: Calibration) -> dict[str, Any]:
    """The card's ``metrics.leakage_free`` of the shipped file (as ``training.pipeline`` writes it)."""
    classes = split.card["classes"]
    lf = evaluate(logits, split.y, classes, calibration.train_prior, groups=calibration.test_groups)
    card = {k: lf[k] for k in ("micro_accuracy", "macro_accuracy", "macro_f1", "log_loss", "log_loss_reduction",
                               "test_images")}
    card["ci95"] = lf["ci95"]
    card["ci95_group_bootstrap"] = lf.get("ci95_group_bootstrap")
    card["per_class_recall"] = {c: lf["per_class"][c]["recall"] for c in classes}
    return card


def update(folder: Path, check_only: bool = False) -> dict[str, Any]:
    """Quantize, check and (unless ``check_only``) ship the model in ``folder`` and rewrite its card."""
    sys.path.insert(0, str(D.REPO_ROOT))
    from bench.bench_models import bench

    name = folder.name
    shipped, fp32 = folder / SHIPPED_FILE, folder / FP32_FILE
    if not fp32.exists():
        if is_quantized(shipped):
            raise RuntimeError(f"{shipped} is quantized and there is no {FP32_FILE}")
        if not check_only:
            shutil.copyfile(shipped, fp32)
    fp32 = fp32_path(folder)
    if is_quantized(fp32):
        raise RuntimeError(f"{fp32} holds quantized nodes")
    split = load_test_split(folder)
    calibration = calibration_set(name, folder, split.spec)
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "model-int8.onnx"
        keep_float = quantize(fp32, candidate, calibration.x)
        result = check(fp32, candidate, split)
        int8_size = candidate.stat().st_size
        if check_only:
            return result
        ships = "int8" if result["pass"] else "fp32"
        shutil.copyfile(candidate if ships == "int8" else fp32, shipped)
    logits = result.pop("_logits")[ships]
    faithfulness = result.pop("_faithfulness")[ships].to_card()
    latency: dict[str, float | None] = {"fp32": round(min(bench(fp32, 300, 30)[0] for _ in range(3)), 3)}
    latency["int8"] = round(min(bench(shipped, 300, 30)[0] for _ in range(3)), 3) if ships == "int8" else None
    if ships == "fp32":
        why = "float32 ships: the int8 graph failed the check (" + "; ".join(result["failed"]) + ")"
    else:
        why = (f"int8 ships: accuracy within {MAX_ACCURACY_DELTA_POINTS} point (micro "
               f"{result['delta_micro_points']:+.2f}, macro {result['delta_macro_points']:+.2f}), top class agrees on "
               f"{100 * result['top_class_agreement']:.1f} % of the test images, deletion test ratio "
               f"{result['int8']['faithfulness_ratio']:.2f} >= {PASS_RATIO:g}")
    precision = {
        "shipped": ships,
        "file": SHIPPED_FILE,
        "fp32_file": FP32_FILE,
        "reason": why,
        "method": METHOD,
        "float32_nodes": keep_float,
        "calibration": {
            "images": len(calibration.files),
            "source": ("training part of the leakage-free split (rebuilt by training.data/training.pipeline, "
                       f"seed {LEAKAGE_FREE_SEED}; checked to give test_split.json's test images), sampled "
                       f"with seed {CALIBRATION_SEED}, in that fixed order, batches of {CALIBRATION_BATCH}; "
                       "the plugin's preprocessing as in training"),
            "files_sha256": calibration.files_sha256,
        },
        "criteria": {"max_abs_accuracy_delta_points": MAX_ACCURACY_DELTA_POINTS,
                     "min_top_class_agreement": MIN_AGREEMENT, "min_faithfulness_ratio": PASS_RATIO},
        "check": {k: v for k, v in result.items() if k != "failed"} | {"failed": result["failed"]},
        "latency_ms_batch1_1thread": latency,
        "file_size_bytes": {"fp32": fp32.stat().st_size, "int8": int8_size},
        "command": f"python -m training.quantize {name}",
    }
    card_path = folder / "model.json"
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["metrics"]["leakage_free"] = _leakage_free_metrics(logits, split, calibration)
    card["latency_ms_batch1_1thread"] = latency[ships]
    card["file_size_bytes"] = shipped.stat().st_size
    card["precision"] = precision
    card_path.write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    write_faithfulness_card(folder, faithfulness)
    write_faithfulness_report(folder, faithfulness)
    _update_split(folder, card["metrics"]["leakage_free"])
    _write_report(folder, precision)
    return precision


def _update_split(folder: Path, metrics: dict[str, Any]) -> None:
    """``test_split.json``'s expected figures and file hash are those of the shipped file."""
    path = folder / "test_split.json"
    split = json.loads(path.read_text(encoding="utf-8"))
    split["onnx_sha256"] = hashlib.sha256((folder / SHIPPED_FILE).read_bytes()).hexdigest()
    split["expected"]["micro_accuracy"] = metrics["micro_accuracy"]
    split["expected"]["macro_accuracy"] = metrics["macro_accuracy"]
    path.write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")


def _write_report(folder: Path, precision: dict[str, Any]) -> None:
    """Replace (or append) the REPORT.md section."""
    c = precision["check"]
    lat, size = precision["latency_ms_batch1_1thread"], precision["file_size_bytes"]
    int8_ms = f"{lat['int8']:.3f}" if lat["int8"] is not None else "not measured (not shipped)"
    section = "\n".join([
        SECTION,
        "",
        f"`python -m training.quantize {folder.name}`: {precision['method']}. Calibrated on "
        f"{precision['calibration']['images']} training images (never validation or test). Checked on the "
        f"{c['test_images']} leakage-free test images through the plugin's preprocessing.",
        "",
        "| | micro accuracy | macro accuracy | deletion-test ratio | ms/image (batch 1, 1 thread) | file |",
        "|---|---|---|---|---|---|",
        f"| float32 (`{FP32_FILE}`) | {c['fp32']['micro_accuracy']:.4f} | {c['fp32']['macro_accuracy']:.4f} | "
        f"{c['fp32']['faithfulness_ratio']:.2f} | {lat['fp32']:.3f} | {size['fp32']:,} bytes |",
        f"| int8 | {c['int8']['micro_accuracy']:.4f} | {c['int8']['macro_accuracy']:.4f} | "
        f"{c['int8']['faithfulness_ratio']:.2f} | {int8_ms} | {size['int8']:,} bytes |",
        "",
        f"Difference int8 - float32: micro {c['delta_micro_points']:+.2f}, macro {c['delta_macro_points']:+.2f} "
        f"points; top class agrees on {100 * c['top_class_agreement']:.1f} % of the images "
        f"({c['top_class_disagreements']} differ); max |delta probability| {c['max_abs_delta_probability']:.4f}; "
        f"map output {c['map_output_shape']}, max |map mean - logit| {c['max_abs_map_mean_minus_logit']:.1e}.",
        "",
        f"**Shipped: {precision['shipped']}** (`{SHIPPED_FILE}`). {precision['reason'][0].upper()}"
        f"{precision['reason'][1:]}. The leakage-free figures in the card and in the heatmap section describe "
        "the shipped file; the tables above this section were computed on the float32 graph at training time "
        "(the paper-protocol repeats are separate float32 networks).",
        "",
    ])
    report = folder / "REPORT.md"
    text = report.read_text(encoding="utf-8") if report.exists() else ""
    # the export line's size and latency (as training.refresh_latency rewrites them) are the shipped file's
    shipped_ms = lat[precision["shipped"]]
    text = re.sub(r"[0-9.]+ ms/image at batch 1 with one", f"{shipped_ms:.2f} ms/image at batch 1 with one", text)
    text = re.sub(r"opset 17; [0-9,]+ bytes;", f"opset 17; {size[precision['shipped']]:,} bytes;", text)
    report.write_text(with_section(text, SECTION, section), encoding="utf-8")


def _print(name: str, p: dict[str, Any]) -> None:
    c = p.get("check", p)
    print(f"{name}: micro {c['fp32']['micro_accuracy']:.4f} -> {c['int8']['micro_accuracy']:.4f} "
          f"({c['delta_micro_points']:+.2f} pt), macro {c['fp32']['macro_accuracy']:.4f} -> "
          f"{c['int8']['macro_accuracy']:.4f} ({c['delta_macro_points']:+.2f} pt), agreement "
          f"{100 * c['top_class_agreement']:.2f} % ({c['top_class_disagreements']} differ of {c['test_images']}), "
          f"max |dp| {c['max_abs_delta_probability']:.4f}, maps {c['map_output_shape']} "
          f"(|mean-logit| {c['max_abs_map_mean_minus_logit']:.1e}), deletion ratio fp32 "
          f"{c['fp32']['faithfulness_ratio']:.2f} / int8 {c['int8']['faithfulness_ratio']:.2f}; "
          f"pass {c['pass']}" + (f" ({'; '.join(c['failed'])})" if c["failed"] else ""), flush=True)
    if "shipped" in p:
        lat, size = p["latency_ms_batch1_1thread"], p["file_size_bytes"]
        print(f"{name}: ships {p['shipped']}; ms/image fp32 {lat['fp32']} int8 {lat['int8']}; "
              f"bytes fp32 {size['fp32']} int8 {size['int8']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", help="model names (folders of models/), or 'all'")
    parser.add_argument("--check-only", action="store_true", help="print the check's figures; write nothing")
    args = parser.parse_args()
    models = D.REPO_ROOT / "models"
    names = sorted(p.parent.name for p in models.glob("*/test_split.json")) if args.names == ["all"] else args.names
    for name in names:
        _print(name, update(models / name, check_only=args.check_only))


if __name__ == "__main__":
    main()
