"""Per-defect-type metrics and type naming on hand-made data; the bundled dataset-type map."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from zsad.errors import UsageError
from zsad.metrics import per_type_metrics, type_naming
from zsad.metrics.type_map import load_type_map, parse_type_map
from zsad.prompts import load_prompt_bank


def _two_type_category(rng: np.random.Generator):
    """3 normal images, 2 'scratch' images segmented perfectly (defect 1, rest 0), 2 'hole' images whose map is
    0 everywhere (like the normal maps): a perfect and a constant detector within one category."""
    shape = (24, 30)
    types = ["good"] * 3 + ["scratch", "scratch", "hole", "hole"]
    labels = [0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.3, 0.2, 0.9, 0.8, 0.25, 0.05]
    maps, masks = [], []
    for kind in types:
        mask = np.zeros(shape, bool)
        if kind != "good":
            y, x = rng.integers(0, 18, 2)
            mask[y : y + 5, x : x + 6] = True
        maps.append((mask * 1.0 if kind == "scratch" else np.zeros(shape)).astype(np.float32))
        masks.append(mask)
    return types, scores, labels, maps, masks


def test_each_type_is_scored_against_the_normal_images():
    types, scores, labels, maps, masks = _two_type_category(np.random.default_rng(0))
    found = per_type_metrics(types, scores, labels, maps, masks, aupro_variant="mvtec",
                             aupimo_values=[np.nan] * 3 + [1.0, 0.5, 0.0, 0.25])
    assert sorted(found) == ["hole", "scratch"]
    scratch, hole = found["scratch"], found["hole"]
    assert scratch["n_images"] == hole["n_images"] == 2
    # image AUROC: scratch scores 0.9, 0.8 beat every normal score; hole 0.25 beats 2 of 3, 0.05 none -> 2/6
    assert scratch["image_auroc"] == pytest.approx(1.0)
    assert hole["image_auroc"] == pytest.approx(2 / 6)
    # pixels: scratch perfectly separated; hole's map is constant, so every pair ties -> 1/2
    assert scratch["pixel_auroc"] == pytest.approx(1.0)
    assert hole["pixel_auroc"] == pytest.approx(0.5)
    # AUPRO (mvtec): perfect -> 1; constant -> the line (0,0)-(1,1) up to 0.3: 0.045 / 0.3 = 0.15
    assert scratch["aupro"] == pytest.approx(1.0)
    assert hole["aupro"] == pytest.approx(0.15)
    assert scratch["aupimo"] == pytest.approx(0.75) and hole["aupimo"] == pytest.approx(0.125)


def test_per_type_pixel_auroc_matches_sklearn_on_the_subset():
    rng = np.random.default_rng(1)
    types, scores, labels, maps, masks = _two_type_category(rng)
    maps = [m + rng.random(m.shape).astype(np.float32) for m in maps]
    found = per_type_metrics(types, scores, labels, maps, masks)
    for kind in ("scratch", "hole"):
        chosen = [i for i, t in enumerate(types) if t in ("good", kind)]
        y = np.concatenate([masks[i].ravel() for i in chosen])
        s = np.concatenate([maps[i].ravel() for i in chosen])
        assert found[kind]["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert found[kind]["image_auroc"] == pytest.approx(
            roc_auc_score([labels[i] for i in chosen], [scores[i] for i in chosen]))


def test_without_maps_or_normal_images():
    found = per_type_metrics(["a", "b", "good"], [0.9, 0.2, 0.5], [1, 1, 0])
    assert found == {"a": {"n_images": 1, "image_auroc": 1.0}, "b": {"n_images": 1, "image_auroc": 0.0}}
    assert per_type_metrics(["a", "b"], [0.9, 0.2], [1, 1])["a"]["image_auroc"] is None  # no normal image


def test_type_naming_accuracy_and_macro_f1_by_hand():
    # a: P = 1/1, R = 1/2 -> F1 2/3; b: P = 1/2, R = 1/2 -> F1 1/2; c is predicted but never true (not averaged)
    found = type_naming(["a", "a", "b", "b"], ["a", "b", "b", "c"])
    assert found["accuracy"] == pytest.approx(0.5)
    assert found["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert found["n_images"] == 4 and found["types"] == ["a", "b"]
    with pytest.raises(UsageError):
        type_naming([], [])


def test_bundled_map_targets_the_bundled_vocabulary():
    vocabulary = dict(load_prompt_bank().defects)
    mapping = load_type_map(vocabulary=vocabulary)
    assert {t for t in mapping.types.values() if t} <= set(vocabulary)
    assert mapping.resolve("scratch_head", vocabulary) == "scratch"
    assert mapping.resolve("Faulty-Imprint", vocabulary) == "print"
    assert mapping.resolve("broken_large", vocabulary) is None  # listed as unmapped: never guessed
    assert mapping.resolve("split_teeth", vocabulary) is None
    assert mapping.resolve("stain", vocabulary) == "contamination"  # not listed: a synonym of the vocabulary
    assert mapping.resolve("fracture", vocabulary) == "crack"
    assert mapping.resolve("mystery_defect", vocabulary) is None
    assert mapping.is_unnamed("anomaly") and mapping.is_unnamed("KO") and not mapping.is_unnamed("scratch")
    assert mapping.resolve("glue", {"scratch": ("scratch",)}) is None  # a target the vocabulary lacks


def test_map_file_is_checked(tmp_path):
    with pytest.raises(UsageError, match="repeats"):
        parse_type_map({"types": {"Scratch-Head": "scratch", "scratch_head": "scratch"}}, "m.yaml")
    with pytest.raises(UsageError, match="zsad defect type or null"):
        parse_type_map({"types": {"poke": ["hole"]}}, "m.yaml")
    with pytest.raises(UsageError, match="'types' and 'unnamed'"):
        parse_type_map({"typos": {}}, "m.yaml")
    path = tmp_path / "map.yaml"
    path.write_text("types:\n  poke: hole\n  poke: cut\n")
    with pytest.raises(UsageError, match="duplicate key"):
        load_type_map(path)
