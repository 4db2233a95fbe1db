"""REPORT.md writer."""
from __future__ import annotations

import re
from pathlib import Path

from . import configs

TARGETS = {
    "lung-ct-3": {"paper_protocol": {"micro_accuracy": (">=", 0.97), "macro_accuracy": (">=", 0.95),
                                     "log_loss": ("<=", 0.11)},
                  "leakage_free": {"micro_accuracy": (">=", 0.82), "macro_accuracy": (">=", 0.75)}},
    "lung-ct-6": {"paper_protocol": {"micro_accuracy": (">=", 0.93), "macro_accuracy": (">=", 0.88)},
                  "leakage_free": {}},
    "xray-bodypart": {"paper_protocol": {}, "leakage_free": {"macro_f1": (">=", 0.98)}},
}


TARGET_NOTES = {
    "lung-ct-3": (
        "Why targets are missed. Leakage-free macro accuracy: Benign has 120 images from about 29 patient-proxy "
        "groups, and the 24 Benign test images come from a handful of them; the network takes most of them for Normal "
        "slices of an unseen patient (a small nodule at 160 px is the only difference), so Benign recall stays low and "
        "the group-bootstrap interval is wide. The recipes compared on the validation part (class-weight power, "
        "learning rate, augmentation, a two-network ensemble, flip averaging; `training/configs.py`) traded Benign "
        "recall for Normal recall; none lifted both. Paper protocol: the means of the 10 repeats miss the micro- and "
        "macro-accuracy targets by less than one standard deviation, and the best repeat exceeds both. The recipe was "
        "chosen on an inner 80/20 split of the seed-0 training part and not tuned further: what is left to gain under "
        "an image-level split is memorising near-duplicate slices that leak across it, which says nothing about unseen "
        "patients."),
    "lung-ct-6": (
        "The paper-protocol repeats use 40 epochs, chosen with `python -m training.paper_recipe_check lung-ct-6 "
        "--epochs 25 40` on an inner split of the seed-0 training part (25 epochs still underfit). The leakage-free "
        "figures are limited by the same Benign/Normal confusion as lung-ct-3 and by the carcinoma subtypes, which "
        "come from web-assembled images with few distinct patients."),
    "xray-bodypart": (
        "The target is met, but every class comes from one or two sources, so part of the accuracy may come from "
        "source style (see the limitations); there is no abdominal class. Radiographs from sources it never saw: three "
        "full-size MONOCHROME1 CR films stored as published (pydicom's RG1_UNCR, an adult PA chest, 1955x1841, 15-bit; "
        "RG3_UNCR, a distal tibia, 1760x1760, 10-bit; Orthanc's Issue44/Monochrome1-Jpeg.dcm, a PA chest, 2446x2010, "
        "JPEG) are classified adult-chest 0.999, other 0.999 and adult-chest 0.938 by the plugin in a real Orthanc "
        "(`tests/integration/test_router_unseen_radiographs.py` checks this on every run). Three films are a spot "
        "check, not an evaluation."),
}


def with_section(text: str, heading: str, section: str) -> str:
    """``text`` (a REPORT.md) with the section under ``heading`` replaced by ``section``, or appended."""
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    return text.rstrip("\n") + "\n"


def _f(v, digits=4):
    return "n/a" if v is None else f"{v:.{digits}f}"


def _ci(m, key):
    ci = m.get("ci95", {}).get(key)
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""


def _per_class_table(m: dict, classes: list[str]) -> list[str]:
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c in classes:
        pc = m["per_class"][c]
        lines.append(f"| {c} | {_f(pc['precision'], 3)} | {_f(pc['recall'], 3)} | {_f(pc['f1'], 3)} "
                     f"| {pc['support']} |")
    return lines


def _confusion_table(m: dict, classes: list[str]) -> list[str]:
    lines = ["| true \\ predicted | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for c, row in zip(classes, m["confusion_matrix"], strict=True):
        lines.append(f"| **{c}** | " + " | ".join(str(v) for v in row) + " |")
    return lines


def _target_lines(name: str, lf: dict, paper_summary: dict) -> list[str]:
    lines = ["| protocol | metric | target | measured | met? |", "|---|---|---|---|---|"]
    for proto, targets in TARGETS[name].items():
        for key, (op, value) in targets.items():
            if proto == "leakage_free":
                got = lf[key]
            else:
                got = paper_summary.get(key, {}).get("mean") if paper_summary else None
            ok = None if got is None else (got >= value if op == ">=" else got <= value)
            shown = _f(got) + (" (mean of seeds)" if proto == "paper_protocol" and got is not None else "")
            lines.append(f"| {proto.replace('_', ' ')} | {key} | {op} {value} | {shown} | "
                         f"{'n/a' if ok is None else ('yes' if ok else '**no**')} |")
    if len(lines) == 2:
        lines.append("| - | - | (report only) | - | - |")
    return lines


def write_report(out: Path, name, cfg, card, lf, lf_val, lf_uncal, extra, paper, paper_summary, res, group_stats,
                 split_counts, epochs, paper_epochs, wall) -> None:
    classes = cfg["classes"]
    L: list[str] = []
    L += [f"# {name}: {cfg['title']}", "",
          "Intended use: research and decision support only; **not for clinical diagnosis**.", "",
          "Reproduce (from the repository root, retrains both protocols and rewrites this folder):", "",
          "```", f".venv-train/bin/python -m training {name}", "```", "",
          "Training time recorded in the checkpoints (2 shared CPU cores, one torch thread per process, several jobs "
          f"running at once, so a quiet machine is faster): shipped model {(res.get('train_seconds') or 0) / 60:.0f} "
          f"min, paper-protocol repeats {sum((m.get('train_seconds') or 0) for m in paper) / 60:.0f} min in total; "
          "times of runs interrupted and resumed count only the part after the last resume. Finished runs are reused "
          f"from `training/.cache/runs/`; the pass that wrote this report took {wall / 60:.1f} min.", ""]

    L += ["## 1. Leakage-free protocol (headline; this is the shipped `model.onnx`)", "",
          "Grouped stratified split (train/val/test = "
          f"{split_counts and ', '.join(f'{p} {sum(v)}' for p, v in split_counts.items())} images). Exact duplicates, "
          f"perceptual near-duplicates and patient proxies are grouped and never cross parts ({group_stats['groups']} "
          f"groups for {group_stats['images']} images; {group_stats['exact_duplicate_copies']} exact duplicate copies; "
          f"{group_stats['near_duplicate_pairs']} near-duplicate pairs, "
          f"{group_stats['near_duplicate_pairs_across_classes']} of them across classes; largest group "
          f"{group_stats['largest_group']} images). "
          + (f"The shipped model is the mean of the logits of {res['members']} networks trained on the same train part "
             "with different "
           f"seeds; each checkpoint was chosen on the validation part (epochs {res['best_epoch']} of {epochs}, best "
           "validation macro-F1; the training curves show member 1) and the " if res.get("members", 1) > 1 else
           f"The checkpoint was chosen on the validation part (epoch {res['best_epoch']} of {epochs}, best validation "
           "macro-F1) and the ")
          + f"temperature T = {res['temperature']:.3f} fitted on the validation log-loss is folded into the exported "
            "logits. "
          "The test part was used once, for the figures below. Figures are from onnxruntime on the exported file.", "",
          "| metric | test value | 95% bootstrap CI (10,000 image resamples) | 95% CI resampling whole groups |",
          "|---|---|---|---|"]
    gci = lf.get("ci95_group_bootstrap") or {}
    for key, label in (("micro_accuracy", "micro accuracy"),
                       ("macro_accuracy", "macro accuracy (mean per-class recall)"),
                       ("macro_f1", "macro F1"), ("log_loss", "log-loss"),
                       ("log_loss_reduction", "log-loss reduction vs training prior")):
        g = f"[{gci[key][0]:.4f}, {gci[key][1]:.4f}]" if key in gci else ""
        L.append(f"| {label} | {_f(lf[key])} | {_ci(lf, key)} | {g} |")
    L += [f"| test images | {lf['test_images']} | | {gci.get('groups', '')} groups |", "",
          "Test images of one group (a patient proxy or duplicate cluster) are correlated, so the image-level "
          "bootstrap understates the uncertainty; the group bootstrap (10,000 resamples of whole test groups) is the "
          "more honest interval.", "",
          f"Prior log-loss (always predicting the training class frequencies): {_f(lf['prior_log_loss'])}. Without the "
          f"temperature: log-loss {_f(lf_uncal['log_loss'])}, micro accuracy {_f(lf_uncal['micro_accuracy'])}. "
          f"Validation part: micro {_f(lf_val['micro_accuracy'])}, macro {_f(lf_val['macro_accuracy'])}, log-loss "
          f"{_f(lf_val['log_loss'])}.", ""]
    L += _per_class_table(lf, classes) + [""] + _confusion_table(lf, classes) + [""]
    L += ["![confusion matrix, leakage-free test](confusion_leakage_free.png)", "",
          "![training curves](training_curves.png)", "",
          "Training curves: the training loss/accuracy are measured on augmented batches (with dropout), the "
          "validation ones on the untouched validation part.", ""]
    if extra:
        L += ["### Subsets of the leakage-free test part", "",
              "| subset | images | micro acc | macro acc | macro F1 |", "|---|---|---|---|---|"]
        for label, m in extra.items():
            L.append(f"| {label} | {m['test_images']} | {_f(m['micro_accuracy'])} | {_f(m['macro_accuracy'])} | "
                     f"{_f(m['macro_f1'])} |")
        L.append("")

    L += ["## 2. Paper protocol (image-level stratified 70/30, repeated)", ""]
    if paper:
        ps = paper_summary
        paper_cfg = configs.paper_train_config(name)
        recipe = ("the same recipe as the shipped model" if paper_cfg == configs.train_config(name) else
                  f"the paper recipe `{ {k: v for k, v in paper_cfg.items() if k != 'augment'} }`, augmentation "
                  f"`{paper_cfg['augment']}` (lighter than the shipped model's; chosen on an 80/20 split of the seed-0 "
                  "training part, see `training/configs.py`)")
        L += [f"{ps['seeds']} seeds ({', '.join(str(m['seed']) for m in paper)}); each trains a fresh model for "
              f"{paper_epochs} epochs with {recipe}, and keeps the last epoch with T = 1 because this protocol has no "
              f"validation part (the shipped model had {epochs} epochs with validation-based checkpoint choice). "
              "Near-duplicate slices of one patient land on both sides of such a split, so these figures are "
              "optimistic and are given only for comparison with published results.", "",
              "| metric | mean | sd | best |", "|---|---|---|---|"]
        for key in ("micro_accuracy", "macro_accuracy", "macro_f1", "log_loss", "log_loss_reduction"):
            L.append(f"| {key} | {_f(ps[key]['mean'])} | {_f(ps[key]['sd'])} | {_f(ps[key]['best'])} |")
        L += ["", "| seed | micro acc | macro acc | macro F1 | log-loss | test images |", "|---|---|---|---|---|---|"]
        for m in paper:
            L.append(f"| {m['seed']} | {_f(m['micro_accuracy'])} | {_f(m['macro_accuracy'])} | {_f(m['macro_f1'])} | "
                     f"{_f(m['log_loss'])} | {m['test_images']} |")
        best = max(paper, key=lambda m: m["micro_accuracy"])
        L += ["", f"Best seed ({best['seed']}):", ""] + _per_class_table(best, classes) + ["",
              "![confusion matrix, paper protocol best seed](confusion_paper_best.png)", ""]
    else:
        L += ["Not run for this report (run `python -m training " + name + "` without `--paper-seeds 0`).", ""]

    L += ["## 3. Targets", ""] + _target_lines(name, lf, paper_summary) + ["", TARGET_NOTES.get(name, ""), ""]

    L += ["## 4. Model and preprocessing", "",
          f"* Input {cfg['size']}x{cfg['size']}x1 `input` (dynamic batch), outputs `logits` ({len(classes)} classes, "
          f"order {classes}) and `class_activation_maps` (one map per class, see the card's `heatmap`); opset 17; "
          f"{card['file_size_bytes']:,} bytes; {card['latency_ms_batch1_1thread']:.2f} "
          "ms/image at batch 1 with one onnxruntime thread (median, `bench/bench_models.py`).",
          f"* {card['architecture']}; AdamW, one-cycle schedule, settings `{card['training']}` (class weights = "
          "(inverse frequency)^class_weight_power; ema = decay of the weight average used for evaluation), "
          "augmentation on the preprocessed tensors (affine, flip, contrast/brightness/gamma"
          + (", vertical squeeze with black bands" if cfg["augment"].get("squeeze_p") else "")
          + f"): `{cfg['augment']}`.",
          "* Preprocessing (plugin's `plugin/orthanc_ai/models/preprocessing.py`, one implementation for training and "
          f"serving): {card['preprocessing']['description']}",
          ""]
    L += ["## 5. Data", "", f"* {card['dataset']['name']}", f"* Licence: {card['dataset']['licence']}",
          f"* Citation: {card['dataset']['citation']}", f"* Images per class: {card['dataset']['per_class']}", "",
          "Limitations:", ""] + [f"* {x}" for x in card["limitations"]] + [""]
    L += ["The leakage-free test images are listed in `test_split.json` (paths relative to `../shared/data`); "
          "`tests/test_model_accuracy.py` re-runs them through the plugin preprocessing and `model.onnx`.", ""]
    (out / "REPORT.md").write_text("\n".join(L))
