"""Adapter folders: checked loading (clear errors), the import of official AnomalyCLIP checkpoints (values
preserved, pickles refused), the ``zsad adapters`` commands and the bundled recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zsad.adapters import load, save_adapter
from zsad.errors import AdapterError
from zsad.methods.anomalyclip.adapter import check_folder
from zsad.methods.anomalyclip.official import convert_state_dict, import_checkpoint, read_checkpoint

REPO = Path(__file__).resolve().parents[1]
SIZE = 56


@pytest.fixture(scope="module")
def backbone():
    from zsad.backbones import load_backbone

    return load_backbone("tiny-random", image_size=SIZE, device="cpu", pos_interpolation="bilinear", warn_random=False)


def official_state_dict(width: int = 768, n_ctx: int = 12, deep_length: int = 4, depth: int = 9,
                        seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict of zqhang/AnomalyCLIP ``AnomalyCLIP_PromptLearner`` (one class "object", one sentence per
    state), with the official key names and shapes; values are random."""
    from open_clip.tokenizer import tokenize

    gen = torch.Generator().manual_seed(seed)
    placeholder = " ".join(["X"] * n_ctx)
    state: dict[str, torch.Tensor] = {
        "ctx_pos": torch.randn(1, 1, n_ctx, width, generator=gen) * 0.02,
        "ctx_neg": torch.randn(1, 1, n_ctx, width, generator=gen) * 0.02,
    }
    for k in range(depth - 1):
        state[f"compound_prompts_text.{k}"] = torch.randn(deep_length, width, generator=gen) * 0.02
    for k in range(depth - 1):
        state[f"compound_prompt_projections.{k}.weight"] = torch.randn(896, width, generator=gen)
        state[f"compound_prompt_projections.{k}.bias"] = torch.randn(896, generator=gen)
    for tag in ("pos", "neg"):
        state[f"token_prefix_{tag}"] = torch.randn(1, 1, 1, width, generator=gen)
        state[f"token_suffix_{tag}"] = torch.randn(1, 1, 77 - 1 - n_ctx, width, generator=gen)
    state["tokenized_prompts_pos"] = tokenize([f"{placeholder} object."]).int().reshape(1, 1, 77)
    state["tokenized_prompts_neg"] = tokenize([f"{placeholder} damaged object."]).int().reshape(1, 1, 77)
    return state


def _write(path: Path, state: dict) -> Path:
    torch.save({"prompt_learner": state}, path)
    return path


# -- official import ------------------------------------------------------------------------------------

def test_import_preserves_every_learned_value(tmp_path):
    state = official_state_dict()
    out = import_checkpoint(_write(tmp_path / "epoch_15.pth", state), tmp_path / "ad", trained_on="VisA test split")
    folder = load(out, "ViT-L-14-336:openai")
    assert folder.kind == "anomalyclip-prompts"
    tensors = folder.tensors
    assert torch.equal(tensors["ctx_normal"], state["ctx_pos"][0, 0])
    assert torch.equal(tensors["ctx_anomalous"], state["ctx_neg"][0, 0])
    assert tensors["deep_prompts"].shape == (8, 4, 768)
    for k in range(8):
        assert torch.equal(tensors["deep_prompts"][k], state[f"compound_prompts_text.{k}"])
    config = folder.config
    assert config["prompt"] == {"n_ctx": 12, "deep_length": 4, "deep_depth": 9, "round_deep_fp16": True}
    assert config["taps"] == [23] and config["dpam_layers"] == 19 and config["image_size"] == 518
    assert config["backbone"] == "ViT-L-14-336:openai" and config["training"]["data"] == "VisA test split"
    assert config["source"]["kind"] == "imported" and len(config["source"]["sha256"]) == 64
    assert "compound_prompt_projections.0.weight" in config["source"]["dropped_keys"]


def test_imported_adapter_scores_on_a_matching_backbone(tmp_path, backbone):
    import numpy as np

    import zsad
    from zsad.methods.anomalyclip.prompts import PromptLearner, PromptShape, PromptTextEncoder

    state = official_state_dict(width=64, depth=2)
    out = import_checkpoint(_write(tmp_path / "small.pth", state), tmp_path / "ad", backbone="tiny-random",
                            image_size=SIZE)
    # the released taps (block 24 of 24) do not exist on the 6-block tiny model: a clear error
    with pytest.raises(AdapterError, match="do not fit the 6-block vision tower"):
        zsad.create("anomalyclip", adapter=str(out), backbone="tiny-random", image_size=SIZE, device="cpu",
                    warn_random=False)
    config = json.loads((out / "adapter.json").read_text())
    config["taps"], config["dpam_layers"] = [5], 5
    (out / "adapter.json").write_text(json.dumps(config))
    detector = zsad.create("anomalyclip", adapter=str(out), backbone="tiny-random", image_size=SIZE, device="cpu",
                           precision="fp32", warn_random=False)
    shape = PromptShape(n_ctx=12, deep_length=4, deep_depth=2)
    learner = PromptLearner(shape, 64)
    with torch.no_grad():
        learner.ctx_normal.copy_(state["ctx_pos"][0, 0])
        learner.ctx_anomalous.copy_(state["ctx_neg"][0, 0])
        learner.deep_prompts.copy_(state["compound_prompts_text.0"][None])
        expected = PromptTextEncoder(backbone, shape)(learner)
    torch.testing.assert_close(detector.method.text, expected, atol=0, rtol=0)
    result = detector.score([zsad_image()])[0]
    assert 0.0 <= result.image_score <= 1.0 and np.isfinite(result.anomaly_map).all()


def zsad_image():
    import numpy as np

    from zsad.data.synthetic import make_sample

    return make_sample("disc", "hole", size=64, rng=np.random.default_rng(0)).image


class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"prompt_learner": official_state_dict(width=8, depth=2), "extra": _Payload(marker)}, path)
    with pytest.raises(AdapterError, match="refused"):
        read_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(AdapterError, match="refused"):
        import_checkpoint(path, tmp_path / "ad")
    assert not (tmp_path / "ad").exists()


def test_bad_checkpoints_are_named(tmp_path):
    with pytest.raises(AdapterError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(AdapterError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(junk)
    other = tmp_path / "other.pth"
    torch.save({"model": {"w": torch.zeros(2)}}, other)
    with pytest.raises(AdapterError, match="not an AnomalyCLIP checkpoint"):
        read_checkpoint(other)
    state = official_state_dict(width=8, depth=2)
    with pytest.raises(AdapterError, match="unexpected keys"):
        convert_state_dict({**state, "image_adapter.weight": torch.zeros(2)})
    with pytest.raises(AdapterError, match="other prompt words"):
        convert_state_dict({**state, "tokenized_prompts_neg": state["tokenized_prompts_pos"]})
    multi = dict(state, ctx_pos=torch.zeros(2, 1, 12, 8), ctx_neg=torch.zeros(2, 1, 12, 8))
    with pytest.raises(AdapterError, match="class-specific"):
        convert_state_dict(multi)


# -- checked loading --------------------------------------------------------------------------------------

@pytest.fixture
def tiny_adapter(tmp_path, backbone):
    from zsad.methods.anomalyclip.adapter import PromptSettings, save_prompt_adapter
    from zsad.methods.anomalyclip.prompts import PromptLearner, resolve_shape

    shape = resolve_shape(backbone)
    settings = PromptSettings(backbone="tiny-random", image_size=SIZE, taps=(5,), dpam_layers=5, shape=shape,
                              local_weight=4.0)
    return save_prompt_adapter(tmp_path / "tiny", PromptLearner(shape, 64), settings)


def test_load_errors_say_what_is_wrong(tmp_path, tiny_adapter, backbone):
    with pytest.raises(AdapterError, match="does not exist"):
        load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="adapter.json is missing"):
        load(tmp_path / "empty")
    with pytest.raises(AdapterError, match="kind is 'anomalyclip-prompts', expected 'lora'"):
        load(tiny_adapter, kind="lora")
    with pytest.raises(AdapterError, match="made for backbone 'tiny-random' but the backbone is 'ViT-L-14-336:openai'"):
        load(tiny_adapter, "ViT-L-14-336:openai")
    assert load(tiny_adapter, backbone).config["taps"] == [5]

    folder = load(tiny_adapter)
    bad = dict(folder.tensors, ctx_normal=torch.zeros(10, 64))
    save_adapter(tmp_path / "bad", folder.kind, folder.config, bad)
    load(tmp_path / "bad")  # the file format alone is fine: tensor shapes are the kind's own check
    with pytest.raises(AdapterError, match=r"'ctx_normal' has shape \[10, 64\], expected \[12, 64\]"):
        load(tmp_path / "bad", validator=check_folder)

    wide = {k: torch.zeros(*v.shape[:-1], 768) for k, v in folder.tensors.items()}
    save_adapter(tmp_path / "wide", folder.kind, folder.config, wide)
    # consistent in itself; the width is only known with the model
    load(tmp_path / "wide", "tiny-random", validator=check_folder)
    with pytest.raises(AdapterError, match="768 wide"):
        load(tmp_path / "wide", backbone, validator=check_folder)

    for name, change in (("no_taps", {"taps": []}), ("neg_tap", {"taps": [-1]}), ("neg_dpam", {"dpam_layers": -3}),
                         ("deep_tap", {"taps": [99]})):
        save_adapter(tmp_path / name, folder.kind, {**folder.config, **change}, folder.tensors)
        with pytest.raises(AdapterError, match=f"{name}.*(tapped block|do not fit)"):
            load(tmp_path / name, backbone, validator=check_folder)

    (tiny_adapter / "weights.safetensors").unlink()
    with pytest.raises(AdapterError, match="weights.safetensors is missing"):
        load(tiny_adapter)


def test_validator_gets_the_loaded_backbone_or_none(tiny_adapter, backbone):
    seen = []
    load(tiny_adapter, backbone, validator=lambda folder, model: seen.append((folder.kind, model)))
    load(tiny_adapter, "tiny-random", validator=lambda folder, model: seen.append((folder.kind, model)))
    load(tiny_adapter, validator=lambda folder, model: seen.append((folder.kind, model)))
    assert seen == [("anomalyclip-prompts", backbone), ("anomalyclip-prompts", None), ("anomalyclip-prompts", None)]

    def refuse(folder, model):
        raise AdapterError(f"{folder.path}: refused")

    with pytest.raises(AdapterError, match="refused"):
        load(tiny_adapter, validator=refuse)


def test_adapter_format_layer_imports_no_method():
    """zsad.adapters is the file-format layer: the methods import it, never the other way round."""
    import ast
    import subprocess
    import sys

    for path in (REPO / "zsad" / "adapters" / "__init__.py", REPO / "zsad" / "adapters" / "folder.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [n for n in names if n.startswith(("zsad.methods.anomalyclip", "zsad.dialogue", "zsad.methods"))], path
        assert "importlib" not in path.read_text(encoding="utf-8"), path
    code = ("import sys, zsad.adapters, zsad.adapters.folder; "
            "print(sorted(m for m in sys.modules if m.startswith(('zsad.methods.anomalyclip', 'zsad.dialogue'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_adapters_info_checks_prompt_tensors(tiny_adapter, tmp_path, capsys):
    import argparse

    from zsad.cli.adapters import cmd_info

    assert cmd_info(argparse.Namespace(folder=str(tiny_adapter), backbone=None)) == 0
    assert json.loads(capsys.readouterr().out)["tensors"]["ctx_normal"] == [12, 64]
    folder = load(tiny_adapter)
    save_adapter(tmp_path / "bad", folder.kind, folder.config, dict(folder.tensors, ctx_normal=torch.zeros(10, 64)))
    with pytest.raises(AdapterError, match="'ctx_normal' has shape"):
        cmd_info(argparse.Namespace(folder=str(tmp_path / "bad"), backbone=None))


def test_backbone_given_as_a_file_of_the_same_architecture_is_accepted(tmp_path, caplog):
    out = import_checkpoint(_write(tmp_path / "c.pth", official_state_dict(width=16, depth=2)), tmp_path / "ad")
    with caplog.at_level("WARNING"):
        load(out, "ViT-L-14-336:/weights/openai.pt")
    assert "same architecture" in caplog.text
    with pytest.raises(AdapterError, match="made for backbone"):
        load(out, "ViT-B-16:openai")


# -- commands -------------------------------------------------------------------------------------------

def test_adapters_commands(tmp_path, capsys):
    from zsad.cli import main

    ckpt = _write(tmp_path / "epoch_15.pth", official_state_dict(width=16, depth=3))
    assert main(["adapters", "import-anomalyclip", str(ckpt), "--out", str(tmp_path / "ad"),
                 "--trained-on", "MVTec AD test split"]) == 0
    capsys.readouterr()
    assert main(["adapters", "info", str(tmp_path / "ad")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tensors"]["deep_prompts"] == [2, 4, 16]
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"method": "anomalyclip", "backbone": "ViT-L-14-336:openai", "aupro_variant": "mvtec",
                                   "categories": {}, "mean": {"image_auroc": 0.8}}))
    assert main(["adapters", "add-metrics", str(tmp_path / "ad"), str(metrics), "--name", "visa"]) == 0
    assert load(tmp_path / "ad").config["metrics"]["visa"]["mean"] == {"image_auroc": 0.8}
    evil = tmp_path / "evil.pth"
    torch.save({"prompt_learner": {"ctx_pos": _Payload(tmp_path / "x")}}, evil)
    assert main(["adapters", "import-anomalyclip", str(evil), "--out", str(tmp_path / "e")]) == 2
    assert "refused" in capsys.readouterr().err


def test_recipes_name_real_training_options():
    import yaml

    from zsad.methods.anomalyclip.train import training_config_fields

    recipes = sorted((REPO / "adapters" / "recipes").glob("*.yaml"))
    assert len(recipes) >= 2
    fields = training_config_fields()
    for path in recipes:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert recipe["kind"] == "anomalyclip-prompts", path
        assert set(recipe["train"]) <= fields, (path, set(recipe["train"]) - fields)
        assert recipe["evaluate"], path
