"""The backbone's MLP activation (issue 17): applied as asked, ``auto`` resolved per method as documented (MuSc's
official loader runs OpenAI weights with GELU at sizes other than the config's), and recorded in every output."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zsad
from zsad.backbones import load_backbone
from zsad.cli import build_parser, main
from zsad.detector import resolve_activation
from zsad.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


FORMULAS = {"gelu": _gelu, "quick_gelu": _quick_gelu}


@pytest.fixture(scope="module")
def strong():
    """The tiny OpenAI-family CLIP (QuickGELU) with its vision MLPs' input weights x8, so pre-activations reach
    several units as in real CLIP weights (where GELU and QuickGELU differ), and a GELU view of the same weights."""
    quick = load_backbone("tiny-random", image_size=56, activation="quick_gelu", warn_random=False)
    with torch.no_grad():
        for block in quick.model.visual.transformer.resblocks:
            block.mlp.c_fc.weight.mul_(8.0)
            block.mlp.c_fc.bias.mul_(8.0)
    return {"quick_gelu": quick, "gelu": quick.with_activation("gelu")}


def _images(n: int = 2, size: int = 56) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(3))


def test_every_block_applies_the_activation_asked_for(strong):
    for name, backbone in strong.items():
        assert backbone.activation == name
        seen: list = []

        def record(_module, args, out, seen=seen):
            seen.append((args[0], out))

        hooks = [block.mlp.gelu.register_forward_hook(record) for block in backbone.model.visual.transformer.resblocks]
        try:
            backbone.tokens(_images(), [0])
        finally:
            for hook in hooks:
                hook.remove()
        assert len(seen) == backbone.num_layers
        other = FORMULAS["gelu" if name == "quick_gelu" else "quick_gelu"]
        for pre, post in seen:
            assert pre.abs().max() > 3.0  # where the two functions differ by more than 1e-2
            torch.testing.assert_close(post, FORMULAS[name](pre), atol=1e-5, rtol=1e-5)
            assert (post - other(pre)).abs().max() > 1e-2
        x = torch.linspace(-6, 6, 101)
        for block in backbone.model.transformer.resblocks:  # the text tower too
            torch.testing.assert_close(block.mlp.gelu(x), FORMULAS[name](x), atol=1e-5, rtol=1e-5)


def test_gelu_and_quick_gelu_give_different_tokens_from_the_same_weights(strong):
    gelu, quick = strong["gelu"], strong["quick_gelu"]
    assert gelu.model.visual.conv1.weight.data_ptr() == quick.model.visual.conv1.weight.data_ptr()
    last = quick.num_layers - 1
    a, b = gelu.tokens(_images(), [0, last]), quick.tokens(_images(), [0, last])
    for layer in (0, last):  # fp32 rounding is ~1e-6 here; the activations move tokens by 1e-2 and more
        assert (a.layers[layer] - b.layers[layer]).abs().max() > 1e-3, layer
    assert (a.pooled - b.pooled).abs().max() > 1e-3


def test_a_view_equals_a_fresh_load_and_leaves_the_original_alone():
    original = load_backbone("tiny-random", image_size=56, warn_random=False)
    assert original.activation == "quick_gelu"  # the weights' own (OpenAI family)
    view = original.with_activation("gelu")
    fresh = load_backbone("tiny-random", image_size=56, activation="gelu", warn_random=False)
    assert original.activation == "quick_gelu" and view.activation == fresh.activation == "gelu"
    assert original.with_activation("quick_gelu") is original
    images = _images()
    torch.testing.assert_close(view.tokens(images, [-1]).layers[5], fresh.tokens(images, [-1]).layers[5],
                               atol=1e-6, rtol=1e-6)
    with pytest.raises(UsageError, match="unknown activation"):
        load_backbone("tiny-random", image_size=56, activation="relu", warn_random=False)


@pytest.mark.parametrize("method, backbone, size, expected", [
    # MuSc's loader: OpenAI weights at a size other than the config's are rebuilt from the JSON config (GELU)
    ("musc", "ViT-L-14-336:openai", 518, "gelu"),
    ("musc", "ViT-L-14-336:openai", 336, "quick_gelu"),  # the config's size: load_openai_model keeps QuickGELU
    ("musc", "ViT-B-16:openai", 512, "gelu"),
    ("musc", "ViT-B-32-quickgelu:openai", 512, "quick_gelu"),  # that config itself says QuickGELU
    ("musc", "ViT-B-16:laion400m_e32", 512, "gelu"),  # non-OpenAI weights: built from the config either way
    ("musc", "ViT-L-14-336:random", 518, "gelu"),  # random / file weights of an OpenAI architecture stand in
    ("musc", "tiny-random", 112, "gelu"),
    ("musc", "tiny-random", 224, "quick_gelu"),
    # AnomalyCLIP's loader builds every block with QuickGELU; clip and auto keep the weights' own
    ("anomalyclip", "ViT-L-14-336:openai", 518, "quick_gelu"),
    ("clip", "ViT-L-14-336:openai", 518, "quick_gelu"),
    ("auto", "ViT-L-14-336:openai", 518, "quick_gelu"),
    ("clip", "ViT-B-16-plus-240:laion400m_e32", 240, "gelu"),
    # an explicit choice is kept
    ("musc", "ViT-L-14-336:openai", 518, None),
])
def test_auto_resolves_per_method_as_documented(method, backbone, size, expected):
    if expected is None:
        for chosen in ("gelu", "quick_gelu"):
            assert resolve_activation(method, backbone, size, chosen) == chosen
        with pytest.raises(UsageError, match="unknown activation"):
            resolve_activation(method, backbone, size, "fast")
        return
    assert resolve_activation(method, backbone, size) == expected


def _pictures(folder: Path, n: int = 5) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def test_detectors_record_the_activation_they_ran(tmp_path):
    images = [Image.open(p).convert("RGB") for p in _pictures(tmp_path / "in")]
    prompts = tmp_path / "prompts.yaml"  # a small bank: text encoding is not what is tested here
    prompts.write_text('states:\n  normal: ["{}"]\n  anomalous: ["damaged {}"]\ntemplates: ["a photo of a {}."]\n'
                       'defects:\n  templates: ["a {object} with a {defect}."]\n  types:\n    scratch: [scratch]\n'
                       '    crack: [crack]\n')
    expected = {("musc", "auto"): "gelu", ("clip", "auto"): "quick_gelu", ("auto", "auto"): "quick_gelu",
                ("clip", "gelu"): "gelu", ("musc", "quick_gelu"): "quick_gelu"}
    for (method, asked), ran in expected.items():
        options = {} if method == "musc" else {"prompts": str(prompts)}
        detector = zsad.create(method, backbone="tiny-random", image_size=56, activation=asked, warn_random=False,
                               **options)
        assert detector.backbone.activation == ran, (method, asked)
        results = detector.score(images)
        assert {r.extras["activation"] for r in results} == {ran}, (method, asked)
        assert results[0].to_record()["extras"]["activation"] == ran
    # a shared backbone serves a method that needs another activation through a view of the same weights
    shared = load_backbone("tiny-random", image_size=56, warn_random=False)
    musc = zsad.create("musc", backbone=shared)
    assert musc.backbone.activation == "gelu" and shared.activation == "quick_gelu"
    assert musc.backbone.model.visual.conv1.weight.data_ptr() == shared.model.visual.conv1.weight.data_ptr()
    assert zsad.create("musc", backbone=shared, activation="quick_gelu").backbone is shared


def test_every_backbone_command_takes_activation():
    parser = build_parser()
    commands = [["score", "x.png"], ["evaluate", "--data", "d"], ["demo"], ["ask", "x.png", "why"],
                ["train-prompts", "--data", "d", "--out", "o"]]
    for command in commands:
        assert parser.parse_args(command).activation == "auto", command
        assert parser.parse_args([*command, "--activation", "gelu"]).activation == "gelu", command
    with pytest.raises(SystemExit):
        parser.parse_args(["score", "x.png", "--activation", "relu"])


def test_score_writes_the_activation_into_every_jsonl_row(tmp_path):
    _pictures(tmp_path / "in")
    code = main(["score", str(tmp_path / "in"), "--method", "musc", "--activation", "quick_gelu", "--backbone",
                 "tiny-random", "--image-size", "56", "--out", str(tmp_path / "out"), "--no-maps", "-q"])
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and {r["extras"]["activation"] for r in rows} == {"quick_gelu"}


def test_evaluate_records_the_activation_and_refuses_to_resume_with_another(tmp_path):
    from zsad.data.synthetic import make_dataset
    from zsad.evaluate import EvaluateConfig, evaluate

    make_dataset(tmp_path / "data", categories=["weave"], n_train_good=0, n_test_good=3, n_test_defect=2, size=48)
    config = EvaluateConfig(data=tmp_path / "data", out=tmp_path / "eval", method="musc", backbone="tiny-random",
                            image_size=56, device="cpu", precision="fp32", progress=False)
    summary = evaluate(config)
    assert summary["activation"] == "gelu"  # auto for musc at a size other than the tiny CLIP's 224
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["activation"] == "gelu"
    marker = json.loads((tmp_path / "eval" / "categories" / "weave.json").read_text())
    assert marker["config"]["activation"] == "gelu"
    assert "(activation `gelu`)" in (tmp_path / "eval" / "metrics.md").read_text()
    again = EvaluateConfig(**{**config.__dict__, "activation": "quick_gelu", "resume": True})
    with pytest.raises(UsageError, match="activation: 'gelu' -> 'quick_gelu'"):
        evaluate(again)


def test_adapters_record_the_activation_they_were_trained_with(tmp_path, prompt_train_config, caplog):
    from zsad.methods.anomalyclip.train import train_prompts

    out = train_prompts(prompt_train_config(tmp_path / "adapter", epochs=1, activation="gelu"))
    assert json.loads((out / "adapter.json").read_text())["activation"] == "gelu"
    detector = zsad.create("anomalyclip", backbone="tiny-random", image_size=56, adapter=str(out), warn_random=False)
    assert detector.backbone.activation == "quick_gelu"  # auto: AnomalyCLIP's QuickGELU ...
    assert "trained with activation gelu and is used with quick_gelu" in caplog.text  # ... and the mismatch is said


def test_the_protocol_runner_passes_and_compares_the_published_activation():
    sys.path.insert(0, str(ROOT / "evaluation"))
    import run_protocol

    protocols = run_protocol.load_protocols()
    assert protocols["musc-mvtec"]["activation"] == "gelu"  # the official MuSc loader at 518 px
    assert protocols["anomalyclip-visa"]["activation"] == "quick_gelu"
    protocol = protocols["musc-mvtec"]
    published = run_protocol.published_settings(protocol)
    assert published["activation"] == "gelu"
    _, used = run_protocol.plan(protocol)
    assert used["activation"] == "gelu" and run_protocol.setting_differences(published, used) == []
    _, used = run_protocol.plan(protocol, activation="quick_gelu")
    assert run_protocol.setting_differences(published, used) == [
        {"setting": "activation", "published": "gelu", "run": "quick_gelu"}]
