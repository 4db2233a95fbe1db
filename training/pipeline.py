"""Retrain, evaluate, export and document one model: ``python -m training <name>``."""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import configs, data as D
from .evaluate import evaluate, plot_confusion, plot_curves

sys.path.insert(0, str(D.PLUGIN_DIR))
from orthanc_ai.models.preprocessing import Preprocessing, grey_from_8bit, unit_grey_to_tensor

LEAKAGE_FREE_FRACTIONS = {"train": 0.65, "val": 0.15, "test": 0.20}
LEAKAGE_FREE_SEED = 20261122
# The cards' version: raise it with every change of what a model computes (weights, precision). The plugin
# runs a model again on an instance only when its version differs from the one in the instance's tags.
# 1.1.0: int8 quantization (training/quantize.py) and the class-activation map output.
MODEL_VERSION = "1.1.0"
PAPER_TEST_FRACTION = 0.30


def preprocess_file(path: Path, spec: Preprocessing) -> np.ndarray:
    """The plugin's own path for 8-bit training images: grey_from_8bit then unit_grey_to_tensor."""
    from PIL import Image

    im: Image.Image
    with Image.open(path) as im:
        if im.mode not in ("L", "RGB"):
            colour = im.mode in ("RGBA", "P", "LA", "CMYK") or len(im.getbands()) > 1
            im = im.convert("RGB") if colour else im.convert("L")
        arr = np.asarray(im)
    return unit_grey_to_tensor(grey_from_8bit(arr), spec)[0]


def build_cache(name: str, items: list[D.Item], spec: Preprocessing, root: Path) -> np.ndarray:
    key = hashlib.sha1(json.dumps([spec.height, spec.width, spec.channels, spec.resize, spec.mean, spec.std,
                                   [it.path for it in items]]).encode()).hexdigest()[:12]
    cache = D.CACHE_DIR / f"{name}-{key}.npy"
    if cache.exists():
        return np.load(cache)
    t = time.time()
    x = np.zeros((len(items), spec.channels, spec.height, spec.width), np.float32)
    for i, it in enumerate(items):
        x[i] = preprocess_file(root / it.path, spec)
        if (i + 1) % 500 == 0:
            print(f"  preprocessed {i + 1}/{len(items)}", flush=True)
    D.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    np.save(cache, x)
    print(f"  cached {len(items)} tensors in {time.time() - t:.0f} s -> {cache}", flush=True)
    return x


@dataclass
class ModelData:
    """One model's images: labels, duplicate/patient groups and the preprocessed tensors."""
    items: list[D.Item]
    y: np.ndarray
    groups: np.ndarray
    group_stats: dict
    spec: Preprocessing
    x: np.ndarray


def load_model_data(name: str) -> ModelData:
    root = D.data_dir()
    if not root.exists():
        raise SystemExit(f"data folder {root} not found (set ORTHANC_AI_DATA)")
    print(f"[{name}] listing images and grouping duplicates / patients", flush=True)
    items = configs.load_items(name, root)
    groups, group_stats = D.assign_groups(items, root)
    print(f"[{name}] {len(items)} images, {group_stats}", flush=True)
    spec = Preprocessing.from_card(configs.card_stub(name))
    return ModelData(items, np.array([it.label for it in items]), np.array(groups), group_stats, spec,
                     build_cache(name, items, spec, root))


def leakage_free_split(data: ModelData) -> dict[str, np.ndarray]:
    """Grouped stratified train/val/test; no group crosses parts."""
    parts = D.grouped_stratified_split(data.y, data.groups, LEAKAGE_FREE_FRACTIONS, LEAKAGE_FREE_SEED)
    g = data.groups
    tr, va, te = parts["train"], parts["val"], parts["test"]
    assert not (set(g[tr]) & set(g[te])) and not (set(g[va]) & set(g[te])) and not (set(g[tr]) & set(g[va]))
    return parts


def recipe_key(recipe: dict) -> str:
    """Short hash of a training recipe: run folders of different recipes never mix."""
    return hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]


def member_run_dir(name: str, epochs: int, recipe: dict, member: int) -> Path:
    """Run folder of network ``member`` (0-based) of the shipped (leakage-free) model; trained with seed member + 1."""
    return D.CACHE_DIR / "runs" / name / (f"leakage_free-e{epochs}-{recipe_key(recipe)}"
                                          + (f"-m{member + 1}" if member else ""))


def onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["logits"], {"input": x[i:i + 64]})[0] for i in range(0, len(x), 64)])


def run(name: str, paper_seeds: int = 10, epochs: int | None = None, paper_epochs: int | None = None,
        threads: int = 2, out_root: Path | None = None, shard: tuple[int, int] = (0, 1), stage: str = "all") -> None:
    """The whole run (stage "all"), or only the paper-protocol repeats (stage "paper": no export, no report)."""
    import torch

    from .export import check_onnx, export_onnx, latency_ms
    from .model import MeanEnsemble, WithTemperature
    from .train import fit_temperature, load_model, predict, train_run

    torch.set_num_threads(threads)
    cfg = configs.MODELS[name]
    classes = cfg["classes"]
    k = len(classes)
    root = D.data_dir()
    out = (out_root or D.REPO_ROOT / "models") / name
    epochs = epochs or cfg["epochs"]
    paper_epochs = paper_epochs or cfg["paper_epochs"]
    train_cfg = configs.train_config(name)
    t_start = time.time()

    data = load_model_data(name)
    items, y, g, group_stats, spec, x = data.items, data.y, data.groups, data.group_stats, data.spec, data.x
    stub = configs.card_stub(name)
    if stage == "paper":
        paper_protocol(name, x, y, paper_seeds, paper_epochs, shard)
        return
    out.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- leakage-free protocol
    parts = leakage_free_split(data)
    tr, va, te = parts["train"], parts["val"], parts["test"]
    split_counts = {p: np.bincount(y[idx], minlength=k).tolist() for p, idx in parts.items()}
    print(f"[{name}] leakage-free split (per class {classes}): {split_counts}", flush=True)
    n_members = cfg.get("ensemble", 1)
    members, member_results = [], []
    for member in range(n_members):
        lf_dir = member_run_dir(name, epochs, train_cfg, member)
        tag = f"[{name} leakage-free" + (f" member {member + 1}/{n_members}" if n_members > 1 else "") + "] "
        member_results.append(train_run(lf_dir, x, y, tr, va, train_cfg, spec.mean, spec.std, epochs, seed=1 + member,
                                        log_prefix=tag))
        members.append(load_model(lf_dir, spec.channels, k, train_cfg))
    if n_members == 1:
        model = members[0]
        res = member_results[0]
    else:
        model = MeanEnsemble(members).eval()
        res = dict(member_results[0], temperature=fit_temperature(predict(model, x[va]), y[va]),
                   best_epoch=", ".join(str(r["best_epoch"]) for r in member_results))
    res["members"] = n_members
    shipped = WithTemperature(model, res["temperature"]).eval()
    onnx_path = out / "model.onnx"
    export_onnx(shipped, spec.channels, spec.height, spec.width, onnx_path)
    diff = check_onnx(shipped, onnx_path, x[te[:16]])
    print(f"[{name}] exported {onnx_path} ({onnx_path.stat().st_size} bytes), max |torch-onnx| = "
          f"{diff:.2e}", flush=True)
    assert diff < 1e-3, diff
    # model-fp32.onnx is the float32 source of truth; training.quantize (last step) decides what model.onnx ships
    (out / "model-fp32.onnx").write_bytes(onnx_path.read_bytes())
    prior = np.bincount(y[tr], minlength=k).astype(float)
    test_logits = onnx_logits(onnx_path, x[te])
    lf = evaluate(test_logits, y[te], classes, prior, groups=g[te])
    val_logits = onnx_logits(onnx_path, x[va])
    lf_val = evaluate(val_logits, y[va], classes, prior, n_boot=0)
    lf_uncal = evaluate(predict(model, x[te]), y[te], classes, prior, n_boot=0)
    extra = {}
    sources = sorted({it.source for it in items})
    for src in sources:
        sel = np.array([items[i].source == src for i in te])
        if 0 < sel.sum() < len(te):
            extra[f"source: {src}"] = evaluate(test_logits[sel], y[te][sel], classes, prior, n_boot=0)
    if cfg["resize"] == "pad":
        square = np.array([_is_square(root / items[i].path) for i in te])
        if 0 < square.sum() < len(te):
            extra["square images only"] = evaluate(test_logits[square], y[te][square], classes, prior, n_boot=0)
    plot_curves(res["history"], out / "training_curves.png",
                f"{name}: leakage-free training (model selected at epoch {res['best_epoch']})")
    plot_confusion(np.array(lf["confusion_matrix"]), classes, out / "confusion_leakage_free.png",
                   f"{name}: leakage-free test (n={len(te)})")
    latency = latency_ms(onnx_path)
    size = onnx_path.stat().st_size
    print(f"[{name}] leakage-free test: micro {lf['micro_accuracy']:.4f} macro {lf['macro_accuracy']:.4f} "
          f"F1 {lf['macro_f1']:.4f} log-loss {lf['log_loss']:.4f}; latency {latency:.2f} ms; {size} bytes", flush=True)

    test_split = {
        "description": (
            "Leakage-free test part of lung/xray data for this model: regenerate with `python -m training "
            f"{name}` (grouped stratified split, seed {LEAKAGE_FREE_SEED}, fractions {LEAKAGE_FREE_FRACTIONS}). "
            "Paths are relative to the shared data folder (../shared/data from the repository root)."),
        "data_root": "../shared/data",
        "classes": classes,
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "expected": {"micro_accuracy": lf["micro_accuracy"], "macro_accuracy": lf["macro_accuracy"],
                     "images": int(len(te))},
        "files": [{"file": items[i].path, "label": classes[y[i]]} for i in te],
    }
    (out / "test_split.json").write_text(json.dumps(test_split, indent=1) + "\n")

    paper = paper_protocol(name, x, y, paper_seeds, paper_epochs, shard)
    paper_summary = _summarise_paper(paper, paper_epochs)
    if paper:
        best = max(paper, key=lambda m: m["micro_accuracy"])
        plot_confusion(np.array(best["confusion_matrix"]), classes, out / "confusion_paper_best.png",
                       f"{name}: paper protocol, best seed {best['seed']} (n={best['test_images']})")

    wall = time.time() - t_start
    card = _card(name, cfg, stub, items, y, te, lf, paper_summary, latency, size, res, group_stats, split_counts,
                 train_cfg)
    (out / "model.json").write_text(json.dumps(card, indent=1) + "\n")
    from .report import write_report
    write_report(out, name, cfg, card, lf, lf_val, lf_uncal, extra, paper, paper_summary, res, group_stats,
                 split_counts, epochs, paper_epochs, wall)
    from .class_activation_maps import write_heatmap_section
    from .heatmap_faithfulness import update as update_faithfulness
    write_heatmap_section(out)
    update_faithfulness(out)
    from .quantize import update as quantize_and_ship
    quantize_and_ship(out)
    print(f"[{name}] done in {wall / 60:.1f} min: {out}", flush=True)


def paper_protocol(name: str, x: np.ndarray, y: np.ndarray, seeds: int, epochs: int,
                   shard: tuple[int, int]) -> list[dict]:
    """Stratified 70/30 image-level repeats with the model's paper recipe; finished seeds are reused.

    ``shard`` = (i, n) trains only the seeds with seed % n == i, so n processes can share the work;
    i < 0 trains none and returns the finished ones.
    """
    from .train import load_model, predict, train_run

    classes = configs.MODELS[name]["classes"]
    k = len(classes)
    paper_cfg = configs.paper_train_config(name)
    cfg_key = recipe_key(paper_cfg)
    runs = D.CACHE_DIR / "runs" / name
    spec = Preprocessing.from_card(configs.card_stub(name))
    paper = []
    for seed in range(seeds):
        ptr, pte = D.stratified_split(y, PAPER_TEST_FRACTION, seed)
        pdir = runs / f"paper-e{epochs}-{cfg_key}-seed{seed}"
        metrics_file = pdir / "metrics.json"
        if metrics_file.exists():
            paper.append(json.loads(metrics_file.read_text()))
            continue
        if shard[0] < 0 or seed % shard[1] != shard[0]:
            continue  # another process (--shard) trains this seed, or --no-new-paper-runs
        print(f"[{name}] paper protocol seed {seed + 1}/{seeds} (70/30 image-level)", flush=True)
        pres = train_run(pdir, x, y, ptr, None, paper_cfg, spec.mean, spec.std, epochs, seed=100 + seed,
                         log_prefix=f"[{name} paper seed {seed}] ")
        pm = load_model(pdir, x.shape[1], k, paper_cfg)
        m = evaluate(predict(pm, x[pte]), y[pte], classes, np.bincount(y[ptr], minlength=k).astype(float), n_boot=0)
        m["seed"] = seed
        m["train_seconds"] = pres.get("train_seconds")
        metrics_file.write_text(json.dumps(m, indent=1))
        paper.append(m)
        print(f"[{name}] paper seed {seed}: micro {m['micro_accuracy']:.4f} macro {m['macro_accuracy']:.4f} log-loss "
              f"{m['log_loss']:.4f}", flush=True)
    return paper


def _is_square(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        return im.size[0] == im.size[1]


def _summarise_paper(paper: list[dict], paper_epochs: int) -> dict:
    if not paper:
        return {}
    out: dict[str, Any] = {"seeds": len(paper), "epochs": paper_epochs, "test_fraction": PAPER_TEST_FRACTION}
    for key in ("micro_accuracy", "macro_accuracy", "macro_f1", "log_loss", "log_loss_reduction"):
        v = np.array([m[key] for m in paper])
        out[key] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                    "best": float(v.min() if key == "log_loss" else v.max())}
    return out


def _card(name, cfg, stub, items, y, te, lf, paper_summary, latency, size, res, group_stats, split_counts,
          train_cfg) -> dict:
    classes = cfg["classes"]
    pre = dict(stub["preprocessing"])
    window = "" if not cfg["ct_window"] else (
        f"for CT in Hounsfield units (modality LUT present) the window centre {cfg['ct_window']['center']} / "
        f"width {cfg['ct_window']['width']} HU is applied; ")
    pre["description"] = (
        "DICOM: stored values -> modality LUT (Rescale Slope/Intercept, HU for CT); " + window +
        ("otherwise " if window else "then ") +
        "the file's own VOI window if it has one, else the stored bit range (8-bit) or robust 0.5-99.5 percentiles; "
        "MONOCHROME1 inverted; colour converted to BT.601 luma; " +
        ("padded to a black square then " if cfg["resize"] == "pad" else "stretched to the square input by ") +
        f"antialiased bilinear resize to {cfg['size']}x{cfg['size']}; (grey - 0.5) / 0.25. Training images (8-bit "
        "JPEG/PNG, already display-windowed by their publishers) are divided by 255 instead of the DICOM steps. "
        + cfg["resize_reason"])
    lf_card = {k: lf[k] for k in ("micro_accuracy", "macro_accuracy", "macro_f1", "log_loss", "log_loss_reduction",
                                  "test_images")}
    lf_card["ci95"] = lf["ci95"]
    lf_card["ci95_group_bootstrap"] = lf.get("ci95_group_bootstrap")
    lf_card["per_class_recall"] = {c: lf["per_class"][c]["recall"] for c in classes}
    limitations = _limitations(name)
    n_images = len(items)
    return {
        "name": name,
        "version": MODEL_VERSION,
        "title": cfg["title"],
        "classes": classes,
        "class_codes": cfg["class_codes"],
        "series_conclusion": cfg["series_conclusion"],
        "input": stub["input"],
        "output": {"name": "logits", "kind": "logits", "temperature_folded": round(res["temperature"], 4)},
        "preprocessing": pre,
        "applies_to": cfg["applies_to"],
        "dataset": {
            "short_name": cfg["dataset_short_name"],  # what the DICOM tags carry (LO, at most 64 characters)
            "name": " + ".join(d["name"] for d in cfg["datasets"]),
            "licence": " | ".join(d["licence"] for d in cfg["datasets"]),
            "citation": " | ".join(d["citation"] for d in cfg["datasets"]),
            "images": n_images,
            "per_class": {c: int((y == i).sum()) for i, c in enumerate(classes)},
            "split": (f"leakage-free grouped stratified split train/val/test = {LEAKAGE_FREE_FRACTIONS} over "
                      f"{group_stats['groups']} groups (exact + near duplicates + patient proxies); per class "
                      f"{ {p: dict(zip(classes, v, strict=True)) for p, v in split_counts.items()} }"),
        },
        "architecture": (f"plain CNN, 9 convolutions with batch norm, width {train_cfg['width']}, trained from scratch"
                         + (f"; mean of the logits of {res['members']} such networks trained with different seeds (one "
                            "ONNX graph)"
                            if res.get("members", 1) > 1 else "")),
        "training": {k: v for k, v in train_cfg.items() if k != "augment"}
                    | {"epochs": res["epochs"], "best_epoch": res["best_epoch"]}
                    | ({"ensemble": res["members"]} if res["members"] > 1 else {}),
        "intended_use": "For research and decision support only; not for clinical diagnosis.",
        "limitations": limitations,
        "metrics": {"leakage_free": lf_card, "paper_protocol": paper_summary},
        "latency_ms_batch1_1thread": round(latency, 3),
        "file_size_bytes": size,
        "test_split": {"description": "Leakage-free test images and labels; see the file for how to regenerate it.",
                       "file": "test_split.json", "images": int(len(te))},
        "report": "REPORT.md",
    }


def _limitations(name: str) -> list[str]:
    common = [
        "Trained from scratch on small public data sets gathered from GitHub copies; not validated on any clinical "
        "population.",
        "Trained on 8-bit display-windowed JPEG/PNG images, not on DICOM: behaviour on real DICOM depends on the "
        "windowing in the preprocessing.",
    ]
    if name.startswith("lung-ct"):
        common += [
            "Works on single axial slices; it does not see the rest of the series and does not localise findings.",
            "IQ-OTH/NCCD has only about 110 patients and no patient IDs: the leakage-free split groups consecutive, "
            "similar slices as a patient proxy, which cannot guarantee patient separation; the paper-protocol figures "
            "leak patients and are optimistic.",
            "In IQ-OTH/NCCD all non-square images are Malignant (shortcut); mitigated by augmentation, see the report.",
            "The training images come already windowed by their publishers (unknown window, looks like a soft-tissue "
            "window); the card's ct_window (40/400 HU) imitates that look on real CT DICOM, but the models were never "
            "validated on DICOM: expect a domain shift.",
        ]
    if name == "lung-ct-6":
        common += [
            "The three carcinoma classes and the second Normal source come from the Kaggle 'Chest CT-Scan images' set, "
            "assembled from web sources with a visibly different look (size, format); the model can separate sources "
            "rather than pathology. 'Malignant' (IQ-OTH/NCCD) and the three carcinoma subtypes overlap clinically; "
            "they are separated largely by source.",
            "56 test images of that set are missing and one cross-class duplicate pair (l4.png / sq2.png) was left "
            "out.",
        ]
    if name == "xray-bodypart":
        common += [
            "There is NO abdominal class (and no skull, pelvis/hip, foot/ankle or hand-only class): an abdominal film "
            "will be assigned to one of the four classes, most likely 'other' or 'spine'.",
            "Each class comes from one or two sources (knee: CLAHE-processed crops; upper limb: Roboflow export with "
            "fractures; spine: one scoliosis set; adult chest: mostly COVID/pneumonia films and figures from papers), "
            "so source style is a shortcut.",
            "'pediatric-chest' is Kermany (patients aged 1-5) only; 'spine' includes adolescents; one third of "
            "adult-chest images have no age.",
            "'other' = knee, finger, elbow, shoulder, humerus, forearm and wrist only.",
        ]
    return common
