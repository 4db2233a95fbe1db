"""Training loop: tensor augmentation, per-epoch checkpoints (resumable), temperature fitting."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .model import PlainCNN


def augment(x: torch.Tensor, cfg: dict, mean: float, std: float, gen: torch.Generator) -> torch.Tensor:
    """Random affine (+flip, + vertical squeeze that imitates padded non-square slices) and
    brightness/contrast/gamma jitter, applied in grey space so padding stays black."""
    n = x.shape[0]
    grey = x * std + mean

    def u(lo, hi):
        return torch.rand(n, generator=gen) * (hi - lo) + lo

    # Geometric resampling blurs the image (bilinear), so only a share geom_p of the samples is
    # resampled; the others keep the exact preprocessed pixels the model sees at inference
    # (with every sample resampled, the model learned blurred images and failed on clean ones).
    geom = (torch.rand(n, generator=gen) < cfg.get("geom_p", 1.0)).float()
    angle = u(-cfg["rotate"], cfg["rotate"]) * math.pi / 180 * geom
    scale = 1 + u(-cfg["scale"], cfg["scale"]) * geom
    sx = scale.clone()
    sy = scale.clone()
    if cfg.get("squeeze_p", 0) > 0:
        # A square slice shown as if it were a 623x512 / 801x512 image padded to a square:
        # content squeezed vertically, black bands above and below (all classes alike).
        squeeze = (torch.rand(n, generator=gen) < cfg["squeeze_p"]) & (geom > 0)
        factor = u(0.62, 0.95)
        sy = torch.where(squeeze, sy * factor, sy)
    flip = torch.where(torch.rand(n, generator=gen) < cfg.get("hflip", 0.5), -1.0, 1.0)
    tx = u(-cfg["translate"], cfg["translate"]) * 2 * geom
    ty = u(-cfg["translate"], cfg["translate"]) * 2 * geom
    cos, sin = torch.cos(angle), torch.sin(angle)
    # grid_sample maps output coords to input coords: inverse of the forward transform.
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos / sx * flip
    theta[:, 0, 1] = -sin / sx
    theta[:, 1, 0] = sin / sy * flip
    theta[:, 1, 1] = cos / sy
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(grey.shape), align_corners=False)
    grey = F.grid_sample(grey, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    contrast = u(1 - cfg["contrast"], 1 + cfg["contrast"]).view(n, 1, 1, 1)
    bright = u(-cfg["brightness"], cfg["brightness"]).view(n, 1, 1, 1)
    gamma = torch.exp(u(-cfg["gamma"], cfg["gamma"])).view(n, 1, 1, 1)
    grey = grey.clamp(0, 1) ** gamma
    grey = ((grey - 0.5) * contrast + 0.5 + bright).clamp(0, 1)
    return (grey - mean) / std


def predict(model: torch.nn.Module, x: np.ndarray, batch: int = 128) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(model(torch.from_numpy(x[i:i + batch]).float()).numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def _log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def _macro_f1(pred: np.ndarray, y: np.ndarray, k: int) -> float:
    f1s = []
    for c in range(k):
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1))
    return float(np.mean(f1s))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising the validation log-loss (grid search in log space)."""
    grid = np.exp(np.linspace(np.log(0.3), np.log(5.0), 200))
    losses = [_log_loss(logits / t, y) for t in grid]
    return float(grid[int(np.argmin(losses))])


def train_run(
    run_dir: Path,
    x: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray | None,
    cfg: dict,
    mean: float,
    std: float,
    epochs: int,
    seed: int,
    log_prefix: str = "",
) -> dict:
    """Train one model; checkpoint every epoch in ``run_dir`` and resume from it.

    With a validation part the checkpoint with the best validation macro-F1 (ties: lower
    log-loss) is kept and a temperature is fitted on it; without one the last epoch is kept
    and the temperature is 1.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    result_file = run_dir / "result.json"
    if result_file.exists() and (run_dir / "best.pt").exists():
        print(f"{log_prefix}already trained: {run_dir}", flush=True)
        return json.loads(result_file.read_text())

    k = int(y.max()) + 1
    torch.manual_seed(seed)
    model = PlainCNN(x.shape[1], k, width=cfg["width"], dropout=cfg["dropout"])
    steps_per_epoch = math.ceil(len(train_idx) / cfg["batch"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15)
    counts = np.bincount(y[train_idx], minlength=k).astype(np.float64)
    weights = (counts.sum() / np.maximum(counts, 1)) ** cfg.get("class_weight_power", 0.5)
    weights = torch.tensor(weights / (weights * counts).sum() * counts.sum(), dtype=torch.float32)
    ema_decay = cfg.get("ema", 0.0)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    history: list[dict] = []
    start_epoch = 0
    best = {"score": -1.0}
    ckpt = run_dir / "last.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        history, start_epoch, best = state["history"], state["epoch"], state["best"]
        ema = state.get("ema", ema)
        print(f"{log_prefix}resuming at epoch {start_epoch + 1}/{epochs}", flush=True)

    gen = torch.Generator().manual_seed(seed * 1000 + start_epoch)
    rng = np.random.default_rng(seed * 1000 + start_epoch)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y.astype(np.int64))
    t0 = time.time()
    for epoch in range(start_epoch, epochs):
        model.train()
        order = rng.permutation(train_idx)
        tot_loss = tot_correct = 0.0
        for i in range(0, len(order), cfg["batch"]):
            idx = torch.from_numpy(order[i:i + cfg["batch"]])
            if len(idx) < 2:
                continue
            xb = augment(xt[idx].float(), cfg["augment"], mean, std, gen)
            yb = yt[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, weight=weights, label_smoothing=cfg.get("label_smoothing", 0.0))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema_decay:
                with torch.no_grad():
                    for key, value in model.state_dict().items():
                        if value.dtype.is_floating_point:
                            ema[key].mul_(ema_decay).add_(value.detach(), alpha=1 - ema_decay)
                        else:
                            ema[key].copy_(value)
            tot_loss += float(loss.detach()) * len(idx)
            tot_correct += float((logits.argmax(1) == yb).sum())
        rec = {"epoch": epoch + 1, "train_loss": tot_loss / len(order), "train_acc": tot_correct / len(order),
               "lr": sched.get_last_lr()[0]}
        # evaluation and checkpoints use the exponential moving average of the weights when enabled
        eval_state = ema if ema_decay else model.state_dict()
        if ema_decay:
            live = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(ema)
        if val_idx is not None and len(val_idx):
            vl = predict(model, x[val_idx])
            vy = y[val_idx]
            rec.update(val_loss=_log_loss(vl, vy), val_acc=float((vl.argmax(1) == vy).mean()),
                       val_macro_f1=_macro_f1(vl.argmax(1), vy, k))
            score = rec["val_macro_f1"] - 1e-3 * rec["val_loss"]
        else:
            score = epoch  # last epoch wins
        history.append(rec)
        if score >= best["score"]:
            best = {"score": score, "epoch": epoch + 1}
            torch.save(eval_state, run_dir / "best_tmp.pt")
            (run_dir / "best_tmp.pt").replace(run_dir / "best_candidate.pt")
        if ema_decay:
            model.load_state_dict(live)
        torch.save({"model": model.state_dict(), "ema": ema, "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "history": history, "epoch": epoch + 1, "best": best}, run_dir / "last_tmp.pt")
        (run_dir / "last_tmp.pt").replace(ckpt)
        done = epoch + 1 - start_epoch
        eta = (time.time() - t0) / done * (epochs - epoch - 1)
        msg = " ".join(f"{k}={v:.4f}" for k, v in rec.items() if k not in ("epoch",))
        print(f"{log_prefix}epoch {epoch + 1}/{epochs} {msg} best@{best['epoch']} ETA {eta / 60:.1f} min", flush=True)

    model.load_state_dict(torch.load(run_dir / "best_candidate.pt"))
    temperature = 1.0
    if val_idx is not None and len(val_idx):
        temperature = fit_temperature(predict(model, x[val_idx]), y[val_idx])
    torch.save(model.state_dict(), run_dir / "best.pt")
    result = {"best_epoch": best["epoch"], "temperature": temperature, "history": history, "epochs": epochs,
              "seed": seed, "train_seconds": sum(1 for _ in history) and (time.time() - t0)}
    result_file.write_text(json.dumps(result, indent=1))
    return result


def load_model(run_dir: Path, in_channels: int, k: int, cfg: dict) -> PlainCNN:
    model = PlainCNN(in_channels, k, width=cfg["width"], dropout=cfg["dropout"])
    model.load_state_dict(torch.load(run_dir / "best.pt"))
    model.eval()
    return model
