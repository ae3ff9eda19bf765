"""zsad export and scoring on ONNX Runtime (issue 15), on the tiny random CLIP: the export reproduces the PyTorch
path (maps, scores, labels), int8 keeps the maps' ranking, mismatched exports and a missing onnxruntime are refused
in one line, and the folder is replaced whole."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

SIZE = 56  # 4 x 4 patches on the tiny backbone
MAP_TOL, SCORE_TOL = 1e-4, 1e-5


def _images(n: int, seed: int = 7):
    from zsad.data.synthetic import make_sample

    rng = np.random.default_rng(seed)
    kinds = [("weave", "hole"), ("disc", "scratch"), ("grain", None), ("plate", "contamination"), ("carpet", "crack")]
    return [make_sample(c, d, size=(80, 64), rng=rng).image for c, d in (kinds * 2)[:n]]


def _compare(reference, exported):
    assert len(reference) == len(exported)
    for a, b in zip(reference, exported):
        assert abs(a.image_score - b.image_score) <= SCORE_TOL
        assert a.anomaly_map.shape == b.anomaly_map.shape
        assert float(np.abs(a.anomaly_map - b.anomaly_map).max()) <= MAP_TOL
        assert a.pred_label == b.pred_label
        assert a.defect_type == b.defect_type


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i, image in enumerate(_images(3, seed=3)):
        image.save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def clip_export(tmp_path_factory):
    """clip exported through the command line, with the int8 variant."""
    from zsad.cli import main

    out = tmp_path_factory.mktemp("exports") / "clip"
    assert main(["export", "--method", "clip", "--backbone", "tiny-random", "--image-size", str(SIZE),
                 "--class-name", "object,bottle", "--out", str(out), "--int8"]) == 0
    return out


def _torch(method, **options):
    import zsad

    return zsad.create(method, backbone="tiny-random", image_size=SIZE, device="cpu", precision="fp32",
                       warn_random=False, **options)


def _onnx(method, export, runtime="onnx", **options):
    import zsad

    return zsad.create(method, backbone="tiny-random", image_size=SIZE, runtime=runtime, export=export, **options)


def test_clip_round_trip_equals_pytorch(clip_export):
    images = _images(4)  # "bottle": the second class name exported (fidelity at export covered the first)
    _compare(_torch("clip", class_name="bottle").score(images),
             _onnx("clip", clip_export, class_name="bottle").score(images))


def test_export_json_records_the_export(clip_export):
    from zsad.backbones import load_backbone

    data = json.loads((clip_export / "export.json").read_text())
    assert {data["method"], data["backbone"], data["image_size"]} == {"clip", "tiny-random", SIZE}
    assert data["layers"] == load_backbone("tiny-random", image_size=SIZE, warn_random=False).default_layers(4)
    assert data["call"]["vv"] is True and data["precisions"] == ["fp32", "int8"]
    assert len(data["weights_sha256"]) == 64 and data["opset"] >= 17 and data["zsad_version"]
    assert data["class_names"] == ["object", "bottle"]
    fp32 = data["fidelity"]["fp32"]
    assert fp32["map_max_abs_diff"] <= MAP_TOL and fp32["score_max_abs_diff"] <= SCORE_TOL
    int8 = data["int8"]
    assert int8["agreement"]["pearson_min"] >= int8["floor"]["pearson_min"] and int8["search"]
    assert isinstance(int8["excluded_roles"], list) and isinstance(int8["excluded_nodes"], list)
    assert {p.name for p in clip_export.iterdir()} == {"export.json", "model.onnx", "model.int8.onnx",
                                                      "tensors.safetensors"}


def test_int8_maps_correlate_with_fp32(clip_export):
    images = _images(4, seed=11)
    reference = _torch("clip").score(images)
    quantized = _onnx("clip", clip_export, runtime="onnx-int8").score(images)
    for a, b in zip(reference, quantized):
        assert np.corrcoef(a.anomaly_map.ravel(), b.anomaly_map.ravel())[0, 1] > 0.95
        assert abs(a.image_score - b.image_score) < 0.05


def test_anomalyclip_round_trip_with_a_trained_adapter(prompt_train_config, tmp_path):
    import shutil

    from zsad.errors import UsageError
    from zsad.export.build import ExportRequest, export
    from zsad.methods.anomalyclip.train import train_prompts

    adapter = train_prompts(prompt_train_config(tmp_path / "adapter", epochs=1))
    out = tmp_path / "export"
    export(ExportRequest(method="anomalyclip", backbone="tiny-random", out=out, image_size=SIZE,
                         options={"adapter": str(adapter)}))
    images = _images(3)
    reference = _torch("anomalyclip", adapter=str(adapter)).score(images)
    _compare(reference, _onnx("anomalyclip", out).score(images))  # the station needs no adapter
    _compare(reference, _onnx("anomalyclip", out, adapter=str(adapter)).score(images))
    other = tmp_path / "other"
    shutil.copytree(adapter, other)
    (other / "adapter.json").write_text((other / "adapter.json").read_text() + "\n")
    with pytest.raises(UsageError, match="another adapter"):
        _onnx("anomalyclip", out, adapter=str(other))


@pytest.fixture(scope="module")
def musc_export(tmp_path_factory):
    from zsad.export.build import ExportRequest, export

    out = tmp_path_factory.mktemp("exports") / "musc"
    manifest = export(ExportRequest(method="musc", backbone="tiny-random", out=out, image_size=SIZE))
    assert manifest.call.vv is False and all(o.startswith("plain.") for o in manifest.call.outputs)
    return out


def test_musc_round_trip_equals_pytorch(musc_export):
    images = _images(6)
    _compare(_torch("musc").score(images), _onnx("musc", musc_export).score(images))


def test_auto_round_trip_equals_pytorch(tmp_path):
    """auto (CLIP text half + MuSc half) from one graph: its call taps both paths, and scores equal PyTorch."""
    from zsad.export.build import ExportRequest, export

    out = tmp_path / "auto"
    manifest = export(ExportRequest(method="auto", backbone="tiny-random", out=out, image_size=SIZE,
                                    class_names=("bottle",)))
    assert manifest.method == "auto" and manifest.class_names == ["bottle"]
    images = _images(6)
    _compare(_torch("auto", class_name="bottle").score(images), _onnx("auto", out).score(images))


def test_references_on_onnx_equal_pytorch(musc_export, clip_export, image_folder, tmp_path):
    """Scoring against references from a musc export: the bank (single images) and joint batches reproduce the
    PyTorch path; an export of another method is refused, and the command line takes --reference with it."""
    from zsad.cli import main
    from zsad.data.synthetic import make_sample
    from zsad.errors import UsageError

    rng = np.random.default_rng(11)
    good = [make_sample("weave", None, size=(80, 64), rng=rng).image for _ in range(3)]
    tests = _images(3)
    for method in ("clip", "musc"):  # clip: bank mode only; musc: a batch of 3 joins the references
        torch_detector = _torch(method, references=good)
        onnx_detector = _onnx(method, musc_export, references=good)
        assert abs(torch_detector.method.normal_max - onnx_detector.method.normal_max) <= SCORE_TOL
        _compare([torch_detector.score([image])[0] for image in tests],
                 [onnx_detector.score([image])[0] for image in tests])
        _compare(torch_detector.score(tests), onnx_detector.score(tests))
    with pytest.raises(UsageError, match="export with method .musc."):
        _onnx("musc", clip_export, references=good)
    folder = tmp_path / "good"
    folder.mkdir()
    for i, image in enumerate(good):
        image.save(folder / f"{i}.png")
    out = tmp_path / "scored"
    assert main(["score", str(image_folder), "--reference", str(folder), "--runtime", "onnx", "--export",
                 str(musc_export), "--out", str(out), "-q"]) == 0
    rows = (out / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(list(image_folder.iterdir()))


def test_mismatched_export_is_refused(clip_export, image_folder, capsys):
    from zsad.cli import main
    from zsad.errors import UsageError

    for asked, message in ((dict(image_size=112), "image size"), (dict(backbone="ViT-B-16:random"), "backbone"),
                           (dict(activation="gelu"), "activation")):
        options = {"method": "clip", "backbone": "tiny-random", "image_size": SIZE, **asked}
        with pytest.raises(UsageError, match=message):
            import zsad

            zsad.create(options.pop("method"), runtime="onnx", export=clip_export, **options)
    with pytest.raises(UsageError, match="method"):
        _onnx("musc", clip_export)
    with pytest.raises(UsageError, match="blocks"):  # other taps than exported: checked at once, by a dry run
        _onnx("clip", clip_export, layers=(0, 5))
    with pytest.raises(UsageError, match="no text embedding"):
        _onnx("clip", clip_export, class_name="screw")
    capsys.readouterr()
    code = main(["score", str(image_folder), "--runtime", "onnx", "--export", str(clip_export), "--image-size", "112",
                 "--out", str(clip_export.parent / "refused"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "image size" in err[0]


def test_cli_score_on_onnx_matches_pytorch(clip_export, image_folder, tmp_path):
    import csv

    from zsad.cli import main

    folder = image_folder
    common = ["-q", "--no-maps", "--batch-size", "2"]
    assert main(["score", str(folder), "--runtime", "onnx", "--export", str(clip_export), "--class-name", "bottle",
                 "--out", str(tmp_path / "onnx"), *common]) == 0
    assert main(["score", str(folder), "--method", "clip", "--backbone", "tiny-random", "--image-size", str(SIZE),
                 "--class-name", "bottle", "--out", str(tmp_path / "torch"), *common]) == 0

    def rows(name):
        with open(tmp_path / name / "results.csv", newline="") as handle:
            return list(csv.DictReader(handle))

    onnx_rows, torch_rows = rows("onnx"), rows("torch")
    assert [r["path"] for r in onnx_rows] == [r["path"] for r in torch_rows]
    for a, b in zip(onnx_rows, torch_rows):
        assert abs(float(a["score"]) - float(b["score"])) <= 2e-6  # CSV keeps 6 decimals
        assert (a["label"], a["defect_type"]) == (b["label"], b["defect_type"])


def test_missing_onnxruntime_is_one_line(clip_export, image_folder, monkeypatch, capsys, tmp_path):
    from zsad.cli import main

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    code = main(["export", "--method", "clip", "--backbone", "tiny-random", "--image-size", str(SIZE),
                 "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and 'pip install -e ".[onnx]"' in err[0]
    assert not (tmp_path / "x").exists()
    code = main(["score", str(image_folder), "--runtime", "onnx", "--export", str(clip_export), "--out",
                 str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and 'pip install -e ".[onnx]"' in err[0]


def test_export_folder_is_replaced_whole(clip_export, tmp_path, monkeypatch):
    """An export that fails midway (here: after half a graph is written) leaves the previous export exactly as
    it was, and no half-written sibling."""
    import shutil

    from zsad.export import build

    out = tmp_path / "exp"
    shutil.copytree(clip_export, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(backbone, call, path, **kwargs):
        path.write_bytes(b"half a graph")
        raise RuntimeError("killed")

    monkeypatch.setattr(build, "export_tokens", crash)
    with pytest.raises(RuntimeError, match="killed"):
        build.export(build.ExportRequest(method="clip", backbone="tiny-random", out=out, image_size=SIZE,
                                         check_images=2))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]


def test_int8_below_the_floor_is_refused_unless_forced(clip_export, tmp_path, monkeypatch):
    from zsad.errors import UsageError
    from zsad.export import build, fidelity

    monkeypatch.setitem(fidelity.INT8_FLOOR, "pearson_min", 1.01)  # nothing reaches it
    monkeypatch.setattr(build, "export_tokens", lambda backbone, call, path, **kw: shutil_copy(clip_export, path))
    request = build.ExportRequest(method="clip", backbone="tiny-random", out=tmp_path / "e", image_size=SIZE,
                                  int8=True, check_images=2)
    with pytest.raises(UsageError, match="below the floor"):
        build.export(request)
    assert not request.out.exists()
    request.force = True
    manifest = build.export(request)
    assert manifest.int8["forced"] is True and (request.out / "model.int8.onnx").is_file()


def shutil_copy(export, path):
    import shutil

    shutil.copyfile(export / "model.onnx", path)  # the same graph, without tracing it again


def test_int8_search_keeps_harmful_roles_in_fp32(clip_export, tmp_path):
    """The search measures each role and keeps in fp32 the one whose quantisation hurts (a fake measure here
    says: quantising mlp.proj costs correlation)."""
    import onnx

    from zsad.export.fidelity import Int8Agreement
    from zsad.export.quantize import prepare, search, weight_roles

    roles = weight_roles(prepare(clip_export / "model.onnx"))
    harmful = {n for n, r in roles.items() if r == "mlp.proj"}
    assert harmful and set(roles.values()) >= {"attn.qkv", "attn.out", "mlp.fc", "mlp.proj", "vv.value"}

    def measure(path):
        floats = {n.name for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul"}
        r = 0.999 if harmful <= floats else 0.9
        return Int8Agreement(pearson_min=r, pearson_mean=r, auroc_fp32=0.7, auroc_int8=0.7, auroc_delta=0.0,
                             score_max_abs_diff=0.0)

    result = search(clip_export / "model.onnx", tmp_path / "int8.onnx", measure)
    assert result.excluded_roles == ["mlp.proj"] and set(result.excluded_nodes) == harmful
    assert result.agreement.pearson_min == 0.999
    final = onnx.load(str(tmp_path / "int8.onnx")).graph.node
    assert harmful <= {n.name for n in final if n.op_type == "MatMul"}
    assert any(n.op_type == "MatMulInteger" for n in final)
