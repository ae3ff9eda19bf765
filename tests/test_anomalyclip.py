"""AnomalyCLIP: DPAM and deep-prompt text encoder against hand-written references of the official code,
losses, gradients, training (loss falls, resume is exact), adapter round trips and the scoring method."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zsad.errors import AdapterError, UsageError
from zsad.methods.anomalyclip.adapter import PromptSettings, load_prompt_adapter, save_prompt_adapter
from zsad.methods.anomalyclip.forward import (
    image_features,
    probability_maps,
    resolve_dpam_layers,
    resolve_taps,
    state_logits,
)
from zsad.methods.anomalyclip.losses import anomalyclip_loss, dice_loss, focal_loss
from zsad.methods.anomalyclip.prompts import PromptLearner, PromptShape, PromptTextEncoder, resolve_shape, text_width
from zsad.methods.anomalyclip.train import PromptTrainer, train_prompts

SIZE = 56  # 4 x 4 patches on the tiny backbone: fast


@pytest.fixture(scope="module")
def backbone():
    from zsad.backbones import load_backbone

    return load_backbone("tiny-random", image_size=SIZE, device="cpu", pos_interpolation="bilinear", warn_random=False)


@pytest.fixture(scope="module")
def shape(backbone):
    return resolve_shape(backbone)


def _learner(backbone, shape, seed=0):
    torch.manual_seed(seed)
    return PromptLearner(shape, text_width(backbone))


def _batch(n=4, size=SIZE, seed=0):
    """Random images, rectangle masks on the odd images (labels 0, 1, 0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=gen)
    masks = torch.zeros(n, size, size)
    labels = torch.tensor([i % 2 for i in range(n)])
    for i in range(1, n, 2):
        masks[i, 10 + i:30 + i, 5:25] = 1
    return images, masks, labels


# -- hand-written references of the official code ------------------------------------------------------

def _official_attention(block, x):
    """zqhang/AnomalyCLIP ``Attention.forward`` (q-k path and v-v path from one qkv), ``[B, N, C]``."""
    attn = block.attn
    batch, tokens, width = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    qkv = qkv.reshape(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scale = (width // heads) ** -0.5
    ori = ((q @ k.transpose(-2, -1)) * scale).softmax(-1)
    vv = ((v @ v.transpose(-2, -1)) * scale).softmax(-1)
    x_ori = attn.out_proj((ori @ v).transpose(1, 2).reshape(batch, tokens, width))
    x_vv = attn.out_proj((vv @ v).transpose(1, 2).reshape(batch, tokens, width))
    return x_vv, x_ori


def _official_dpam(backbone, images, dpam_layer, taps_1based):
    """``VisionTransformer.forward`` after ``DAPM_replace(DPAM_layer)``: returns (global, projected taps)."""
    visual = backbone.model.visual
    blocks = visual.transformer.resblocks
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1), x], dim=1)
    x = visual.ln_pre(x + visual.positional_embedding)
    dual = {len(blocks) - i for i in range(1, dpam_layer)}  # blocks[-i] for i in 1..DPAM_layer-1
    state, out = x, []
    for idx, block in enumerate(blocks):
        if idx in dual:
            if isinstance(state, list):  # inside the dual path
                s, x_ori = state
                x_vv, x_ori_res = _official_attention(block, block.ln_1(x_ori))
                x_ori = x_ori + x_ori_res
                x_ori = x_ori + block.mlp(block.ln_2(x_ori))
                state = [s + x_vv, x_ori]  # skip the FFN on the new path
            else:  # start of the dual path
                x_vv, x_ori_res = _official_attention(block, block.ln_1(state))
                x_ori = state + x_ori_res
                x_ori = x_ori + block.mlp(block.ln_2(x_ori))
                state = [state + x_vv, x_ori]
        else:
            y = state + block.attn(block.ln_1(state), block.ln_1(state), block.ln_1(state), need_weights=False)[0]
            state = y + block.mlp(block.ln_2(y))
        if idx + 1 in taps_1based:
            out.append((state[0] if isinstance(state, list) else state).clone())
    final_ori = state[1] if isinstance(state, list) else state
    glob = final_ori[:, 0] @ visual.proj
    return glob, [visual.ln_post(t) @ visual.proj for t in out]


def _official_text(backbone, learner, shape):
    """``encode_text_learn`` with ``ResidualAttentionBlock_learnable_token``: hand-written blocks, deep tokens
    (fp16-rounded) overwrite positions 1..T at the input of blocks 2..depth."""
    model = backbone.model
    placeholder = " ".join(["X"] * shape.n_ctx)
    ids = backbone.tokenizer([f"{placeholder} object.", f"{placeholder} damaged object."])
    emb = model.token_embedding(ids)
    ctx = torch.stack([learner.ctx_normal, learner.ctx_anomalous])
    x = torch.cat([emb[:, :1], ctx, emb[:, 1 + shape.n_ctx:]], dim=1) + model.positional_embedding
    counter = 0
    for i, block in enumerate(model.transformer.resblocks):
        if i > 0 and counter <= shape.n_deep - 1:
            deep = learner.deep_prompts[counter].expand(2, -1, -1).half()
            x = torch.cat([x[:, :1], deep, x[:, 1 + shape.deep_length:]], dim=1)
            counter += 1
        h = block.ln_1(x)
        x = x + block.attn(h, h, h, need_weights=False, attn_mask=model.attn_mask)[0]
        x = x + block.mlp(block.ln_2(x))
    x = model.ln_final(x)
    return x[torch.arange(2), ids.argmax(-1)] @ model.text_projection


# -- equivalences ---------------------------------------------------------------------------------------

def test_bilinear_position_embedding_matches_official_resize(backbone):
    from zsad.backbones.tiny import build_tiny_clip

    pos = build_tiny_clip().visual.positional_embedding.detach()
    side, new = 16, SIZE // 14
    grid = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, (new, new), mode="bilinear").reshape(1, -1, new * new).transpose(1, 2)
    torch.testing.assert_close(backbone.model.visual.positional_embedding, torch.cat([pos[:1], grid[0]]))


@pytest.mark.parametrize("taps", [[6], [2, 4, 6]])
def test_dpam_equals_official_dual_path(backbone, taps):
    images = _batch(2)[0]
    dpam = resolve_dpam_layers(backbone, None)  # 5 of 6 here, as 19 of 24
    with torch.no_grad():
        glob_ref, taps_ref = _official_dpam(backbone, images, dpam + 1, taps)
        feats = image_features(backbone, images, [t - 1 for t in taps], dpam, torch.float32)
    torch.testing.assert_close(feats.global_, F.normalize(glob_ref, dim=-1), atol=1e-5, rtol=1e-4)
    assert len(feats.patches) == len(taps)
    for ours, ref in zip(feats.patches, taps_ref):
        torch.testing.assert_close(ours, F.normalize(ref[:, 1:], dim=-1), atol=1e-5, rtol=1e-4)
    if len(taps) > 1:  # distinct taps: the official pre-2025 aliasing bug is not reproduced
        assert not torch.allclose(feats.patches[0], feats.patches[-1])


def test_text_encoder_equals_official_deep_prompts(backbone, shape):
    assert shape.deep_depth == 2  # 9 clipped to the tiny tower's 2 text blocks
    learner = _learner(backbone, shape)
    with torch.no_grad():
        ours = PromptTextEncoder(backbone, shape)(learner)
        ref = _official_text(backbone, learner, shape)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    exact = PromptShape(n_ctx=shape.n_ctx, deep_length=shape.deep_length, deep_depth=2, round_deep_fp16=False)
    with torch.no_grad():
        unrounded = PromptTextEncoder(backbone, exact)(learner)
    assert not torch.equal(unrounded, ours)  # the fp16 rounding of the deep tokens is real


def test_probability_maps_softmax_then_upsample(backbone):
    feats = F.normalize(torch.randn(2, 16, 64), dim=-1)
    text = torch.randn(2, 64)
    maps = probability_maps(feats, text, SIZE)
    assert maps.shape == (2, 2, SIZE, SIZE)
    torch.testing.assert_close(maps.sum(1), torch.ones(2, SIZE, SIZE))
    probs = (feats @ F.normalize(text, dim=-1).T / 0.07).softmax(-1)[..., 1].reshape(2, 1, 4, 4)
    torch.testing.assert_close(maps[:, 1:], F.interpolate(probs, (SIZE, SIZE), mode="bilinear"))


def test_losses_follow_the_official_formulas():
    probs = torch.tensor([[0.9, 0.2], [0.4, 0.7]]).reshape(1, 1, 2, 2)
    probs = torch.cat([1 - probs, probs], dim=1)  # [normal, anomalous]
    gt = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 2)
    p_true = torch.tensor([0.9, 0.8, 0.6, 0.7])  # probability of each pixel's true class
    pt = p_true * (1 - 1e-5) + (1 - p_true) * 1e-5 + 1e-5  # one-hot clamped to [1e-5, 1 - 1e-5], plus 1e-5
    expected = (-(1 - pt) ** 2 * pt.log()).mean()
    torch.testing.assert_close(focal_loss(probs, gt), expected, atol=1e-6, rtol=1e-5)
    a = probs[:, 1]
    dice = (2 * (a * gt).sum() + 1) / (a.sum() + gt.sum() + 1)
    torch.testing.assert_close(dice_loss(a, gt), 1 - dice)
    assert float(dice_loss(gt, gt)) == pytest.approx(0.0, abs=1e-6)
    logits = torch.tensor([[2.0, -1.0]])
    parts = anomalyclip_loss(logits, torch.tensor([1]), [probs], gt, local_weight=4.0)
    torch.testing.assert_close(parts.global_, F.cross_entropy(logits, torch.tensor([1])))
    torch.testing.assert_close(parts.local, 4 * (focal_loss(probs, gt) + dice_loss(a, gt) + dice_loss(probs[:, 0], 1 - gt)))
    torch.testing.assert_close(parts.total, parts.global_ + parts.local)


# -- training -------------------------------------------------------------------------------------------

def _trainer(backbone, shape, taps=(5,), lr=1e-3):
    return PromptTrainer(backbone, _learner(backbone, shape), taps=list(taps), dpam_layers=5, local_weight=4.0, lr=lr)


def test_gradients_reach_only_prompt_parameters(backbone, shape):
    trainer = _trainer(backbone, shape, taps=(1, 3, 5))
    parts = trainer.loss(*_batch())
    parts.total.backward()
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    for name in PromptLearner.TENSOR_NAMES:
        grad = getattr(trainer.learner, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_trainer_refuses_an_unfrozen_backbone(backbone, shape):
    param = next(backbone.parameters())
    param.requires_grad_(True)
    try:
        with pytest.raises(RuntimeError, match="frozen"):
            _trainer(backbone, shape)
    finally:
        param.requires_grad_(False)


def test_loss_falls_over_20_steps(backbone, shape):
    trainer = _trainer(backbone, shape)
    batch = _batch()
    losses = [float(trainer.step(*batch).total.detach()) for _ in range(20)]
    assert losses[-1] < losses[0]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


@pytest.fixture
def dataset(prompt_train_data):
    return prompt_train_data


def test_train_writes_adapter_log_and_resumes_exactly(prompt_train_config, tmp_path):
    from zsad.adapters import load

    full = train_prompts(prompt_train_config(tmp_path / "full"))
    folder = load(full, "tiny-random")
    assert folder.kind == "anomalyclip-prompts"
    assert folder.config["training"]["n_images"] == 6 and folder.config["training"]["epochs_done"] == 2
    assert folder.config["taps"] == [5] and folder.config["local_weight"] == 4.0
    with open(full / "train_log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and all(float(r["loss"]) > 0 for r in rows)

    part = tmp_path / "part"
    train_prompts(prompt_train_config(part, epochs=1))
    with pytest.raises(UsageError, match="--resume"):
        train_prompts(prompt_train_config(part))
    with pytest.raises(UsageError, match="other settings"):
        train_prompts(prompt_train_config(part, lr=5e-3, resume=True))
    train_prompts(prompt_train_config(part, resume=True))
    resumed = load(part)
    for name, tensor in folder.tensors.items():
        torch.testing.assert_close(resumed.tensors[name], tensor, atol=0, rtol=0)
    with open(part / "train_log.csv", newline="") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [1, 2]


def test_depth_settings_are_checked_against_the_backbone(backbone):
    with pytest.raises(UsageError, match="2 blocks"):
        resolve_shape(backbone, deep_depth=9)
    with pytest.raises(UsageError, match="6-block"):
        resolve_dpam_layers(backbone, 19)
    with pytest.raises(UsageError, match="out of range"):
        resolve_taps(backbone, [23])
    with pytest.raises(UsageError, match="deep-prompt length"):
        resolve_shape(backbone, n_ctx=3, deep_length=4)
    assert resolve_taps(backbone, "last") == [5]
    assert resolve_taps(backbone, "paper") == backbone.default_layers(4)
    assert resolve_taps(backbone, "1,-1") == [1, 5]


# -- adapters and the method ------------------------------------------------------------------------------

def _save(backbone, shape, folder, seed=3):
    learner = _learner(backbone, shape, seed)
    settings = PromptSettings(backbone="tiny-random", image_size=SIZE, taps=(3, 5), dpam_layers=5, shape=shape,
                              local_weight=1.0)
    save_prompt_adapter(folder, learner, settings)
    return learner


def test_save_load_round_trip_gives_identical_maps(backbone, shape, tmp_path):
    import zsad
    from zsad.data.synthetic import make_sample

    learner = _save(backbone, shape, tmp_path / "a")
    loaded = load_prompt_adapter(tmp_path / "a", backbone)
    for name in PromptLearner.TENSOR_NAMES:
        assert torch.equal(getattr(loaded.learner, name), getattr(learner, name))
    rng = np.random.default_rng(0)
    images = [make_sample("weave", "hole", size=(80, 64), rng=rng).image for _ in range(2)]
    detector = zsad.create("anomalyclip", adapter=str(tmp_path / "a"), backbone="tiny-random", image_size=SIZE,
                           device="cpu", precision="fp32", warn_random=False)
    results = detector.score(images)
    # the same maps from the in-memory learner, computed with the building blocks directly
    tensor = backbone.preprocess(images)
    with torch.no_grad():
        text = PromptTextEncoder(backbone, shape)(learner)
        feats = image_features(backbone, tensor, [3, 5], 5, torch.float32)
        glob = state_logits(feats.global_, text).softmax(-1)[:, 1]
        patch = torch.stack([state_logits(p, text).softmax(-1)[..., 1] for p in feats.patches]).mean(0)
    maps = detector.method.maps_at_input_size(patch)
    for i, result in enumerate(results):
        assert result.anomaly_map.shape == (64, 80)
        assert result.image_score == pytest.approx(float(glob[i]), abs=1e-6)
        assert result.extras["global_score"] == result.image_score
        assert result.extras["map_max"] == pytest.approx(float(maps[i].max()), abs=1e-6)
        assert result.defect_type is None
    # a second load gives bit-identical maps
    again = zsad.create("anomalyclip", adapter=str(tmp_path / "a"), backbone="tiny-random", image_size=SIZE,
                        device="cpu", precision="fp32", warn_random=False).score(images)
    for a, b in zip(results, again):
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)


def test_method_without_adapter_says_how_to_get_one():
    import zsad

    with pytest.raises(AdapterError) as info:
        zsad.create("anomalyclip", backbone="tiny-random", image_size=SIZE, device="cpu", warn_random=False)
    message = str(info.value)
    assert "--adapter" in message and "zsad train-prompts" in message and "import-anomalyclip" in message


def test_method_uses_bilinear_position_embeddings():
    from zsad.methods import method_class

    assert method_class("anomalyclip").pos_interpolation == "bilinear"


def test_cli_train_then_score(dataset, tmp_path, capsys):
    from zsad.cli import main

    out = tmp_path / "ad"
    assert main(["train-prompts", "--data", str(dataset), "--out", str(out), "--backbone", "tiny-random",
                 "--epochs", "1", "--image-size", str(SIZE), "--batch-size", "6", "--workers", "0", "-q",
                 "--taps", "paper"]) == 0
    assert "WARNING" in capsys.readouterr().err
    results = tmp_path / "res"
    assert main(["score", str(Path(dataset) / "weave" / "test"), "--method", "anomalyclip", "--adapter", str(out),
                 "--backbone", "tiny-random", "--image-size", str(SIZE), "--out", str(results), "-q",
                 "--no-maps"]) == 0
    assert (results / "results.csv").is_file()
    assert main(["score", str(Path(dataset) / "weave" / "test"), "--method", "anomalyclip", "--backbone",
                 "tiny-random", "--image-size", str(SIZE), "--out", str(results), "-q"]) == 2
    assert "train-prompts" in capsys.readouterr().err
