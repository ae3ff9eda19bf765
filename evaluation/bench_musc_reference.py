"""What ``reference_size`` (scoring each image against R sampled others) costs in accuracy, on synthetic data.

    python evaluation/bench_musc_reference.py --images 40 --sizes 5 10 20

Synthetic "carpet" textures with planted defects (a third of the images), tokens from the tiny random backbone
(mutual scoring needs no semantics). For each R the patch scores are compared with the exact ones (all N-1
references), and image / pixel AUROC are computed against the known labels and masks.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

import zsad
from zsad.data.synthetic import DEFECT_TYPES, make_sample
from zsad.methods.musc import concat_features, musc_patch_scores
from zsad.scoring.maps import grid_to_image, to_original_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    samples = [make_sample("carpet", DEFECT_TYPES[i % len(DEFECT_TYPES)] if i % 3 == 0 else None, size=224, rng=rng)
               for i in range(args.images)]
    detector = zsad.create("musc", backbone="tiny-random", image_size=args.image_size, warn_random=False)
    feats = concat_features([detector.method.extract(detector.backbone.preprocess([s.image])) for s in samples])
    labels = [int(s.defect_type is not None) for s in samples]
    masks = np.concatenate([s.mask.ravel() for s in samples])

    def evaluate(reference_size: int | None) -> tuple[torch.Tensor, float, float]:
        patch = musc_patch_scores(feats.layers, reference_size=reference_size, seed=args.seed)
        maps = [to_original_size(grid_to_image(p[None], args.image_size, align_corners=True), [(224, 224)])[0]
                for p in patch]
        image_auroc = roc_auc_score(labels, [m.max() for m in maps])
        pixel_auroc = roc_auc_score(masks, np.concatenate([m.ravel() for m in maps]))
        return patch, image_auroc, pixel_auroc

    exact, image_exact, pixel_exact = evaluate(None)
    print(f"N = {args.images} images ({sum(labels)} with defects), tiny-random tokens at {args.image_size} px")
    print("| references R | image AUROC | pixel AUROC | mean abs diff of patch scores vs exact | max abs diff |")
    print("|---|---|---|---|---|")
    print(f"| all (N-1 = {args.images - 1}) | {image_exact:.4f} | {pixel_exact:.4f} | 0 | 0 |")
    for size in args.sizes:
        patch, image_auroc, pixel_auroc = evaluate(size)
        diff = (patch - exact).abs()
        print(f"| {size} | {image_auroc:.4f} | {pixel_auroc:.4f} | {diff.mean():.2e} | {diff.max():.2e} |")


if __name__ == "__main__":
    main()
