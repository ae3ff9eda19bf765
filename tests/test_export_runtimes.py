"""Export runtimes (issue 27) on the tiny random CLIP: OpenVINO scores the same export folder as ONNX Runtime and
equals PyTorch; static int8 (SmoothQuant scaling + calibrated QDQ) keeps the maps on both engines; SmoothQuant
keeps the fp32 function while flattening the activations; ``--runtime auto`` runs what export.json recorded as
fastest among runtimes whose fidelity passed; a missing or damaged model file, a missing engine and bad
calibration folders are refused with exit 2 and one line."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib

pytest.importorskip("onnxruntime", reason="the onnx extra's wheel is missing here")
pytest.importorskip("onnx", reason="the onnx extra's wheel is missing here")

SIZE = 56
MAP_TOL, SCORE_TOL = 1e-4, 1e-5
R_GOAL, AUROC_GOAL = 0.99, 0.005  # the documented int8 fidelity (zsad.export.fidelity.INT8_GOAL)


def _images(n: int, seed: int = 5):
    from zsad.data.synthetic import make_sample

    rng = np.random.default_rng(seed)
    kinds = [("weave", "hole"), ("disc", "scratch"), ("plate", "contamination"), ("carpet", "crack")]
    return [make_sample(c, d, size=64, rng=rng) for c, d in (kinds * 2)[:n]]


def _openvino():
    return pytest.importorskip("openvino", reason="no openvino wheel for this platform")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("rt")
    calib = root / "calib"
    calib.mkdir()
    for i, sample in enumerate(_images(3, seed=1)):
        sample.image.save(calib / f"{i}.png")
    return root, calib


@pytest.fixture(scope="module")
def static_export(folders):
    """clip exported with static int8, calibrated on a folder of images, through the command line."""
    from zsad.cli import main

    root, calib = folders
    out = root / "clip"
    assert main(["export", "--method", "clip", "--backbone", "tiny-random", "--image-size", str(SIZE),
                 "--out", str(out), "--int8", "static", "--calibration", str(calib), "--check-images", "2",
                 "--threads", "1"]) == 0
    return out


def _create(runtime, export=None):
    import zsad

    if runtime == "torch":
        return zsad.create("clip", backbone="tiny-random", image_size=SIZE, device="cpu", precision="fp32",
                           warn_random=False)
    return zsad.create("clip", backbone="tiny-random", image_size=SIZE, runtime=runtime, export=export, threads=1)


def _pearson(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_openvino_fp32_equals_pytorch(static_export):
    _openvino()
    images = [s.image for s in _images(3)]
    reference = _create("torch").score(images)
    detector = _create("openvino", static_export)
    assert detector.backbone.runtime == "openvino"
    for a, b in zip(reference, detector.score(images)):
        assert float(np.abs(a.anomaly_map - b.anomaly_map).max()) <= MAP_TOL
        assert abs(a.image_score - b.image_score) <= SCORE_TOL and a.pred_label == b.pred_label
    data = json.loads((static_export / "export.json").read_text())
    assert data["fidelity"]["openvino"]["map_max_abs_diff"] <= MAP_TOL and "openvino" in data["versions"]


@pytest.mark.parametrize("runtime", ["onnx-int8", "openvino-int8"])
def test_static_int8_keeps_the_maps(static_export, runtime):
    """On images other than the calibration and check ones: every map r >= 0.99 with PyTorch fp32, pixel AUROC
    against the planted masks within 0.005, and the graph really is int8 (QDQ, weights per output channel)."""
    import onnx
    from sklearn.metrics import roc_auc_score

    if runtime.startswith("openvino"):
        _openvino()
    samples = _images(4, seed=9)
    images = [s.image for s in samples]
    reference, quantized = _create("torch").score(images), _create(runtime, static_export).score(images)
    assert min(_pearson(a.anomaly_map, b.anomaly_map) for a, b in zip(reference, quantized)) >= R_GOAL
    masks = np.concatenate([np.asarray(s.mask, bool).ravel() for s in samples])
    auroc = [roc_auc_score(masks, np.concatenate([r.anomaly_map.ravel() for r in rows]))
             for rows in (reference, quantized)]
    assert abs(auroc[0] - auroc[1]) <= AUROC_GOAL
    graph = onnx.load(str(static_export / "model.int8.onnx")).graph
    kinds = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "MatMul"} <= kinds and "MatMulInteger" not in kinds
    consts = {t.name: t for t in graph.initializer}
    per_channel = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in consts
                   and consts[n.input[0]].data_type == onnx.TensorProto.INT8 and len(consts[n.input[1]].dims) == 1
                   and consts[n.input[1]].dims[0] > 1]
    assert per_channel  # int8 weights with one scale per output channel


def test_export_json_records_static_int8_and_runtimes(static_export, folders):
    data = json.loads((static_export / "export.json").read_text())
    int8 = data["int8"]
    assert int8["mode"] == "static" and int8["smoothquant"]["matmuls"] > 0
    assert int8["calibration"] == {"images": 3, "source": str(folders[1]), "method": "minmax"}
    assert int8["agreement"]["pearson_min"] >= R_GOAL and not int8["forced"]
    runtimes = data["runtimes"]
    measured = {k for k, v in runtimes.items() if isinstance(v, dict) and "s_per_image" in v}
    assert {"onnx", "onnx-int8"} <= measured and all(runtimes[k]["threads"] == 1 for k in measured)
    eligible = {k: runtimes[k]["s_per_image"] for k in measured if runtimes[k]["fidelity_ok"]}
    assert runtimes["auto"] == min(eligible, key=eligible.get)


def test_smoothquant_keeps_the_function_and_flattens_activations(static_export):
    """The smoothed fp32 graph computes what the original does, and the activations the quantiser sees have a
    smaller spread between their largest and their typical channel."""
    import onnxruntime as ort

    from zsad.export.quantize import prepare, smoothed, weight_roles
    from zsad.export.smooth import activation_maxima

    model = prepare(static_export / "model.onnx")
    rng = np.random.default_rng(0)
    feeds = [{"images": rng.standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)} for _ in range(2)]
    smooth, count = smoothed(model, feeds, 0.5)
    assert count == len(weight_roles(model)) and count > 0
    assert sum(n.op_type == "Mul" and n.name.endswith(".smooth") for n in smooth.graph.node) == count
    x = {"images": rng.standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)}
    before = ort.InferenceSession(model.SerializeToString()).run(None, x)
    after = ort.InferenceSession(smooth.SerializeToString()).run(None, x)
    for a, b in zip(before, after):
        assert np.abs(a - b).max() <= 1e-4 * max(1.0, float(np.abs(a).max()))
    nodes = list(weight_roles(model))
    spread = [{n: float(v.max() / np.median(v)) for n, v in activation_maxima(m, [f"{n}" for n in nodes],
                                                                               feeds).items()}
              for m in (model, smooth)]
    assert np.median([spread[1][n] for n in nodes]) < np.median([spread[0][n] for n in nodes])


def test_runtime_auto_runs_the_recorded_runtime(static_export, tmp_path, capsys):
    import zsad
    from zsad.cli import main

    data = json.loads((static_export / "export.json").read_text())
    assert _create("auto", static_export).backbone.runtime == data["runtimes"]["auto"]
    image_dir = tmp_path / "imgs"
    image_dir.mkdir()
    _images(1)[0].image.save(image_dir / "a.png")
    capsys.readouterr()
    assert main(["score", str(image_dir), "--runtime", "auto", "--export", str(static_export), "--out",
                 str(tmp_path / "o"), "--no-maps", "--threads", "1"]) == 0
    assert f"--runtime auto: {data['runtimes']['auto']} " in capsys.readouterr().err
    # a faster runtime whose fidelity did not pass is never chosen
    edited = tmp_path / "edited"
    shutil.copytree(static_export, edited)
    slow = dict(data["runtimes"], onnx={"s_per_image": 1e-9, "threads": 1, "fidelity_ok": False},
                **{"onnx-int8": {"s_per_image": 1.0, "threads": 1, "fidelity_ok": True}})
    for other in ("openvino", "openvino-int8"):
        slow.pop(other, None)
    (edited / "export.json").write_text(json.dumps(dict(data, runtimes=slow)))
    detector = zsad.create("clip", backbone="tiny-random", image_size=SIZE, runtime="auto", export=edited)
    assert detector.backbone.runtime == "onnx-int8"


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_missing_or_damaged_model_file_is_one_line(static_export, folders, tmp_path, capsys, runtime):
    from zsad.cli import main

    if runtime == "openvino":
        _openvino()
    image_dir = folders[1]
    broken = tmp_path / "broken"
    shutil.copytree(static_export, broken)
    cases = [("model.onnx", b"\x08\x07not a graph" * 10, "model.onnx cannot be loaded"),
             ("model.onnx", None, "has no model.onnx"),
             ("tensors.safetensors", b"garbage", "tensors.safetensors cannot be read")]
    for name, content, message in cases:
        shutil.copyfile(static_export / name, broken / name)
        if content is None:
            (broken / name).unlink()
        else:
            (broken / name).write_bytes(content)
        capsys.readouterr()
        code = main(["score", str(image_dir), "--runtime", runtime, "--export", str(broken), "--out",
                     str(tmp_path / "o"), "-q"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (name, err)
        shutil.copyfile(static_export / name, broken / name)


def test_missing_openvino_is_one_line(static_export, folders, monkeypatch, capsys, tmp_path):
    from zsad.cli import main

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    code = main(["score", str(folders[1]), "--runtime", "openvino", "--export", str(static_export), "--out",
                 str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and 'pip install "zsad[openvino]"' in err[0]


def test_openvino_int8_needs_a_static_export(static_export, tmp_path):
    from zsad.errors import UsageError

    _openvino()
    dynamic = tmp_path / "dynamic"
    shutil.copytree(static_export, dynamic)
    data = json.loads((dynamic / "export.json").read_text())
    data["int8"]["mode"] = "dynamic"
    (dynamic / "export.json").write_text(json.dumps(data))
    with pytest.raises(UsageError, match="--int8 static"):
        _create("openvino-int8", dynamic)


def test_bad_calibration_folder_is_one_line(tmp_path, capsys):
    from zsad.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, message in ((tmp_path / "nope", "not a folder"), (empty, "no images found")):
        code = main(["export", "--method", "clip", "--backbone", "tiny-random", "--image-size", str(SIZE),
                     "--out", str(tmp_path / "x"), "--int8", "static", "--calibration", str(folder)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "x").exists()


def test_extras_are_declared_and_import():
    """pyproject declares zsad[openvino] and dev pulls it in (so CI runs these tests); the engines import."""
    data = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = data["project"]["optional-dependencies"]
    assert any(d.startswith("openvino") for d in extras["openvino"])
    assert "openvino" in extras["dev"][0] and "onnx" in extras["dev"][0]
    _openvino()
    import onnxruntime  # noqa: F401
    import openvino

    assert "CPU" in openvino.Core().available_devices
