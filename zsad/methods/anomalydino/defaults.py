"""The official per-category settings of AnomalyDINO's default ("agnostic") preprocessing, read from
dammsi/AnomalyDINO ``src/utils.py`` (``get_dataset_info``): references rotated for every category; test-patch
masking on MVTec AD only where the paper's masking test passed, on VisA for every category. ``zsad evaluate``
applies them per category (``Method.dataset_defaults``); ``zsad score`` leaves masking off unless asked."""

from __future__ import annotations

#: MVTec AD categories masked by default (every other MVTec AD category: no masking)
MVTEC_MASKED = frozenset({"capsule", "hazelnut", "pill", "screw", "toothbrush"})


def official_masking(dataset_format: str, category: str) -> bool:
    """Masking on for ``category`` of a dataset read in ``dataset_format`` (zsad's names: ``mvtec``, ``visa``);
    False for any other dataset, where the official code has no default."""
    if dataset_format == "mvtec":
        return category in MVTEC_MASKED
    return dataset_format == "visa"
