"""``vfm`` on AnomalyVFM's DINOv2 and CLIP backbones against the official code, on seeded random weights with
non-zero adapters; run through ``evaluation/vfm_official.py --families dinov2,clip`` (or alone, same flags).

    python evaluation/vfm_official_vit.py --official PATH --dinov2 PATH [--record tests/data]

``--official``: a checkout of MaticFuc/AnomalyVFM (``models/dinov2.py``, ``models/clip.py``, ``peft_local/``,
``decoder.py`` are imported; nothing is copied). ``--dinov2``: a checkout of facebookresearch/dinov2: the official
``DINOv2`` wrapper's ``torch.hub.load("facebookresearch/dinov2", "dinov2_vitl14_reg")`` is answered from it with
the hub's register-model settings (4 registers, ``interpolate_antialias=True``, ``interpolate_offset=0``) at the
tiny size. The official ``CLIP`` wrapper's ``AutoModel.from_pretrained("openai/clip-vit-large-patch14-336")`` is
answered with a Hugging Face ``CLIPModel`` of the tiny size (QuickGELU like OpenAI's).

Per family (the tiny models: width 64, 6 blocks, patch 14, native 224 px, run at 280 px so the position table is
resized as at 672): zsad builds the backbone (DINOv2: a seeded release-layout state dict loaded as
``timm:tiny-dinov2:FILE``; CLIP: ``tiny``) and random adapters, decoder and head (``random_modules``, seed 1); the
official wrapper gets the same tensors, ``add_peft(rank 8, DoRA)``, ``SimpleDecoder(64, 1, 1)`` and
``SimplePredictor(64)``; ``test.py``'s steps run in fp32 on CPU; the official checkpoint (``train.py``'s
``model.pkl`` and the Hub's ``model.safetensors``) is imported with ``zsad adapters import-anomalyvfm`` and
scored by zsad. ``--record DIR`` writes ``vfm_official_{dinov2,clip}.npz`` (images, official outputs, the
official checkpoint's key names and shapes) for ``tests/test_vfm_families.py``.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from anomalydino_official import seeded_dinov2_state  # noqa: E402

SIZE, RANK, NATIVE, WIDTH, DEPTH, HEADS = 280, 8, 224, 64, 6, 4
#: DINOv3: timm's smallest DINOv3-style ViT (T/16: width 192, 12 blocks, 3 heads), at 128 px (rotary positions)
D3_SIZE, D3_WIDTH, D3_DEPTH, D3_HEADS = 128, 192, 12, 3


def size_of(family: str) -> int:
    return D3_SIZE if family == "dinov3" else SIZE


def width_of(family: str) -> int:
    return D3_WIDTH if family == "dinov3" else WIDTH
SIZES = [(97, 61), (64, 64)]
MEANS = {"clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))}


def images(n: int = 2, seed: int = 0):
    from zsad.data.synthetic import make_sample

    rng = np.random.default_rng(seed)
    return [make_sample("weave", d, size=SIZES[i % len(SIZES)], rng=rng).image
            for i, d in enumerate(["hole", "scratch"][:n])]


def dinov2_release_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The tiny DINOv2-with-registers weights in the release layout (AnomalyDINO's seeded generator plus four
    register tokens)."""
    state = seeded_dinov2_state(seed, depth=DEPTH, dim=WIDTH, native=NATIVE)
    gen = torch.Generator().manual_seed(seed + 1)
    state["register_tokens"] = torch.randn(1, 4, WIDTH, generator=gen) * 0.5
    return state


def dinov3_release_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """DINOv3 T/16-sized weights in the official release layout (``dinov3_vitl16``'s keys): the blocks drawn as
    AnomalyDINO's seeded DINOv2 state (the same block names), plus 4 storage tokens, the RoPE periods (base 100,
    ``rope_position_encoding.py``) and each ``LinearKMaskedBias``'s mask; the k part of each qkv bias is zero, as in
    the released ViT-L/16 (see ``zsad.methods.vfm.families``)."""
    dim, head = D3_WIDTH, D3_WIDTH // D3_HEADS
    state = seeded_dinov2_state(seed, depth=D3_DEPTH, dim=dim, patch=16, native=224)
    del state["pos_embed"]
    state["storage_tokens"] = torch.randn(1, 4, dim, generator=torch.Generator().manual_seed(seed + 1)) * 0.5
    state["rope_embed.periods"] = 100.0 ** (2 * torch.arange(head // 4, dtype=torch.float32) / (head // 2))
    for b in range(D3_DEPTH):
        state[f"blocks.{b}.attn.qkv.bias"][dim:2 * dim] = 0
        state[f"blocks.{b}.attn.qkv.bias_mask"] = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
    return state


def zsad_backbone(family: str, folder: Path):
    """zsad's tiny backbone of ``family`` (DINOv2: from the release-layout file written into ``folder``)."""
    from zsad.backbones import load_backbone
    from zsad.methods.vfm.families import pos_interpolation_for

    if family == "dinov2":
        path = folder / "dinov2_tiny_reg4.pth"
        torch.save(dinov2_release_state(), path)
        name = f"timm:tiny-dinov2:{path}"
    elif family == "dinov3":
        path = folder / "dinov3_t16.pth"
        torch.save(dinov3_release_state(), path)
        name = f"timm:vit_tiny_patch16_dinov3_qkvb:{path}"
    else:
        name = "tiny-random"
    return load_backbone(name, image_size=size_of(family), pos_interpolation=pos_interpolation_for(name),
                         warn_random=False)


@contextmanager
def official_wrapper(official: Path, dinov2: Path, family: str, backbone, dinov3: Path | None = None):
    """The official ``DINOv2`` / ``CLIP`` wrapper holding zsad's backbone weights (its loaders redirected)."""
    sys.path.insert(0, str(official))
    real_hub = torch.hub.load
    try:
        if family == "dinov2":
            def hub_load(*args, **kwargs):  # dinov2_vitl14_reg's settings, at the tiny size
                vit = importlib.import_module("dinov2.models.vision_transformer")
                model = vit.DinoVisionTransformer(
                    img_size=NATIVE, patch_size=14, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_ratio=4,
                    init_values=1.0, ffn_layer="mlp", block_chunks=0, num_register_tokens=4,
                    interpolate_antialias=True, interpolate_offset=0.0)
                model.load_state_dict(dinov2_release_state(), strict=True)
                return model.eval()

            sys.path.insert(0, str(dinov2))
            torch.hub.load = hub_load
            wrapper = importlib.import_module("models.dinov2").DINOv2(height=SIZE)
        elif family == "dinov3":
            def hub_load(*args, **kwargs):  # dinov3_vitl16's settings (hub/backbones.py), at the T/16 size
                vit = importlib.import_module("dinov3.models.vision_transformer")
                model = vit.DinoVisionTransformer(
                    img_size=224, patch_size=16, pos_embed_rope_base=100, pos_embed_rope_normalize_coords="separate",
                    pos_embed_rope_rescale_coords=2, pos_embed_rope_dtype="fp32", embed_dim=D3_WIDTH, depth=D3_DEPTH,
                    num_heads=D3_HEADS, ffn_ratio=4, qkv_bias=True, layerscale_init=1.0e-05,
                    norm_layer="layernormbf16", ffn_layer="mlp", ffn_bias=True, proj_bias=True, n_storage_tokens=4,
                    mask_k_bias=True)
                model.load_state_dict(dinov3_release_state(), strict=True)
                return model.eval()

            sys.path.insert(0, str(dinov3))
            torch.hub.load = hub_load
            wrapper = importlib.import_module("models.dinov3").DINOv3(height=D3_SIZE)
        else:
            import types

            import transformers
            from transformers import CLIPVisionConfig, CLIPVisionModel

            config = CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=DEPTH,
                                      num_attention_heads=HEADS, image_size=NATIVE, patch_size=14,
                                      hidden_act="quick_gelu", layer_norm_eps=1e-5)
            tower = CLIPVisionModel(config)  # CLIPModel.vision_model in transformers 5 (4.x: CLIPVisionTransformer,
            # the same tensor names)
            from zsad.backbones.tiny import build_tiny_clip  # the same seeded weights, native position table

            missing, unexpected = tower.load_state_dict(open_clip_to_hf(build_tiny_clip().visual.state_dict()),
                                                        strict=False)
            assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
            hf = types.SimpleNamespace(vision_model=tower)  # AutoModel gives a CLIPModel; the wrapper keeps its tower
            real_auto = transformers.AutoModel.from_pretrained
            transformers.AutoModel.from_pretrained = classmethod(lambda cls, *a, **k: hf)
            try:
                wrapper = importlib.import_module("models.clip").CLIP(height=SIZE)
            finally:
                transformers.AutoModel.from_pretrained = real_auto
        wrapper.feature_dim = width_of(family)
        yield wrapper.eval(), importlib.import_module("decoder"), importlib.import_module("peft_local.peft_wrapper")
    finally:
        torch.hub.load = real_hub
        for p in (str(official), str(dinov2), str(dinov3)):
            if p in sys.path:
                sys.path.remove(p)


def open_clip_to_hf(visual: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip's vision tower -> Hugging Face ``CLIPVisionTransformer`` names (the inverse of zsad's importer)."""
    out = {"embeddings.class_embedding": visual["class_embedding"],
           "embeddings.patch_embedding.weight": visual["conv1.weight"],
           "embeddings.position_embedding.weight": visual["positional_embedding"],
           "pre_layrnorm.weight": visual["ln_pre.weight"], "pre_layrnorm.bias": visual["ln_pre.bias"],
           "post_layernorm.weight": visual["ln_post.weight"], "post_layernorm.bias": visual["ln_post.bias"]}
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "attn.out_proj": "self_attn.out_proj"}
    for key, value in visual.items():
        if not key.startswith("transformer.resblocks."):
            continue
        _, _, block, rest = key.split(".", 3)
        module, param = rest.rsplit(".", 1)
        p = f"encoder.layers.{block}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            for part, chunk in zip("qkv", value.chunk(3)):
                out[f"{p}self_attn.{part}_proj.{'weight' if rest.endswith('weight') else 'bias'}"] = chunk
        elif module in names:
            out[f"{p}{names[module]}.{param}"] = value
    return out


def official_dora(family: str, modules) -> dict[str, torch.Tensor]:
    """zsad's adapter tensors under the official wrapper's names (``net.`` prefix)."""
    clip_names = {"lora_A_q": ("q_proj", "lora_A"), "lora_B_q": ("q_proj", "lora_B"), "mag_q": ("q_proj", "magnitude"),
                  "lora_A_v": ("v_proj", "lora_A"), "lora_B_v": ("v_proj", "lora_B"), "mag_v": ("v_proj", "magnitude")}
    state = {}
    for key, value in modules.dora.state_dict().items():  # blocks.{i}.qkv.lora_A_q ...
        _, block, which, name = key.split(".")
        if family in ("dinov2", "dinov3"):
            state[f"net.blocks.{block}.attn.{which}.{name}"] = value
        else:
            target, short = clip_names[name] if which == "qkv" else ("out_proj", name)
            state[f"net.encoder.layers.{block}.self_attn.{target}.{short}"] = value
    return state


def official_state(family: str, modules) -> dict[str, dict[str, torch.Tensor]]:
    """The whole official checkpoint (``train.py``'s ``model.pkl`` dicts) written from zsad's tensors without the
    official classes: the recorded key names say whether these are its names (``tests/test_vfm_families.py``)."""
    from zsad.backbones.tiny import build_tiny_clip

    if family in ("dinov2", "dinov3"):
        base = dinov2_release_state() if family == "dinov2" else dinov3_release_state()
        wrapped = re.compile(r"^blocks\.\d+\.attn\.(qkv|proj)\.(weight|bias|bias_mask)$")
    else:
        base = open_clip_to_hf(build_tiny_clip().visual.state_dict())
        wrapped = re.compile(r"^encoder\.layers\.\d+\.self_attn\.(q_proj|v_proj|out_proj)\.(weight|bias)$")
    net = {}
    for key, value in base.items():
        head, _, param = key.rpartition(".")
        net[f"net.{head}.layer.{param}" if wrapped.match(key) else f"net.{key}"] = value
    net.update(official_dora(family, modules))
    return {"model_state_dict": {k: v.detach().clone() for k, v in net.items()},
            "decoder_state_dict": {k: v.detach().clone() for k, v in modules.decoder.state_dict().items()},
            "predictor_state_dict": {"lin.weight": modules.head.weight.detach().clone(),
                                     "lin.bias": modules.head.bias.detach().clone()}}


def load_trained_parts(wrapper, mods, family: str, modules) -> tuple:
    """``add_peft`` (DoRA, rank 8) on the official wrapper, then zsad's adapter, decoder and head tensors in it."""
    wrapper.add_peft(RANK, peft_type=mods.peft.PeftType.DORA)
    state = official_dora(family, modules)
    own = wrapper.state_dict()
    unknown = set(state) - set(own)
    assert not unknown, sorted(unknown)[:3]
    wrapper.load_state_dict({**own, **state})
    decoder = mods.decoder.SimpleDecoder(width_of(family), 1, 1)
    decoder.load_state_dict(modules.decoder.state_dict())
    predictor = mods.decoder.SimplePredictor(width_of(family))
    predictor.load_state_dict({"lin.weight": modules.head.weight, "lin.bias": modules.head.bias})
    return wrapper.eval(), decoder.eval(), predictor.eval()


def compare_family(family: str, official: Path, dinov2: Path, tmp: Path, record: Path | None,
                   dinov3: Path | None = None) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from vfm_official import differences, official_outputs, write_layouts, zsad_outputs

    import zsad
    from zsad.adapters import read_adapter_config
    from zsad.methods.vfm.adapter import VfmSettings, random_modules
    from zsad.methods.vfm.official import import_checkpoint, scoring_backbone

    backbone = zsad_backbone(family, tmp)
    modules = random_modules(backbone, seed=1, rank=RANK)
    pil = images()
    size = size_of(family)
    with official_wrapper(official, dinov2, family, backbone, dinov3) as (wrapper, decoder_mod, peft):
        import types

        mods = types.SimpleNamespace(decoder=decoder_mod, peft=peft)
        wrapper, decoder, predictor = load_trained_parts(wrapper, mods, family, modules)
        theirs = official_outputs(wrapper, decoder, predictor, pil, size)
        files = write_layouts(wrapper, decoder, predictor, tmp)
        keys = {k: tuple(v.shape) for k, v in wrapper.state_dict().items()}
    # differences() normalises the official input with CLIP's mean/std (RADIO's is raw): undo that for a normalised one
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in MEANS["clip"])
    report = {"config": {"family": family, "image_size": size, "rank": RANK, "images": len(pil)}}
    for label, path in files.items():
        out = tmp / f"adapter-{family}-{path.stem}"
        import_checkpoint(path, out, image_size=size)
        settings = VfmSettings.from_config(read_adapter_config(out), str(out))
        detector = zsad.create("vfm", backbone=scoring_backbone(settings, out), image_size=size, device="cpu",
                               precision="fp32", adapter=str(out), warn_random=False)
        report[label] = differences(zsad_outputs(detector, pil), {**theirs, "input": theirs["input"] * std + mean})
    with torch.no_grad():
        from zsad.methods.vfm.features import vfm_features

        plain, _ = vfm_features(backbone, backbone.preprocess(pil))
    report["control: official summary vs the backbone without adapters"] = float((plain - theirs["summary"]).abs().max())
    if record is not None:
        np.savez_compressed(
            record / f"vfm_official_{family}.npz", **{f"image{i}": np.asarray(img) for i, img in enumerate(pil)},
            **{k: theirs[k].numpy() for k in ("summary", "logits", "map", "score")},  # small: no input or features
            **{f"at_size{i}": m.numpy() for i, m in enumerate(theirs["at_size"])},
            keys=np.array(sorted(keys)), shapes=np.array([str(keys[k]) for k in sorted(keys)]))
    return report


def run(official: Path, dinov2: Path, families: list[str], record: Path | None, dinov3: Path | None = None) -> bool:
    from vfm_official import report_ok

    torch.set_grad_enabled(False)
    ok = True
    for family in families:
        with tempfile.TemporaryDirectory(prefix=f"vfm-official-{family}-") as tmp:
            ok &= report_ok(compare_family(family, official.resolve(), dinov2.resolve(), Path(tmp), record,
                                           dinov3.resolve() if dinov3 else None))
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, type=Path, help="checkout of MaticFuc/AnomalyVFM")
    parser.add_argument("--dinov2", required=True, type=Path, help="checkout of facebookresearch/dinov2")
    parser.add_argument("--dinov3", type=Path, default=None, help="checkout of facebookresearch/dinov3 (dinov3)")
    parser.add_argument("--families", default="dinov2,clip,dinov3")
    parser.add_argument("--record", type=Path, default=None, help="folder for vfm_official_{family}.npz")
    args = parser.parse_args()
    ok = run(args.official, args.dinov2, args.families.split(","), args.record, args.dinov3)
    print("EQUAL within maps 1e-4, scores 1e-5" if ok else "DIFFERENT")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
