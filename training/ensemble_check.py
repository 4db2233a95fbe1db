"""Choose how many networks the shipped model averages, on the leakage-free validation part only.

``python -m training.ensemble_check lung-ct-3 --networks 2`` trains (or reuses) networks 1..N of the
shipped model in the run folders ``python -m training`` uses, then prints validation figures for the mean
of the first n networks, n = 1..N, with and without averaging in the horizontally flipped image. Each
variant gets its own temperature fitted on validation, as the shipped model does. The test part is never
read.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from . import configs
from .pipeline import leakage_free_split, load_model_data, member_run_dir


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m training.ensemble_check", description=__doc__)
    parser.add_argument("name", choices=sorted(configs.MODELS))
    parser.add_argument("--networks", type=int, default=2, help="largest number of networks to average")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    import torch

    from .evaluate import evaluate
    from .train import fit_temperature, load_model, predict, train_run

    torch.set_num_threads(args.threads)
    cfg = configs.MODELS[args.name]
    classes, epochs, recipe = cfg["classes"], cfg["epochs"], configs.train_config(args.name)
    data = load_model_data(args.name)
    parts = leakage_free_split(data)
    tr, va = parts["train"], parts["val"]
    x_val, y_val = data.x[va], data.y[va]
    plain, flipped = [], []
    for member in range(args.networks):
        run_dir = member_run_dir(args.name, epochs, recipe, member)
        train_run(run_dir, data.x, data.y, tr, va, recipe, data.spec.mean, data.spec.std, epochs, seed=1 + member,
                  log_prefix=f"[{args.name} network {member + 1}] ")
        network = load_model(run_dir, data.spec.channels, len(classes), recipe)
        plain.append(predict(network, x_val))
        flipped.append(predict(network, np.ascontiguousarray(x_val[..., ::-1])))
    prior = np.bincount(data.y[tr], minlength=len(classes)).astype(float)
    print(f"networks | flip | T | val micro acc | macro acc | macro F1 | log-loss | recall {classes}")
    for n in range(1, args.networks + 1):
        for flip in (False, True):
            logits = np.mean(plain[:n], axis=0)
            if flip:
                logits = (logits + np.mean(flipped[:n], axis=0)) / 2
            t = fit_temperature(logits, y_val)
            m = evaluate(logits / t, y_val, classes, prior, n_boot=0)
            recall = [round(m["per_class"][c]["recall"], 3) for c in classes]
            print(f"{n} | {flip} | {t:.3f} | {m['micro_accuracy']:.4f} | {m['macro_accuracy']:.4f} | "
                  f"{m['macro_f1']:.4f} | {m['log_loss']:.4f} | {recall}", flush=True)


if __name__ == "__main__":
    main()
