"""Choose the paper-protocol recipe on validation data only.

``python -m training.paper_recipe_check <name> --epochs 25 40`` trains the model's paper recipe
(``configs.paper_train_config``) on an image-level stratified 80/20 split of the *training* part of
paper-protocol seed 0, once per epoch count (the one-cycle schedule depends on it), and prints the
validation figures of the last epoch, which is what a paper-protocol repeat keeps. The seed-0 test
part is never read, so the chosen epoch count is not tuned on any test image.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from . import configs, data as D
from .pipeline import PAPER_TEST_FRACTION, load_model_data, recipe_key

INNER_VALIDATION_FRACTION = 0.2


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m training.paper_recipe_check", description=__doc__)
    parser.add_argument("name", choices=sorted(configs.MODELS))
    parser.add_argument("--epochs", type=int, nargs="+", required=True, help="epoch counts to compare")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    import torch

    from .evaluate import evaluate
    from .train import load_model, predict, train_run

    torch.set_num_threads(args.threads)
    classes = configs.MODELS[args.name]["classes"]
    data = load_model_data(args.name)
    y, x, spec = data.y, data.x, data.spec
    paper_train, _ = D.stratified_split(y, PAPER_TEST_FRACTION, seed=0)  # its test part is left alone
    inner_train_pos, inner_val_pos = D.stratified_split(y[paper_train], INNER_VALIDATION_FRACTION, seed=0)
    inner_train, inner_val = paper_train[inner_train_pos], paper_train[inner_val_pos]
    paper_cfg = configs.paper_train_config(args.name)
    prior = np.bincount(y[inner_train], minlength=len(classes)).astype(float)
    print(f"[{args.name}] paper recipe {paper_cfg}; inner train {len(inner_train)}, inner validation "
          f"{len(inner_val)}", flush=True)
    rows = []
    for epochs in args.epochs:
        run_dir = D.CACHE_DIR / "runs" / args.name / f"paper-recipe-check-e{epochs}-{recipe_key(paper_cfg)}"
        # no validation part passed to train_run: like a paper repeat, the last epoch is kept with T = 1
        train_run(run_dir, x, y, inner_train, None, paper_cfg, spec.mean, spec.std, epochs, seed=100,
                  log_prefix=f"[{args.name} paper recipe, {epochs} epochs] ")
        model = load_model(run_dir, spec.channels, len(classes), paper_cfg)
        m = evaluate(predict(model, x[inner_val]), y[inner_val], classes, prior, n_boot=0)
        rows.append((epochs, m))
    print("epochs | inner-validation micro acc | macro acc | macro F1 | log-loss")
    for epochs, m in rows:
        print(f"{epochs} | {m['micro_accuracy']:.4f} | {m['macro_accuracy']:.4f} | {m['macro_f1']:.4f} | "
              f"{m['log_loss']:.4f}")


if __name__ == "__main__":
    main()
