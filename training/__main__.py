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
    args = parser.parse_args()
    from .pipeline import run

    names = sorted(MODELS) if args.name == "all" else [args.name]
    for name in names:
        run(name, paper_seeds=args.paper_seeds, epochs=args.epochs, paper_epochs=args.paper_epochs, threads=args.threads)


if __name__ == "__main__":
    main()
