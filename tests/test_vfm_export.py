"""``zsad export --method vfm``: the whole model (folded adapters, decoder, head, map filter) as one ONNX graph with a
dynamic batch; on ONNX Runtime it scores as PyTorch (fp32) or close to it (int8), images of any size included, and
an export is refused for another adapter than it holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import zsad
from zsad.errors import UsageError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

SIZE = 64
BACKBONE = "radio:tiny:random"


def _images(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for w, h in [(97, 61), (64, 64), (30, 50)]]


def _adapter(folder, seed: int):
    from zsad.backbones import load_backbone
    from zsad.methods.vfm.adapter import random_modules, save_vfm_adapter

    backbone = load_backbone(BACKBONE, image_size=SIZE, warn_random=False)
    return str(save_vfm_adapter(folder, random_modules(backbone, seed=seed, rank=4)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from zsad.cli import main

    root = tmp_path_factory.mktemp("vfm_export")
    adapter = _adapter(root / "adapter", seed=5)
    out = root / "export"
    assert main(["export", "--method", "vfm", "--backbone", BACKBONE, "--image-size", str(SIZE), "--adapter", adapter,
                 "--out", str(out), "--int8", "--check-images", "3"]) == 0
    return adapter, out


def test_the_graph_is_the_whole_model(exported):
    import onnx

    from zsad.backbones.export_folder import read_manifest

    _, out = exported
    _, manifest = read_manifest(out)
    assert manifest.graph == "method" and manifest.call.outputs == ("scores", "maps")
    assert manifest.facts.resize == "bilinear" and manifest.fidelity["fp32"]["map_max_abs_diff"] <= 1e-4
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    ops = {node.op_type for node in graph.node}
    assert {"Conv", "GroupNormalization", "Sigmoid", "AveragePool"} & ops  # decoder and map filter are inside
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch


def test_onnx_runtime_scores_as_pytorch(exported):
    adapter, out = exported
    images = _images()
    torch_results = zsad.create("vfm", backbone=BACKBONE, image_size=SIZE, device="cpu", precision="fp32",
                                adapter=adapter, warn_random=False).score(images)
    fp32 = zsad.create("vfm", backbone=BACKBONE, image_size=SIZE, runtime="onnx", export=out).score(images)
    int8 = zsad.create("vfm", backbone=BACKBONE, image_size=SIZE, runtime="onnx-int8", export=out).score(images)
    for a, b, c in zip(torch_results, fp32, int8):
        assert b.anomaly_map.shape == a.anomaly_map.shape
        assert abs(a.image_score - b.image_score) <= 1e-5
        np.testing.assert_allclose(b.anomaly_map, a.anomaly_map, atol=1e-4)
        assert abs(a.image_score - c.image_score) <= 0.05
        assert np.corrcoef(a.anomaly_map.ravel(), c.anomaly_map.ravel())[0, 1] > 0.95
    # batches of any size through the one graph
    batched = zsad.create("vfm", backbone=BACKBONE, image_size=SIZE, runtime="onnx", export=out, batch_size=2)
    assert [r.image_score for r in batched.score(images)] == pytest.approx([r.image_score for r in fp32], abs=1e-6)


def test_an_export_is_refused_for_another_adapter(exported, tmp_path):
    adapter, out = exported
    zsad.create("vfm", backbone=BACKBONE, image_size=SIZE, runtime="onnx", export=out, adapter=adapter)
    other = _adapter(tmp_path / "other", seed=6)
    with pytest.raises(UsageError, match="another adapter"):
        zsad.create("vfm", backbone=BACKBONE, image_size=SIZE, runtime="onnx", export=out, adapter=other)
    with pytest.raises(UsageError, match="image size"):
        zsad.create("vfm", backbone=BACKBONE, image_size=96, runtime="onnx", export=out)
    assert torch.is_grad_enabled()


def test_a_clip_backbone_export_resizes_as_the_method(tmp_path):
    """vfm squash-resizes bilinearly on every family (the official transforms), while zsad's CLIP backbones resize
    bicubically: the export must record the method's resize, so ONNX Runtime scores non-square images as PyTorch."""
    from zsad.backbones import load_backbone
    from zsad.backbones.export_folder import read_manifest
    from zsad.cli import main
    from zsad.methods.vfm.adapter import random_modules, save_vfm_adapter

    clip, size = "tiny-random", 56  # patch 14
    backbone = load_backbone(clip, image_size=size, warn_random=False)
    adapter = str(save_vfm_adapter(tmp_path / "adapter", random_modules(backbone, seed=3, rank=4)))
    out = tmp_path / "export"
    assert main(["export", "--method", "vfm", "--backbone", clip, "--image-size", str(size), "--adapter", adapter,
                 "--out", str(out), "--check-images", "2"]) == 0
    assert read_manifest(out)[1].facts.resize == "bilinear"
    images = _images(1)
    torch_results = zsad.create("vfm", backbone=clip, image_size=size, device="cpu", precision="fp32",
                                adapter=adapter, warn_random=False).score(images)
    fp32 = zsad.create("vfm", backbone=clip, image_size=size, runtime="onnx", export=out).score(images)
    for a, b in zip(torch_results, fp32):
        assert abs(a.image_score - b.image_score) <= 1e-5
        np.testing.assert_allclose(b.anomaly_map, a.anomaly_map, atol=1e-4)
