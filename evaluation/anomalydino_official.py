"""Record the official AnomalyDINO code's outputs on seeded random DINOv2 ViT-S weights, for
``tests/test_anomalydino_official.py`` (zsad must give the same patch distances, maps, scores and masks).

The official code is not part of zsad: fetch dammsi/AnomalyDINO and facebookresearch/dinov2 (any git checkout) and
pass their folders. This script

1. builds a DINOv2 ViT-S/14 through the official hub path (``torch.hub.load(DINOV2, "dinov2_vits14",
   source="local", pretrained=False)``, what ``src/backbones.py``'s ``DINOv2Wrapper`` calls, redirected from the
   network to the checkout) and loads :func:`seeded_dinov2_state` into it — the test loads the very same state dict
   through zsad's ``timm:vit_small_patch14_dinov2:/path`` (timm converts the release layout);
2. writes a tiny MVTec-layout category (``thing/train/good``, ``thing/test/{good,defect}``) of synthetic images of
   several aspect ratios and runs the official ``run_anomaly_detection`` (faiss on CPU) with and without rotation
   and masking, and with ``k = 2`` neighbours: patch distance grids (``.npy``), full-size maps (``.tiff``), image
   scores, and the masks the official ``compute_background_mask`` gives;
3. runs the official batched zero-shot functions (``run_anomalydino_batched.py``: ``calculate_cosine_distances``,
   ``dists_to_score``) on a batch of the same images, with and without masking;
4. saves images, outputs and versions to ``--out`` (a compressed ``.npz`` of about 0.5 MB).

Needs (beside zsad's environment): faiss-cpu, tifffile, matplotlib, opencv, pandas, pyyaml (the official imports).

    python evaluation/anomalydino_official.py --official /path/AnomalyDINO --dinov2 /path/dinov2 \
        --out tests/data/anomalydino_official.npz
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

#: the recorded configuration (small, so the test is fast): ViT-S/14, shorter side 112 for few-shot (2
#: references), 224 for the batch (8 images: enough patches for the official k = int(0.001 n) >= 2)
SHORTER_SIDE = 112
BATCH_SHORTER_SIDE = 224
SEED = 0
REFERENCES = 2
#: (width, height) of the synthetic images: landscape, portrait, square and odd sizes (all are cropped)
REFERENCE_SIZES = [(100, 74), (100, 74)]
TEST_SIZES = [(100, 74), (75, 107), (90, 90), (89, 67)]
BATCH_SIZES = [(100, 74), (75, 107), (90, 90), (89, 67), (100, 74), (84, 84), (107, 80), (67, 89)]
#: official run configurations: name -> (rotation, masking, k neighbours)
CONFIGS = {"plain": (False, False, 1), "rotation": (True, False, 1), "masking": (False, True, 1),
           "rotation_masking": (True, True, 1), "k2": (False, False, 2)}


def seeded_dinov2_state(seed: int = SEED, *, depth: int = 12, dim: int = 384, patch: int = 14, native: int = 518,
                        mlp_ratio: int = 4) -> dict[str, torch.Tensor]:
    """A DINOv2 ViT-S/14 state dict in the original release layout (``dinov2_vits14_pretrain.pth``), every tensor
    drawn from one seeded generator in a fixed order: fan-in scaled weights, LayerNorm gains near 1, LayerScale 0.5,
    position embeddings and class token large enough that position and content both shape the tokens."""
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std + mean

    grid = native // patch
    state = {
        "cls_token": normal(1, 1, dim, std=0.5),
        "pos_embed": normal(1, 1 + grid * grid, dim, std=0.5),
        "mask_token": torch.zeros(1, dim),
        "patch_embed.proj.weight": normal(dim, 3, patch, patch, std=(3 * patch * patch) ** -0.5),
        "patch_embed.proj.bias": normal(dim, std=0.02),
    }
    hidden = dim * mlp_ratio
    for b in range(depth):
        p = f"blocks.{b}."
        state.update({
            p + "norm1.weight": normal(dim, std=0.1, mean=1.0), p + "norm1.bias": normal(dim, std=0.1),
            p + "attn.qkv.weight": normal(3 * dim, dim, std=dim ** -0.5), p + "attn.qkv.bias": normal(3 * dim, std=0.02),
            p + "attn.proj.weight": normal(dim, dim, std=dim ** -0.5), p + "attn.proj.bias": normal(dim, std=0.02),
            p + "ls1.gamma": normal(dim, std=0.05, mean=0.5),
            p + "norm2.weight": normal(dim, std=0.1, mean=1.0), p + "norm2.bias": normal(dim, std=0.1),
            p + "mlp.fc1.weight": normal(hidden, dim, std=dim ** -0.5), p + "mlp.fc1.bias": normal(hidden, std=0.02),
            p + "mlp.fc2.weight": normal(dim, hidden, std=hidden ** -0.5), p + "mlp.fc2.bias": normal(dim, std=0.02),
            p + "ls2.gamma": normal(dim, std=0.05, mean=0.5),
        })
    state["norm.weight"] = normal(dim, std=0.1, mean=1.0)
    state["norm.bias"] = normal(dim, std=0.1)
    return state


def synthetic_images() -> dict[str, list[np.ndarray]]:
    """References, test images (two with a planted defect) and a batch, as uint8 RGB arrays."""
    from zsad.data.synthetic import make_sample

    rng = np.random.default_rng(SEED)
    refs = [np.asarray(make_sample("disc", None, size=s, rng=rng).image) for s in REFERENCE_SIZES]
    tests = [np.asarray(make_sample("disc", d, size=s, rng=rng).image)
             for s, d in zip(TEST_SIZES, [None, "hole", None, "scratch"])]
    batch = [np.asarray(make_sample("disc", "hole" if i == 3 else None, size=s, rng=rng).image)
             for i, s in enumerate(BATCH_SIZES)]
    return {"ref": refs, "test": tests, "batch": batch}


def _import(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commit(folder: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(official: Path, dinov2: Path, out: Path) -> None:
    import cv2
    import faiss
    import sklearn
    import tifffile
    from PIL import Image

    state = seeded_dinov2_state()
    real_load = torch.hub.load

    def hub_load(repo, name, *args, **kwargs):  # what DINOv2Wrapper.load_model asks for, from the checkout
        model = real_load(str(dinov2), name, source="local", pretrained=False)
        model.load_state_dict(state, strict=True)
        return model

    torch.hub.load = hub_load
    torch.cuda.synchronize = lambda *a, **k: None  # run_anomaly_detection times with it; a no-op on CPU
    sys.path.insert(0, str(official))
    from src.backbones import get_model
    from src.detection import run_anomaly_detection

    batched = _import(official / "run_anomalydino_batched.py", "anomalydino_batched")
    model = get_model("dinov2_vits14", "cpu", smaller_edge_size=SHORTER_SIDE)
    batch_model = get_model("dinov2_vits14", "cpu", smaller_edge_size=BATCH_SHORTER_SIDE)
    images = synthetic_images()
    saved: dict[str, np.ndarray] = {}
    for kind, arrays in images.items():
        for i, a in enumerate(arrays):
            saved[f"{kind}_{i}"] = a
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        names = {}
        for folder in ("train/good", "test/good"):
            (root / "thing" / folder).mkdir(parents=True)
        for i, a in enumerate(images["ref"]):
            Image.fromarray(a).save(root / "thing" / "train" / "good" / f"{i:03d}.png")
        for i, a in enumerate(images["test"]):  # all under test/good: the scores are what is compared
            names[i] = f"{i:03d}"
            Image.fromarray(a).save(root / "thing" / "test" / "good" / f"{i:03d}.png")
        for config, (rotation, masking, k) in CONFIGS.items():
            plots = Path(tmp) / f"plots_{config}"
            scores, _, _ = run_anomaly_detection(
                model, "thing", str(root), REFERENCES, {"thing": []}, str(plots), save_examples=False,
                masking=masking, rotation=rotation, knn_metric="L2_normalized", knn_neighbors=k, faiss_on_cpu=True,
                seed=0, save_patch_dists=True, save_tiffs=True)
            folder = plots / "anomaly_maps" / "seed=0" / "thing" / "test" / "good"
            for i, name in names.items():
                saved[f"{config}/grid_{i}"] = np.load(folder / f"{name}.npy")
                saved[f"{config}/map_{i}"] = tifffile.imread(folder / f"{name}.tiff").astype(np.float32)
                saved[f"{config}/score_{i}"] = np.float64(scores[f"good/{name}.png"])
    for i, a in enumerate(images["test"]):  # the official masks of the test images
        tensor, grid = model.prepare_image(a)
        feats = model.extract_features(tensor)
        saved[f"mask_{i}"] = model.compute_background_mask(feats, grid, threshold=10, masking_type=True)
        saved[f"grid_shape_{i}"] = np.array(grid)
    feats_all, masks_all = [], []
    for a in images["batch"]:
        tensor, grid = batch_model.prepare_image(a)
        feats_all.append(batch_model.extract_features(tensor))
        masks_all.append(batch_model.compute_background_mask(feats_all[-1], grid, threshold=10, masking_type=True))
    for masked in (False, True):
        for i in range(len(feats_all)):
            dists = batched.calculate_cosine_distances(feats_all, i, device="cpu")
            if masked:
                dists[~masks_all[i]] = 0.0
            saved[f"batched_{int(masked)}/dists_{i}"] = dists
            saved[f"batched_{int(masked)}/score_{i}"] = np.float64(batched.dists_to_score(dists))
    for i, m in enumerate(masks_all):
        saved[f"batch_mask_{i}"] = m
    meta = {"shorter_side": SHORTER_SIDE, "batch_shorter_side": BATCH_SHORTER_SIDE, "seed": SEED, "references": REFERENCES, "configs": CONFIGS,
            "tests": len(images["test"]), "batch": len(images["batch"]),
            "official_commit": _commit(official), "dinov2_commit": _commit(dinov2),
            "versions": {"torch": torch.__version__, "opencv": cv2.__version__, "sklearn": sklearn.__version__,
                         "faiss": faiss.__version__, "numpy": np.__version__}}
    saved["meta"] = np.array(json.dumps(meta))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **saved)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB): {json.dumps(meta)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of dammsi/AnomalyDINO")
    parser.add_argument("--dinov2", type=Path, required=True, help="a checkout of facebookresearch/dinov2")
    parser.add_argument("--out", type=Path, default=Path("tests/data/anomalydino_official.npz"))
    args = parser.parse_args()
    record(args.official.resolve(), args.dinov2.resolve(), args.out)


if __name__ == "__main__":
    main()
