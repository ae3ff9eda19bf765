"""The one builder (issue 22): ``zsad.create`` takes a name or any loaded backbone (CLIP, timm, an ONNX export),
checks options once, and reads what a method can do from its class; the runner alone decides a group's mode."""

from __future__ import annotations

import numpy as np
import pytest

import zsad
from zsad.backbones import load_backbone
from zsad.backbones.base import Backbone
from zsad.errors import BatchTooSmallError, UsageError
from zsad.methods import DEFAULT_METHOD, list_methods, method_class
from zsad.methods.base import INDEPENDENT, JOINT

SIZE = 56


def _images(n: int, seed: int = 5):
    from zsad.data.synthetic import make_sample

    rng = np.random.default_rng(seed)
    kinds = [("weave", "hole"), ("disc", None), ("grain", "scratch"), ("plate", None), ("carpet", "crack")]
    return [make_sample(c, d, size=(72, 60), rng=rng).image for c, d in (kinds * 2)[:n]]


def _same(a, b, map_tol: float = 1e-5, score_tol: float = 1e-6) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert abs(x.image_score - y.image_score) <= score_tol
        assert float(np.abs(x.anomaly_map - y.anomaly_map).max()) <= map_tol


def test_every_backbone_family_is_one_backbone_type():
    from zsad.backbones.clip import ClipBackbone
    from zsad.backbones.onnx import OnnxBackbone
    from zsad.backbones.timm import TimmBackbone

    for cls in (ClipBackbone, TimmBackbone, OnnxBackbone):
        assert issubclass(cls, Backbone)
        # no method borrowed from another family: each is inherited from the base or defined on the class itself
        for name in ("preprocess", "default_layers", "check_layers", "tokens", "project_patches", "encode_text"):
            owner = next(k for k in cls.__mro__ if name in vars(k))
            assert owner in (cls, Backbone), (cls.__name__, name, owner.__name__)


def test_musc_on_a_loaded_timm_backbone_equals_musc_built_from_its_name():
    name = "timm:tiny-dinov2:random"
    images = _images(6)
    by_name = zsad.create("musc", backbone=name, image_size=SIZE, device="cpu", precision="fp32", warn_random=False)
    loaded = load_backbone(name, image_size=SIZE, device="cpu", warn_random=False)
    shared = zsad.create("musc", backbone=loaded, device="cpu", precision="fp32")
    assert shared.backbone is loaded
    _same(by_name.score(images), shared.score(images))


def test_text_methods_refuse_a_loaded_vision_only_backbone_before_building():
    loaded = load_backbone("timm:tiny-dinov2:random", image_size=SIZE, device="cpu", warn_random=False)
    for method in list_methods(needs_text=True):
        with pytest.raises(UsageError, match="vision-only"):
            zsad.create(method, backbone=loaded)


def test_musc_on_a_loaded_onnx_export_equals_the_runtime_path_and_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from zsad.backbones.onnx import open_export
    from zsad.export.build import ExportRequest, export

    out = tmp_path / "musc"
    export(ExportRequest(method="musc", backbone="tiny-random", out=out, image_size=SIZE, check_images=5))
    images = _images(6)
    torch_results = zsad.create("musc", backbone="tiny-random", image_size=SIZE, device="cpu", precision="fp32",
                                warn_random=False).score(images)
    by_runtime = zsad.create("musc", backbone="tiny-random", image_size=SIZE, runtime="onnx", export=out)
    opened = open_export(out)
    loaded = zsad.create("musc", backbone=opened)
    assert loaded.backbone is opened and loaded.backbone.export is not None
    _same(by_runtime.score(images), loaded.score(images))
    _same(torch_results, loaded.score(images), map_tol=1e-4, score_tol=1e-5)
    with pytest.raises(UsageError, match="made for method 'musc'"):  # the export's method is checked
        zsad.create("clip", backbone=opened)


def test_options_are_checked_once_before_any_weights_load(monkeypatch):
    import zsad.detector

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded before the options were checked")

    monkeypatch.setattr(zsad.detector, "load_backbone", never)
    with pytest.raises(UsageError, match="no option"):
        zsad.create("clip", backbone="tiny-random", no_such_option=1)
    with pytest.raises(UsageError, match="do not apply to scoring against references"):
        zsad.create("musc", backbone="tiny-random", references=["x.png"], prompts="p.yaml")


def test_capabilities_live_on_the_classes_and_every_front_end_reads_them():
    from zsad.cli import build_parser

    for name in list_methods():
        cls = method_class(name)
        assert cls.name == name and cls.summary
        assert cls.min_batch >= 1 and cls.joint_from >= 0
    assert DEFAULT_METHOD in list_methods()
    choices = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["export"]._actions}
    assert list(choices["method"].choices) == list_methods(exportable=True)
    ask = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["ask"]._actions}
    assert list(ask["method"].choices) == list_methods(min_batch=1)
    score = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["score"]._actions}
    assert score["method"].default == DEFAULT_METHOD
    import inspect

    assert inspect.signature(zsad.create).parameters["method"].default == DEFAULT_METHOD


@pytest.mark.parametrize(("name", "images", "mode"), [
    ("clip", 1, INDEPENDENT), ("clip", 9, INDEPENDENT), ("musc", 4, None), ("musc", 5, JOINT),
    ("auto", 4, INDEPENDENT), ("auto", 5, JOINT)])
def test_each_method_says_how_a_group_of_n_images_is_scored(name, images, mode):
    detector = zsad.create(name, backbone="tiny-random", image_size=SIZE, device="cpu", warn_random=False)
    assert detector.method.mode(images) == mode


def test_auto_below_five_images_is_clip_alone_decided_by_the_runner():
    images = _images(3)
    auto = zsad.create("auto", backbone="tiny-random", image_size=SIZE, device="cpu", precision="fp32",
                       warn_random=False).score(images)
    assert all(r.extras["used"] == "clip" for r in auto)
    musc = zsad.create("musc", backbone="tiny-random", image_size=SIZE, device="cpu", warn_random=False)
    with pytest.raises(BatchTooSmallError) as caught:
        musc.score(images)
    assert (caught.value.method, caught.value.needed, caught.value.got) == ("musc", 5, 3)
    assert "--" not in str(caught.value)  # the library speaks of methods; the command line adds its flags
