"""``vfm`` against the official AnomalyVFM code, side by side on the same seeded random weights with non-zero
adapters (random ``lora_B``, magnitudes off the row norms: at initialisation DoRA is a no-op and a comparison would
prove nothing).

    python evaluation/vfm_official.py --official PATH [--radio PATH] [--large] [--record tests/data/vfm_official.npz]
                                      [--families radio,dinov2,clip,dinov3 --dinov2 PATH --dinov3 PATH]

``--official``: a checkout of MaticFuc/AnomalyVFM (its ``radio_local.py``, ``peft_local/``, ``decoder.py`` and
``models/radio.py`` are imported from there; nothing of it is copied). ``--radio``: a checkout of NVlabs/RADIO, to
check the torch-hub model's bilinear position-table path (``radio/vit_patch_generator.py``). ``--large``: also the
published architecture (RADIO v2.5-L, 768 px, rank 64) on two images (minutes on a CPU).

Per configuration: zsad builds the backbone (``radio:ARCH:random``, seed 0) and random adapters, decoder and head
(``random_modules``, seed 1); the script loads the same tensors into the official model (``models/radio.py``'s
``RADIO`` wrapper with ``radio_local.RADIOModel``, ``peft_local`` DoRA wrappers, ``decoder.SimpleDecoder`` /
``SimplePredictor``), writes them in both official checkpoint layouts (``train.py``'s ``model.pkl`` and the Hub's
``model.safetensors``), imports each with ``zsad adapters import-anomalyvfm`` and scores the images with zsad.
Compared in fp32 on CPU: the preprocessed input, summary, spatial features, mask logits, the map of ``test.py``
(sigmoid, 5 x 5 mean filter, at 2 x the patch grid), that map resized bilinearly to the image (anomalib's port;
zsad's output) and the image score. ``--record`` writes the official outputs of the tiny configuration for
``tests/test_vfm.py``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MAP_TOL, SCORE_TOL = 1e-4, 1e-5
#: (arch, image size, DoRA rank, images)
TINY = ("tiny", 64, 8, 3)
LARGE = ("v2.5-l", 768, 64, 2)
SIZES = [(97, 61), (64, 64), (50, 83)]


def images(n: int, seed: int = 0):
    from zsad.data.synthetic import make_sample

    rng = np.random.default_rng(seed)
    defects = ["hole", "scratch", "contamination"]
    return [make_sample("weave", defects[i % 3], size=SIZES[i % len(SIZES)], rng=rng).image for i in range(n)]


@contextmanager
def official_modules(path: Path, arch: str):
    """The official modules, with ``radio_local.VisionTransformer`` given the architecture's size (the official
    ``RADIOModel`` builds ViT-L/16 with default arguments)."""
    import functools

    from zsad.backbones.radio import CONFIGS

    sys.path.insert(0, str(path))
    try:
        radio_local = importlib.import_module("radio_local")
        original = radio_local.VisionTransformer
        c = CONFIGS[arch]
        radio_local.VisionTransformer = functools.partial(original, patch_size=c.patch_size, embed_dim=c.width,
                                                          depth=c.depth, num_heads=c.heads, mlp_ratio=c.mlp_ratio)
        try:
            yield types.SimpleNamespace(
                radio=importlib.import_module("models.radio"), decoder=importlib.import_module("decoder"),
                peft=importlib.import_module("peft_local.peft_wrapper"))
        finally:
            radio_local.VisionTransformer = original
    finally:
        sys.path.remove(str(path))


def official_model(mods, backbone, modules, size: int, rank: int):
    """The official wrapper, decoder and predictor holding zsad's tensors (``model.blocks.i`` names are equal; the
    patch generator's are RADIO's)."""
    from zsad.methods.vfm.dora import DoraSet

    wrapper = mods.radio.RADIO(height=size, use_local=True)
    vit = wrapper.net.model
    zsad_vit = backbone.model
    vit.patch_generator.pos_embed = torch.nn.Parameter(zsad_vit.pos_embed.detach().clone())
    wrapper.add_peft(rank, peft_type=mods.peft.PeftType.DORA)
    state = {"net.model.patch_generator.embedder.weight": zsad_vit.patch_embed.weight,
             "net.model.patch_generator.cls_token.token": zsad_vit.prefix,
             "net.model.patch_generator.pos_embed": zsad_vit.pos_embed}
    for key, value in zsad_vit.state_dict().items():
        if key.startswith("blocks."):
            block, rest = key.split(".", 2)[1], key.split(".", 2)[2]
            if rest.startswith(("attn.qkv.", "attn.proj.")):
                rest = rest.replace(".weight", ".layer.weight").replace(".bias", ".layer.bias")
            state[f"net.model.blocks.{block}.{rest}"] = value
    dora: DoraSet = modules.dora
    for key, value in dora.state_dict().items():  # blocks.{i}.qkv.lora_A_q -> net.model.blocks.{i}.attn.qkv.lora_A_q
        _, block, which, name = key.split(".")
        state[f"net.model.blocks.{block}.attn.{which}.{name}"] = value
    own = wrapper.state_dict()
    missing = set(own) - set(state) - {"net.input_conditioner.norm_mean", "net.input_conditioner.norm_std",
                                       "net.summary_idxs"}
    assert not missing, sorted(missing)[:5]
    wrapper.load_state_dict({**own, **state})
    decoder = mods.decoder.SimpleDecoder(backbone.width, 1, 1)
    decoder.load_state_dict(modules.decoder.state_dict())
    predictor = mods.decoder.SimplePredictor(modules.head.in_features)
    predictor.load_state_dict({"lin.weight": modules.head.weight, "lin.bias": modules.head.bias})
    return wrapper.eval(), decoder.eval(), predictor.eval()


@torch.no_grad()
def official_outputs(wrapper, decoder, predictor, pil_images, size: int, kernel: int = 5) -> dict:
    """``test.py``'s ``test_category`` on CPU in fp32 (autocast is CUDA's there), per image; the map resized to the
    image as anomalib does."""
    transform = wrapper.get_img_transform()
    x = torch.stack([transform(img.convert("RGB")) for img in pil_images])
    summary, ftrs = wrapper(x)
    grid = size // wrapper.patch_size
    spatial = ftrs.permute(0, 2, 1).reshape(x.shape[0], -1, grid, grid)
    mask, _ = decoder(spatial)
    score = predictor(summary).squeeze(1).sigmoid()
    pooled = torch.nn.AvgPool2d((kernel, kernel), 1, kernel // 2)(mask.sigmoid().squeeze(1))
    at_size = [F.interpolate(pooled[i][None, None], size=(img.size[1], img.size[0]), mode="bilinear",
                             align_corners=False)[0, 0] for i, img in enumerate(pil_images)]
    return {"input": x, "summary": summary, "spatial": spatial, "logits": mask, "map": pooled, "score": score,
            "at_size": at_size}


@torch.no_grad()
def zsad_outputs(detector, pil_images) -> dict:
    from zsad.methods.vfm.features import vfm_features

    method = detector.method
    x = method.backbone.preprocess(pil_images)
    summary, spatial = vfm_features(method.backbone, x)
    logits = method.decoder.mask_logits(spatial)
    scores, maps = method(x)
    results = detector.score(pil_images)
    return {"input": x, "summary": summary, "spatial": spatial, "logits": logits, "map": maps, "score": scores,
            "at_size": [torch.from_numpy(r.anomaly_map) for r in results],
            "result_score": torch.tensor([r.image_score for r in results])}


@torch.no_grad()
def vfm_features_of(backbone, pil_images):
    from zsad.methods.vfm.features import vfm_features

    return vfm_features(backbone, backbone.preprocess(pil_images))


def differences(ours: dict, theirs: dict) -> dict[str, float]:
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    out = {"input": float(((theirs["input"] - mean) / std - ours["input"]).abs().max())}
    for key in ("summary", "spatial", "logits", "map", "score"):
        out[key] = float((ours[key].float() - theirs[key].float()).abs().max())
    out["map_at_size"] = max(float((a - b).abs().max()) for a, b in zip(ours["at_size"], theirs["at_size"]))
    out["result_score"] = float((ours["result_score"] - theirs["score"]).abs().max())
    return out


def write_layouts(wrapper, decoder, predictor, folder: Path) -> dict[str, Path]:
    """The same model in train.py's ``model.pkl`` and in the Hub release's ``model.safetensors`` layouts."""
    from safetensors.torch import save_file

    pkl = folder / "model.pkl"
    torch.save({"model_state_dict": wrapper.state_dict(), "decoder_state_dict": decoder.state_dict(),
                "predictor_state_dict": predictor.state_dict()}, pkl)
    hub = folder / "model.safetensors"
    flat = {**{f"model.{k}": v for k, v in wrapper.state_dict().items()},
            **{f"decoder.{k}": v for k, v in decoder.state_dict().items()},
            **{f"predictor.{k}": v for k, v in predictor.state_dict().items()}}
    save_file({k: v.contiguous() for k, v in flat.items()}, str(hub))
    return {"train.py model.pkl": pkl, "Hub model.safetensors": hub}


def hub_position_check(radio_repo: Path, backbone) -> float:
    """zsad's bilinear position path against the torch-hub model's ``ViTPatchGenerator`` in eval (CPE) mode: the
    tokens entering block 0 for the same weights (8 prefix tokens as 3 summary + 5 registers)."""
    package = types.ModuleType("radio")
    package.__path__ = [str(radio_repo / "radio")]
    sys.modules.setdefault("radio", package)
    vpg = importlib.import_module("radio.vit_patch_generator")
    vit = backbone.model
    c = vit.config
    gen = vpg.ViTPatchGenerator(patch_size=c.patch_size, embed_dim=c.width, input_dims=224, cls_token=True,
                                max_input_dims=c.patch_size * c.pos_grid, num_cls_tokens=3,
                                num_registers=c.prefix_tokens - 3).eval()
    with torch.no_grad():
        gen.embedder.weight.copy_(vit.patch_embed.weight)
        gen.pos_embed.copy_(vit.pos_embed)
        gen.cls_token.token.copy_(vit.prefix)
        x = torch.randn(2, 3, backbone.image_size, backbone.image_size)
        ours = backbone.with_pos_interpolation("bilinear").embed(x)
        return float((gen(x) - ours).abs().max())


def compare(config, official: Path, radio_repo: Path | None, tmp: Path, record: Path | None) -> dict:
    import zsad
    from zsad.backbones import load_backbone
    from zsad.methods.vfm.adapter import random_modules
    from zsad.methods.vfm.official import import_checkpoint

    arch, size, rank, count = config
    torch.manual_seed(0)
    backbone = load_backbone(f"radio:{arch}:random", image_size=size, pos_interpolation="bicubic", warn_random=False)
    modules = random_modules(backbone, seed=1, rank=rank)
    pil = images(count)
    with official_modules(official, arch) as mods:
        wrapper, decoder, predictor = official_model(mods, backbone, modules, size, rank)
        theirs = official_outputs(wrapper, decoder, predictor, pil, size)
        files = write_layouts(wrapper, decoder, predictor, tmp)
    report = {"config": {"arch": arch, "image_size": size, "rank": rank, "images": count}}
    for label, path in files.items():
        out = tmp / f"adapter-{path.stem}"
        import_checkpoint(path, out, image_size=size)
        detector = zsad.create("vfm", backbone=f"radio:{arch}:{out / 'backbone.safetensors'}", image_size=size,
                               device="cpu", precision="fp32", adapter=str(out), pos_interpolation="bicubic",
                               warn_random=False)
        report[label] = differences(zsad_outputs(detector, pil), theirs)
    plain, _ = vfm_features_of(backbone, pil)
    report["control: official summary vs the backbone without adapters"] = float((plain - theirs["summary"]).abs().max())
    if radio_repo is not None:
        report["hub bilinear: tokens entering block 0"] = hub_position_check(radio_repo, backbone)
    if record is not None:
        np.savez_compressed(
            record, **{f"image{i}": np.asarray(img) for i, img in enumerate(pil)},
            **{k: theirs[k].numpy() for k in ("input", "summary", "spatial", "logits", "map", "score")},
            **{f"at_size{i}": m.numpy() for i, m in enumerate(theirs["at_size"])},
            config=np.array([size, rank, 0, 1]),
            weights_sum=np.array([float(sum(p.double().abs().sum() for p in backbone.model.parameters())),
                                  float(sum(p.double().abs().sum() for p in modules.parameters()))]))
    return report


def report_ok(report: dict) -> bool:
    """Print one configuration's report; True when every comparison is within its tolerance (maps 1e-4, scores
    1e-5, other checks 1e-5) and every control is large."""
    ok = True
    print(report["config"])
    for label, value in report.items():
        if label == "config":
            continue
        if isinstance(value, dict):
            print(f"  {label}: " + ", ".join(f"{k} {v:.1e}" for k, v in value.items()))
            ok &= value["map"] <= MAP_TOL and value["map_at_size"] <= MAP_TOL and value["score"] <= SCORE_TOL \
                and value["result_score"] <= SCORE_TOL
        elif label.startswith("control"):
            print(f"  {label}: {value:.1e} (must be large: the adapters change the model)")
            ok &= value > 1e-3
        else:
            print(f"  {label}: {value:.1e}")
            ok &= value <= 1e-5
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, type=Path, help="checkout of MaticFuc/AnomalyVFM")
    parser.add_argument("--radio", type=Path, default=None, help="checkout of NVlabs/RADIO (bilinear hub path)")
    parser.add_argument("--large", action="store_true", help="also RADIO v2.5-L at 768 px (slow on a CPU)")
    parser.add_argument("--record", type=Path, default=None, help="write the tiny configuration's official outputs")
    parser.add_argument("--families", default="radio", help="radio, dinov2, clip, dinov3 (comma-separated; the others "
                        "through evaluation/vfm_official_vit.py, recording into --record's folder)")
    parser.add_argument("--dinov2", type=Path, default=None, help="checkout of facebookresearch/dinov2 (dinov2)")
    parser.add_argument("--dinov3", type=Path, default=None, help="checkout of facebookresearch/dinov3 (dinov3)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    families = args.families.split(",")
    ok = True
    others = [f for f in families if f != "radio"]
    if others:
        from vfm_official_vit import run

        if "dinov2" in others and args.dinov2 is None:
            parser.error("--families dinov2 needs --dinov2 PATH")
        if "dinov3" in others and args.dinov3 is None:
            parser.error("--families dinov3 needs --dinov3 PATH")
        ok &= run(args.official, args.dinov2 or Path("."), others, args.record.parent if args.record else None,
                  args.dinov3)
    for config in [TINY, *([LARGE] if args.large else [])] if "radio" in families else []:
        with tempfile.TemporaryDirectory(prefix="vfm-official-") as tmp:
            report = compare(config, args.official, args.radio, Path(tmp), args.record if config is TINY else None)
        ok &= report_ok(report)
    print("EQUAL within maps 1e-4, scores 1e-5" if ok else "DIFFERENT")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
