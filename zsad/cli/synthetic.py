"""``zsad make-synthetic``: an MVTec-AD-layout dataset with planted defects and masks, for smoke runs and tests."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-synthetic", help="write a synthetic MVTec-AD-layout dataset with planted defects")
    p.add_argument("root")
    p.add_argument("--categories", default=None, help="comma-separated (default: all)")
    p.add_argument("--n-train-good", type=int, default=5)
    p.add_argument("--n-test-good", type=int, default=5)
    p.add_argument("--n-test-defect", type=int, default=5)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from zsad.cli.options import parse_categories
    from zsad.data.synthetic import make_dataset

    folders = make_dataset(Path(args.root), categories=parse_categories(args.categories),
                           n_train_good=args.n_train_good, n_test_good=args.n_test_good,
                           n_test_defect=args.n_test_defect, size=args.size, seed=args.seed)
    print(f"zsad: wrote {len(folders)} categories under {args.root}", file=sys.stderr)
    return 0
