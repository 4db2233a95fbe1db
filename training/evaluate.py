"""Metrics (confusion matrix, per-class P/R/F1, micro/macro accuracy, log-loss, bootstrap CIs) and plots."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def _from_confusion(cm: np.ndarray) -> dict:
    """Vectorised over a leading batch axis: cm has shape (..., k, k)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    support = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    recall = np.where(support > 0, tp / np.maximum(support, 1), np.nan)
    precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
    f1 = np.where(support > 0, 2 * tp / np.maximum(support + predicted, 1), np.nan)
    return {
        "micro_accuracy": tp.sum(-1) / np.maximum(cm.sum(axis=(-2, -1)), 1),
        "macro_accuracy": np.nanmean(recall, axis=-1),
        "macro_f1": np.nanmean(f1, axis=-1),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
    }


def evaluate(logits: np.ndarray, y: np.ndarray, classes: list[str], prior: np.ndarray,
             n_boot: int = 10_000, seed: int = 0, groups: np.ndarray | None = None) -> dict:
    """All the figures of the report; ``prior`` = training class frequencies for the log-loss reduction."""
    k = len(classes)
    prob = softmax(logits.astype(np.float64))
    pred = prob.argmax(1)
    cm = confusion(y, pred, k)
    m = _from_confusion(cm)
    nll = -np.log(np.clip(prob[np.arange(len(y)), y], 1e-15, 1.0))
    prior = np.clip(prior / prior.sum(), 1e-15, 1)
    prior_nll = -np.log(prior[y])
    log_loss = float(nll.mean())
    prior_loss = float(prior_nll.mean())
    result = {
        "test_images": int(len(y)),
        "micro_accuracy": float(m["micro_accuracy"]),
        "macro_accuracy": float(m["macro_accuracy"]),
        "macro_f1": float(m["macro_f1"]),
        "log_loss": log_loss,
        "prior_log_loss": prior_loss,
        "log_loss_reduction": 1 - log_loss / prior_loss,
        "confusion_matrix": cm.tolist(),
        "per_class": {c: {"precision": float(m["precision"][i]), "recall": float(m["recall"][i]),
                          "f1": float(m["f1"][i]), "support": int(m["support"][i])} for i, c in enumerate(classes)},
    }
    if n_boot:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(y), size=(n_boot, len(y)))
        pairs = (y * k + pred)[idx]
        offsets = (np.arange(n_boot) * k * k)[:, None]
        cms = np.bincount((pairs + offsets).ravel(), minlength=n_boot * k * k).reshape(n_boot, k, k)
        with np.errstate(all="ignore"):
            bm = _from_confusion(cms)
        boot = {
            "micro_accuracy": bm["micro_accuracy"],
            "macro_accuracy": bm["macro_accuracy"],
            "macro_f1": bm["macro_f1"],
            "log_loss": nll[idx].mean(axis=1),
        }
        boot["log_loss_reduction"] = 1 - boot["log_loss"] / prior_nll[idx].mean(axis=1)
        result["ci95"] = {name: [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))]
                          for name, v in boot.items()}
        result["bootstrap_resamples"] = n_boot
        if groups is not None:
            result["ci95_group_bootstrap"] = _group_bootstrap(y, pred, nll, groups, k, n_boot, seed)
    return result


def _group_bootstrap(y, pred, nll, groups, k, n_boot, seed) -> dict:
    """CIs resampling whole groups (patients / duplicate clusters) instead of images."""
    rng = np.random.default_rng(seed + 1)
    uniq, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(uniq))]
    stats: dict[str, list[float]] = {"micro_accuracy": [], "macro_accuracy": [], "macro_f1": [], "log_loss": []}
    for _ in range(n_boot):
        pick = rng.integers(0, len(uniq), len(uniq))
        idx = np.concatenate([members[i] for i in pick])
        cm = np.bincount(y[idx] * k + pred[idx], minlength=k * k).reshape(k, k)
        with np.errstate(all="ignore"):
            m = _from_confusion(cm)
        for key in ("micro_accuracy", "macro_accuracy", "macro_f1"):
            stats[key].append(float(m[key]))
        stats["log_loss"].append(float(nll[idx].mean()))
    out: dict[str, Any] = {key: [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))]
                           for key, v in stats.items()}
    out["groups"] = int(len(uniq))
    return out


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((axes[0], "loss", "cross-entropy loss"), (axes[1], "acc", "accuracy")):
        ax.plot(ep, [h[f"train_{key}"] for h in history], label="train (augmented)")
        if f"val_{key}" in history[0]:
            ax.plot(ep, [h[f"val_{key}"] for h in history], label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.1 * k + 2))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(classes, rotation=35, ha="right")
    ax.set_yticklabels(classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
