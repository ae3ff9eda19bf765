"""zsad inside anomalib (the ``zsad[anomalib]`` extra): ``Engine().test`` with zsad's wrappers reports the metrics
``zsad evaluate`` reports on the same images, anomalib's metric classes agree with zsad's on the same maps, and
``anomalib test`` / ``anomalib predict`` run. Tiny random backbone, synthetic data in anomalib's Folder layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("anomalib", reason='the zsad[anomalib] extra is not installed (pip install -e ".[anomalib]")')

from anomalib.data import Folder, MVTecAD  # noqa: E402
from anomalib.engine import Engine  # noqa: E402
from anomalib.metrics import AUPIMO, AUPRO, AUROC, Evaluator  # noqa: E402

from zsad.errors import UsageError  # noqa: E402
from zsad.evaluate import EvaluateConfig, evaluate  # noqa: E402
from zsad.integrations.anomalib import AnomalyClip, Auto, Clip, MuSc, ReferenceScoring, Zsad  # noqa: E402
from zsad.metrics import aupimo, aupimo_stats, aupro, image_auroc, pixel_auroc  # noqa: E402
from zsad.metrics.anomalib_backend import AUPRO_TOLERANCE, AUROC_TOLERANCE, anomalib_metrics  # noqa: E402

SIZE = 56  # the backbone's input: 4 x 4 patches on tiny-random
IMAGE = 160  # the images: 6 normal test images hold 153,600 normal pixels, enough for AUPIMO's FPR of 1e-5
#: batch_size 3 = the datamodules' eval_batch_size: zsad then chunks images as anomalib batches them, so even the
#: independent methods run the same computation as zsad's own (other chunkings move GEMM rounding by an ulp)
DETECTOR = dict(backbone="tiny-random", image_size=SIZE, device="cpu", precision="fp32", batch_size=3, progress=False)
CLASSES = {"musc": MuSc, "clip": Clip, "auto": Auto}


def _layouts(root: Path, size: int, n_good: int, n_defect: int, seed: int) -> dict[str, Path]:
    """``zsad make-synthetic`` data (MVTec layout) and the same images in anomalib's Folder layout: ``weave/good``,
    ``weave/<defect>``, ``weave/masks/<defect>/<stem>.png`` (also zsad's ``folder`` format), train images apart."""
    from zsad.data.synthetic import make_dataset

    make_dataset(root / "mvtec", categories=["weave"], n_train_good=3, n_test_good=n_good, n_test_defect=n_defect,
                 size=size, seed=seed)
    mvtec = root / "mvtec" / "weave"
    folder = root / "folder" / "weave"
    shutil.copytree(mvtec / "train" / "good", root / "folder" / "train_good")
    for kind in sorted(p.name for p in (mvtec / "test").iterdir()):
        shutil.copytree(mvtec / "test" / kind, folder / kind)
        if kind != "good":
            (folder / "masks" / kind).mkdir(parents=True)
            for mask in (mvtec / "ground_truth" / kind).iterdir():
                shutil.copy(mask, folder / "masks" / kind / mask.name.replace("_mask", ""))
    return {"mvtec": root / "mvtec", "folder": folder, "train": root / "folder" / "train_good"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """160 px: 6 normal test images hold 153,600 normal pixels, enough for AUPIMO's shared FPR of 1e-5."""
    return _layouts(tmp_path_factory.mktemp("anomalib"), IMAGE, 6, 6, seed=3)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    """64 px, 4 + 4 test images: the wrappers' other paths."""
    return _layouts(tmp_path_factory.mktemp("anomalib_small"), 64, 4, 4, seed=5)


def _folder(data, batch: int = 3) -> Folder:
    defects = sorted(p.name for p in data["folder"].iterdir() if p.name not in ("good", "masks"))
    return Folder(name="weave", root=data["folder"], normal_dir=data["train"], normal_test_dir="good",
                  abnormal_dir=defects, mask_dir=[f"masks/{d}" for d in defects], val_split_mode="same_as_test",
                  eval_batch_size=batch, num_workers=0)


def _evaluator(with_aupimo: bool = True) -> Evaluator:
    metrics = [AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
               AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_"), AUPRO(fields=["anomaly_map", "gt_mask"])]
    if with_aupimo:  # forced: the synthetic set is small (the backend's bound says what that costs)
        metrics.append(AUPIMO(fields=["anomaly_map", "gt_mask"], force=True))
    return Evaluator(test_metrics=metrics)


def _engine_test(model, datamodule, out: Path) -> dict[str, float]:
    engine = Engine(default_root_dir=out, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (found,) = engine.test(model=model, datamodule=datamodule, verbose=False)
    return found


def _zsad_evaluate(data_root: Path, out: Path, method: str, fmt: str, **extra) -> dict[str, float]:
    config = EvaluateConfig(data=data_root, out=out, method=method, backbone="tiny-random", image_size=SIZE,
                            device="cpu", precision="fp32", format=fmt, progress=False, metrics_backend="anomalib",
                            batch_size=DETECTOR["batch_size"], **extra)
    return evaluate(config)["categories"]["weave"]


@pytest.mark.parametrize("method", ["musc", "clip"])
def test_engine_test_reports_what_zsad_evaluate_reports(data, small, method, tmp_path):
    """The CI proof: anomalib's Engine().test on the wrapper equals ``zsad evaluate`` on the same images (AUROC to
    1e-6, AUPRO to 1e-5, AUPIMO within the bound its sampled integration implies), and equals anomalib's metric
    classes run by ``zsad evaluate --metrics-backend anomalib`` on zsad's own maps (so the maps are the same).

    musc runs on the 160 px set, where anomalib can compute AUPIMO; clip on the 64 px one: on 160 px its maps, a
    4 x 4 grid upsampled by tiny-random, leave so many near-equal normal pixels at the top that anomalib's 300,000
    sampled thresholds jump from FPR 1.3e-5 straight past 1e-4 and it refuses."""
    with_aupimo = method == "musc"
    layout = data if with_aupimo else small
    model = CLASSES[method](class_name="weave", evaluator=_evaluator(with_aupimo), visualizer=False, **DETECTOR)
    reported = _engine_test(model, _folder(layout), tmp_path / "anomalib")
    zsad = _zsad_evaluate(layout["folder"], tmp_path / "zsad", method, "folder")

    assert reported["image_AUROC"] == pytest.approx(zsad["image_auroc"], abs=AUROC_TOLERANCE)
    assert reported["pixel_AUROC"] == pytest.approx(zsad["pixel_auroc"], abs=AUROC_TOLERANCE)
    assert reported["AUPRO"] == pytest.approx(zsad["aupro"], abs=AUPRO_TOLERANCE)
    if with_aupimo:
        bound = zsad["anomalib_aupimo_tolerance"]
        assert bound is not None and bound < 0.2, "the AUPIMO bound must say something on this set"
        assert abs(reported["AUPIMO"] - zsad["aupimo"]) <= bound + 1e-9
    # the same anomalib code on the maps zsad evaluate made: equal up to float32 summation order
    for ours, theirs in (("image_AUROC", "image_auroc"), ("pixel_AUROC", "pixel_auroc"), ("AUPRO", "aupro"),
                         ("AUPIMO", "aupimo")):
        if ours in reported:
            assert reported[ours] == pytest.approx(zsad["anomalib_" + theirs], abs=1e-6), ours
    # the numbers are not degenerate (a constant map would make every comparison trivial)
    assert 0.0 < zsad["pixel_auroc"] < 1.0 and 0.0 < zsad["aupro"] < 1.0


@pytest.mark.parametrize("kind", ["auto", "anomalyclip", "reference"])
def test_the_other_wrappers_give_zsads_own_results(small, kind, tmp_path):
    """Engine.predict over a datamodule (batches of 3) gives, image for image, what the wrapper's own detector gives
    for the category's test files scored together by zsad: the same scores, maps, labels and masks (the main test
    above checks that the detector is the one ``zsad evaluate`` builds)."""
    from zsad.data.datasets import open_dataset

    dataset = open_dataset(small["mvtec"], format="mvtec")
    files = [s.image_path for s in dataset.samples("weave", "test")]
    if kind == "auto":
        model = Auto(**DETECTOR)
    elif kind == "anomalyclip":
        model = AnomalyClip(adapter=str(_adapter(tmp_path / "adapter")), **DETECTOR)
    else:
        model = ReferenceScoring(method="musc", k_shot=2, **DETECTOR)
    datamodule = MVTecAD(root=small["mvtec"], category="weave", eval_batch_size=3, num_workers=0)
    engine = Engine(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    batches = engine.predict(model=model, datamodule=datamodule)
    if kind == "reference":  # two shots from the train split by zsad's rule: what --reference-shots 2 draws
        from zsad.methods.reference.shots import draw_references

        assert [Path(p) for p in model.reference_files] == [Path(p) for p in draw_references(dataset, "weave", 2, 0)]
    assert model.detector.method.name.startswith({"auto": "auto", "anomalyclip": "anomalyclip"}.get(kind, "musc+"))
    expected = model.detector.score(files)
    got = [(path, i, b) for b in batches for i, path in enumerate(b.image_path)]
    assert [Path(p) for p, _, _ in got] == [Path(f) for f in files]
    for (_, i, batch), result in zip(got, expected):
        _same(batch, i, result)


def _same(batch, i: int, result) -> None:
    """Item ``i`` of an anomalib batch holds zsad's result: score and map equal up to float rounding (the same
    computation on the same chunks; 1e-6 leaves room for a BLAS that rounds by memory alignment), labels and masks
    zsad's decisions at 0.5 on them."""
    amap = batch.anomaly_map[i].numpy()
    assert float(batch.pred_score[i]) == pytest.approx(result.image_score, abs=1e-6)
    np.testing.assert_allclose(amap, result.anomaly_map, rtol=0, atol=1e-6)
    assert bool(batch.pred_label[i]) == (float(batch.pred_score[i]) >= 0.5)
    np.testing.assert_array_equal(batch.pred_mask[i].numpy(), amap >= 0.5)


def _adapter(folder: Path) -> Path:
    """A learned-prompt adapter with random prompts for tiny-random (as ``zsad train-prompts`` writes one)."""
    import torch

    from zsad.backbones import load_backbone
    from zsad.methods.anomalyclip.adapter import PromptSettings, save_prompt_adapter
    from zsad.methods.anomalyclip.prompts import PromptLearner, resolve_shape, text_width

    backbone = load_backbone("tiny-random", image_size=SIZE, device="cpu", pos_interpolation="bilinear",
                             warn_random=False)
    shape = resolve_shape(backbone)
    torch.manual_seed(3)
    settings = PromptSettings(backbone="tiny-random", image_size=SIZE, taps=(3, 5), dpam_layers=5, shape=shape,
                              local_weight=1.0)
    save_prompt_adapter(folder, PromptLearner(shape, text_width(backbone)), settings)
    return folder


def test_predict_scores_a_folder_as_one_set(small, tmp_path):
    """``anomalib predict`` gives batches of one image; musc still scores the folder as one set, exactly as
    ``zsad score`` would (same files, same order, the same maps)."""
    import zsad

    engine = Engine(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    batches = engine.predict(model=MuSc(visualizer=False, **DETECTOR), data_path=small["mvtec"] / "weave" / "test")
    paths = [p for b in batches for p in b.image_path]
    assert len(batches) == len(paths) == 8  # one image per batch, all eight scored
    expected = zsad.create("musc", warn_random=False, **{k: v for k, v in DETECTOR.items() if k != "progress"}
                           ).score(paths)
    for batch, result in zip(batches, expected):
        _same(batch, 0, result)


def test_anomalib_command_line_test_and_predict(small, tmp_path, monkeypatch):
    """``anomalib test --model zsad.integrations.anomalib.MuSc --data anomalib.data.MVTecAD ...`` and ``anomalib
    predict ... --data FOLDER``, run in-process (the console script calls the same AnomalibCLI)."""
    from anomalib.cli import AnomalibCLI

    monkeypatch.chdir(tmp_path)
    model = ["--model", "zsad.integrations.anomalib.MuSc", "--model.backbone", "tiny-random", "--model.image_size",
             str(SIZE), "--model.device", "cpu", "--model.progress", "false"]
    cli = AnomalibCLI(["test", *model, "--data", "anomalib.data.MVTecAD", "--data.root", str(small["mvtec"]),
                       "--data.category", "weave", "--data.num_workers", "0"])
    metrics = {k: float(v) for k, v in cli.engine.trainer.callback_metrics.items()}
    assert {"image_AUROC", "pixel_AUROC", "AUPRO", "image_F1Score"} <= set(metrics)
    pictures = list((tmp_path / "results").rglob("images/**/*.png"))
    assert len(pictures) == 8  # the visualizer drew every test image
    AnomalibCLI(["predict", *model, "--data", str(small["mvtec"] / "weave" / "test")])
    drawn = list((tmp_path / "results" / "MuSc" / "latest" / "images").rglob("*.png"))
    assert len(drawn) == 8


def test_fit_trains_nothing_and_refusals_are_one_line(small, tmp_path):
    import torch

    model = MuSc(visualizer=False, **DETECTOR)
    with pytest.raises(UsageError, match="zero-shot: there is nothing to train"):
        model.training_step(None)
    assert model.configure_optimizers() is None
    with pytest.raises(UsageError, match="remove Normalize"):
        model(torch.full((1, 3, 32, 32), -2.0))  # normalised images: zsad normalises itself
    good = small["mvtec"] / "weave" / "train" / "good"
    shots = ReferenceScoring(few_shot_source=str(good), k_shot=1, seed=2, **DETECTOR)._references()
    assert shots == sorted(good.iterdir())[2:3]  # the slice draw: seed 2 with one shot takes the 3rd by name
    with pytest.raises(UsageError, match="unknown method 'nope'"):
        Zsad(method="nope")
    with pytest.raises(UsageError, match="metrics backend"):
        evaluate(EvaluateConfig(data=small["mvtec"], out=tmp_path, metrics_backend="sklearn"))
    # Engine.fit on a zero-shot model only validates; zsad's post-processor needs no validation scores
    engine = Engine(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    engine.fit(model=model, datamodule=MVTecAD(root=small["mvtec"], category="weave", num_workers=0))
    assert model.model is not None  # built, and fit returned without a training step


def _maps(n: int, size: int, seed: int = 0):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    maps, masks, labels = [], [], []
    for i in range(n):
        mask = np.zeros((size, size), bool)
        if i % 2:
            y, x = rng.integers(0, size - 40, 2)
            mask[y:y + rng.integers(5, 40), x:x + rng.integers(5, 40)] = True
        amap = gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 3)
        maps.append((amap + mask * np.float32(rng.uniform(0.05, 0.5))).astype(np.float32))
        masks.append(mask)
        labels.append(i % 2)
    return maps, masks, labels


def test_anomalib_metric_classes_agree_with_zsads_on_the_same_maps():
    """AUROC to 1e-6, AUPRO to 1e-5, AUPIMO within the bound computed from anomalib's sampled curves; the bound is
    tight here (about 100,000 normal pixels per image) and the AUPIMO is far from 0 and 1."""
    maps, masks, labels = _maps(8, 384)
    scores = [float(m.max()) for m in maps]
    found = anomalib_metrics(scores, labels, maps, masks)
    assert found.values["image_auroc"] == pytest.approx(image_auroc(scores, labels), abs=AUROC_TOLERANCE)
    assert found.values["pixel_auroc"] == pytest.approx(pixel_auroc(maps, masks), abs=AUROC_TOLERANCE)
    assert found.values["aupro"] == pytest.approx(aupro(maps, masks), abs=AUPRO_TOLERANCE)
    exact = aupimo_stats(aupimo(maps, masks).values)["mean"]
    bound = found.values["aupimo_tolerance"]
    assert 0.05 < exact < 0.95 and bound < 0.02
    assert abs(found.values["aupimo"] - exact) <= bound
    # images of several sizes: AUROCs still, AUPRO/AUPIMO skipped with a note (anomalib stacks one size)
    mixed = anomalib_metrics(scores[:4], labels[:4], [m[:200] if i else m for i, m in enumerate(maps[:4])],
                             [m[:200] if i else m for i, m in enumerate(masks[:4])])
    assert mixed.values["pixel_auroc"] is not None and mixed.values["aupro"] is None and mixed.notes
