"""Fidelity of an export, measured when it is made: the same synthetic images (planted defects with exact masks)
scored by the PyTorch method and by the exported one, through the method's own ``extract`` / ``combine`` / ``raw``.

fp32 must reproduce PyTorch: maps within :data:`FP32_MAP_TOL`, image scores within :data:`FP32_SCORE_TOL`.
int8 is compared with PyTorch fp32 as agreement: per-image Pearson correlation of the maps, and the pixel AUROC
of both against the planted masks. An int8 export below :data:`INT8_FLOOR` is refused unless forced.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from zsad.types import RawOutput

FP32_MAP_TOL = 1e-4
FP32_SCORE_TOL = 1e-5
#: int8 maps must keep their ranking: Pearson r with fp32 >= pearson_min on every image, and pixel AUROC (planted
#: defects) within auroc_delta of fp32's
INT8_FLOOR = {"pearson_min": 0.95, "auroc_delta": 0.02}
#: what the exclusion search aims for before it stops excluding layers
INT8_GOAL = {"pearson_min": 0.99, "auroc_delta": 0.005}
DEFAULT_CHECK_IMAGES = 4


@dataclass
class CheckSet:
    images: list[Image.Image]
    masks: list[np.ndarray]  # H x W bool per image, at the image's size


def check_images(count: int, size: int, seed: int = 0) -> CheckSet:
    """``count`` synthetic images of ``size`` px, each with one planted defect (categories and defects cycle)."""
    from zsad.data.synthetic import CATEGORIES, make_sample

    rng = np.random.default_rng(seed)
    kinds = itertools.cycle(itertools.product(CATEGORIES, ("hole", "scratch", "contamination", "crack")))
    samples = [make_sample(category, defect, size=size, rng=rng) for category, defect in itertools.islice(kinds, count)]
    return CheckSet(images=[s.image for s in samples], masks=[np.asarray(s.mask, bool) for s in samples])


@torch.inference_mode()
def raw_outputs(method, images: Sequence[Image.Image], batch_size: int = 4) -> list[RawOutput]:
    """The method's raw outputs for ``images`` scored as one group, through the runner."""
    from zsad.detector import Detector

    return [result.raw for result in Detector(method, batch_size=batch_size).score(list(images))]


def _maps(raws: Sequence[RawOutput]) -> list[np.ndarray]:
    return [np.asarray(r.anomaly_map, dtype=np.float64) for r in raws]


def fp32_agreement(reference: Sequence[RawOutput], exported: Sequence[RawOutput]) -> dict[str, float]:
    """Largest map and image-score differences between PyTorch and the fp32 export."""
    map_diff = max(float(np.abs(a - b).max()) for a, b in zip(_maps(reference), _maps(exported)))
    score_diff = max(abs(float(a.image_score) - float(b.image_score)) for a, b in zip(reference, exported))
    return {"map_max_abs_diff": map_diff, "score_max_abs_diff": score_diff,
            "map_tolerance": FP32_MAP_TOL, "score_tolerance": FP32_SCORE_TOL}


def fp32_ok(figures: dict[str, float]) -> bool:
    return figures["map_max_abs_diff"] <= FP32_MAP_TOL and figures["score_max_abs_diff"] <= FP32_SCORE_TOL


def int8_ok(figures: dict[str, float], bar: dict[str, float]) -> bool:
    """Whether int8 agreement figures (:meth:`Int8Agreement.to_dict`, or the agreement itself) reach ``bar``
    (:data:`INT8_GOAL` or :data:`INT8_FLOOR`)."""
    return figures["pearson_min"] >= bar["pearson_min"] and figures["auroc_delta"] <= bar["auroc_delta"]


@dataclass
class Int8Agreement:
    pearson_min: float
    pearson_mean: float
    auroc_fp32: float
    auroc_int8: float
    auroc_delta: float
    score_max_abs_diff: float

    def meets(self, bar: dict[str, float]) -> bool:
        return int8_ok(asdict(self), bar)

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in asdict(self).items()}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if den == 0.0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float((a * b).sum() / den)


def pixel_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.concatenate([m.ravel() for m in masks]),
                               np.concatenate([m.ravel() for m in maps])))


def int8_agreement(reference: Sequence[RawOutput], quantized: Sequence[RawOutput],
                   masks: Sequence[np.ndarray]) -> Int8Agreement:
    ref, q = _maps(reference), _maps(quantized)
    rs = [pearson(a, b) for a, b in zip(ref, q)]
    auroc_ref, auroc_q = pixel_auroc(ref, masks), pixel_auroc(q, masks)
    scores = max(abs(float(a.image_score) - float(b.image_score)) for a, b in zip(reference, quantized))
    return Int8Agreement(pearson_min=min(rs), pearson_mean=float(np.mean(rs)), auroc_fp32=auroc_ref,
                         auroc_int8=auroc_q, auroc_delta=abs(auroc_ref - auroc_q), score_max_abs_diff=scores)
