"""``python -m training <name>``: retrain, re-evaluate and re-document one shipped model."""
from __future__ import annotations

import argparse
import os

# numpy's BLAS threads fight torch's for the two cores (the tensor cache then takes minutes)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

from .configs import MODELS


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("name", choices=sorted(MODELS) + ["all"])
    parser.add_argument("--paper-seeds", type=int, default=10, help="repeats of the 70/30 paper protocol (0 = skip)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the shipped (leakage-free) model")
    parser.add_argument("--paper-epochs", type=int, default=None, help="epochs of each paper-protocol repeat")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--shard", default="0/1",
                        help="i/n: train only the paper seeds with seed %% n == i (run n processes in parallel, then "
                             "once more with the default to write the report with every seed)")
    parser.add_argument("--no-new-paper-runs", action="store_true",
                        help="report the paper-protocol seeds already finished, train no new ones")
    parser.add_argument("--stage", choices=["all", "paper"], default="all",
                        help="paper: only train the paper-protocol repeats (with --shard), no export and no report")
    args = parser.parse_args()
    if args.no_new_paper_runs:
        shard = (-1, 1)
    else:
        index, count = (int(v) for v in args.shard.split("/"))  # "i/n"
        shard = (index, count)
    from .pipeline import run

    names = sorted(MODELS) if args.name == "all" else [args.name]
    for name in names:
        run(name, paper_seeds=args.paper_seeds, epochs=args.epochs, paper_epochs=args.paper_epochs,
            threads=args.threads, shard=shard, stage=args.stage)


if __name__ == "__main__":
    main()
