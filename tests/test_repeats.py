"""Repeated anomalies inside a batch (issue 25): mutual scoring misses a defect that repeats on many parts; repeat
detection finds it, says so on the rows, in ``zsad score``'s summary, in the demo and in ``zsad ask``, and scores
it as if it occurred once. Random backbones only (mutual scoring needs no semantics); batches from
``tests/repeat_batches.py`` (this file's own generator)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from repeat_batches import Spot, make_batch
from sklearn.metrics import roc_auc_score

import zsad
from zsad.methods.musc.msm import _num_kept, musc_patch_scores
from zsad.methods.musc.rscin import rscin
from zsad.scoring.maps import grid_to_image

# this file's new modules are imported in the tests that use them, so that the first test runs (and fails) on the
# code before repeat detection

#: a dark blob in the top-left cell of every image that carries it
SPOT = Spot(center=(0.3, 0.3), radius=0.05, color=(0.05, 0.05, 0.08))
TINY = dict(backbone="tiny-random", image_size=224, device="cpu", warn_random=False)


@pytest.fixture(scope="module")
def batch():
    """20 mesh images: 10 carry the same blob, 2 a defect of their own, 8 are good."""
    return make_batch(20, 0.5, kind="mesh", seed=0, oneoffs=2, spot=SPOT)


@pytest.fixture(scope="module")
def scored(batch):
    """The default musc's results on the batch, and plain MuSc's patch scores (``[20, L]``) and embeddings."""
    det = zsad.create("musc", **TINY)
    method = det.method
    chunks = [method.extract(method.backbone.preprocess(batch.images[i:i + 8])) for i in range(0, 20, 8)]
    layers = [torch.cat([c.layers[j] for c in chunks]) for j in range(len(chunks[0].layers))]
    return {None: det.score(batch.images), "layers": layers, "pooled": torch.cat([c.pooled for c in chunks]),
            "plain": musc_patch_scores(layers)}


def _aurocs(batch, image_scores, maps) -> tuple[float, float]:
    """Image and pixel AUROC of the repeated defect against the good images."""
    idx = batch.indices("repeat") + batch.indices("good")
    labels = [batch.items[i].role == "repeat" for i in idx]
    image = roc_auc_score(labels, [float(image_scores[i]) for i in idx])
    pixel = roc_auc_score(np.concatenate([batch.items[i].mask.ravel() for i in idx]),
                          np.concatenate([np.asarray(maps[i]).ravel() for i in idx]))
    return image, pixel


def _plain_aurocs(batch, scored) -> tuple[float, float]:
    """Plain MuSc's AUROCs: maps upsampled as the method does (224 px inputs: no resize back), image score = map
    maximum re-scored by RsCIN (pixel AUROC does not see the batch-wide min-max normalisation)."""
    maps = grid_to_image(scored["plain"], 224, align_corners=True)
    return _aurocs(batch, rscin(maps.flatten(1).max(dim=1).values, scored["pooled"]), maps)


def test_repeated_defect_missed_by_mutual_scoring_is_found_and_scored(batch, scored):
    """Plain MuSc: every blob finds its twins in the other carriers, so the blob's pixels rank below the good
    images' texture. The default musc names the pattern on the carriers' rows and scores them without their
    twins: far higher pixel and image AUROC."""
    results = scored[None]
    plain_image, plain_pixel = _plain_aurocs(batch, scored)
    image, pixel = _aurocs(batch, [r.image_score for r in results], [r.anomaly_map for r in results])
    carriers, good = batch.indices("repeat"), batch.indices("good")
    named = [i for i in carriers if results[i].extras.get("repeat_pattern")]
    assert len(named) >= 0.8 * len(carriers)
    assert plain_pixel < 0.6 and pixel > plain_pixel + 0.3
    assert image > plain_image + 0.2
    for i in named:
        extras = results[i].extras
        assert extras["repeat_images"] == len(named) and extras["repeat_place"] == "top left"
        assert extras["group_images"] == 20 and 0 < extras["repeat_area"] < 0.1
    assert all(results[i].extras["repeat_images"] == 0 for i in good)


def test_without_repeats_the_default_is_exact_musc():
    """No pattern found, nothing re-scored: the same scores and maps as plain MuSc, bit for bit."""
    clean = make_batch(12, 0.0, kind="washer", seed=3, oneoffs=2)
    plain = zsad.create("musc", **TINY, repeats="off").score(clean.images)
    aware = zsad.create("musc", **TINY).score(clean.images)
    for a, b in zip(plain, aware):
        assert a.image_score == b.image_score
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
        assert b.extras["repeat_images"] == 0 and b.extras["group_images"] == 12


def test_report_mode_names_the_pattern_and_keeps_musc_scores(batch, scored):
    plain = zsad.create("musc", **TINY, repeats="off").score(batch.images)
    report = zsad.create("musc", **TINY, repeats="report").score(batch.images)
    assert not any(r.extras.get("repeat_images") for r in plain)
    for off, reported, aware in zip(plain, report, scored[None]):
        assert reported.image_score == pytest.approx(off.image_score, abs=1e-6)
        np.testing.assert_allclose(reported.anomaly_map, off.anomaly_map, atol=1e-6)
        assert reported.extras.get("repeat_pattern") == aware.extras.get("repeat_pattern")


def test_burnout_knee_counts_the_twins():
    from zsad.methods.musc.burnout import BurnoutCurves

    """A patch planted in 8 images has 7 twins: its curve's knee counts them (give or take the grid's coarseness,
    as pattern finding allows); its gain stands above every other patch's."""
    g = torch.Generator().manual_seed(0)
    n, length, c = 30, 16, 32
    z = F.normalize(torch.randn(n, length, c, generator=g), dim=-1)
    planted = F.normalize(torch.randn(c, generator=g), dim=0)
    z[:8, 5] = F.normalize(planted + 0.05 * torch.randn(8, c, generator=g), dim=-1)
    k = _num_kept(n - 1, 0.3)
    curves = BurnoutCurves(n, length, n - 1, k)
    musc_patch_scores([z.view(n, length, c)], rs=(1,), observe=curves.add)
    gain, level, twins = curves.burnout()
    assert ((twins[:8, 5] >= 7 / 1.5 - 1) & (twins[:8, 5] <= 1.5 * 7 + 1)).all()
    assert (twins[:8, 5] < curves.grid[-1]).all()
    others = torch.ones(n, length, dtype=torch.bool)
    others[:8, 5] = False
    assert gain[:8, 5].min() > gain[others].max()


def test_rscin_partition_keeps_the_other_images_in_order():
    """Images outside a pattern are smoothed as official RsCIN smooths them (members enter their windows with
    their plain scores): their outputs are an increasing affine map of the official ones."""
    g = torch.Generator().manual_seed(1)
    plain = torch.rand(12, generator=g)
    emb = torch.randn(12, 8, generator=g)
    partition = torch.tensor([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    new = plain.clone()
    new[partition == 1] += 2.0
    official = rscin(plain, emb)
    aware = rscin(new, emb, partition=partition, plain=plain)
    rest = partition == 0
    slope = (aware[rest][1] - aware[rest][0]) / (official[rest][1] - official[rest][0])
    assert slope > 0
    torch.testing.assert_close(aware[rest], aware[rest][0] + slope * (official[rest] - official[rest][0]))
    assert aware[partition == 1].min() > aware[rest].max()


def test_trusted_references_are_never_part_of_a_pattern(batch, scored):
    """Known-good references joining the batch are trusted normals: never candidates nor members, always among
    the carriers' references."""
    from zsad.methods.musc.repeats import repeat_aware_scores

    layers = scored["layers"]
    good = batch.indices("good")[:3]
    order = good + [i for i in range(20) if i not in good]
    trusted = torch.arange(20) < 3
    found = repeat_aware_scores([t[order] for t in layers], trusted=trusted).findings
    members = {m for p in found.patterns for m in p.members}
    assert found.patterns and not members & {0, 1, 2}
    shifted = found.without_leading(3)
    assert {order[m + 3] for p in shifted.patterns for m in p.members} <= set(batch.indices("repeat")) | \
        set(batch.indices("oneoff"))


def test_reference_joint_mode_reports_repeats(batch, tmp_path):
    refs = []
    for i, item in enumerate(make_batch(3, 0.0, kind="mesh", seed=7, oneoffs=0).items):
        item.image.save(tmp_path / f"ref{i}.png")
        refs.append(tmp_path / f"ref{i}.png")
    det = zsad.create("musc", **TINY, references=refs)
    results = det.score(batch.images)
    assert all(r.extras["mode"] == "joint" and r.extras["group_images"] == 20 for r in results)
    named = [i for i, r in enumerate(results) if r.extras.get("repeat_pattern")]
    assert named and set(named) <= set(batch.indices("repeat"))


@pytest.mark.parametrize("method", ["musc", "auto"])
def test_repeats_flag_reaches_every_mutual_scorer(method):
    """``--repeats`` of score and evaluate gets to the MuSc part of musc, auto and their reference-joint mode."""
    from zsad.cli import build_parser
    from zsad.cli.options import method_options

    refs = make_batch(3, 0.0, kind="mesh", seed=7, oneoffs=0, size=64).images
    for command in (["score", "x"], ["evaluate", "--data", "x"]):
        args = build_parser().parse_args([*command, "--method", method, "--repeats", "report"])
        options = method_options(args, method)
        assert options["repeats"] == "report"
    alone = zsad.create(method, **TINY, **options).method
    joint = zsad.create(method, **TINY, references=refs, **options).method
    assert (alone if method == "musc" else alone.musc).config.repeats == "report"
    assert joint.musc.config.repeats == "report"
    assert zsad.create(method, **TINY, references=refs).method.musc.config.repeats == "exclude"  # the default


def test_describe_repeats_one_sentence_per_pattern():
    from zsad.methods.musc.repeats import describe_repeats

    rows = [("", {"repeat_pattern": "R1", "repeat_images": 12, "group_images": 50, "repeat_place": "top left"})] * 3
    rows += [("b", {"repeat_pattern": "R1", "repeat_images": 3, "group_images": 9, "repeat_place": "center"}),
             ("", {"repeat_images": 0, "group_images": 50})]
    assert describe_repeats(rows) == ["12 of 50 images share a repeated anomaly at the top left (pattern R1)",
                                      "3 of 9 images share a repeated anomaly at the center in 'b' (pattern R1)"]


def test_findings_extras_are_scalars():
    from zsad.methods.musc.repeats import RepeatFindings, RepeatPattern

    found = RepeatFindings(images=5, mode="exclude", patterns=[RepeatPattern(1, (0, 3), "top", 0.0123456)])
    assert found.extras(3) == {"group_images": 5, "repeat_images": 2, "repeat_pattern": "R1", "repeat_place": "top",
                               "repeat_area": 0.01235}
    assert found.extras(1) == {"group_images": 5, "repeat_images": 0}
    assert found.partition().tolist() == [1, 0, 0, 1, 0]


# ---------------------------------------------------------------------------------------------------- front ends


@pytest.fixture(scope="module")
def folder(batch, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repeats")
    for i, item in enumerate(batch.items):
        item.image.save(root / f"{i:02d}_{item.role}.png")
    return root


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", ZSAD_DIST_TIMEOUT="120")
    env.pop("WORLD_SIZE", None)
    return env


def test_score_summary_line_and_jsonl_rows(folder, tmp_path, batch):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "zsad", "score", str(folder), "--method", "musc", "--backbone",
                           "tiny-random", "--image-size", "224", "--device", "cpu", "--no-maps", "-q", "--out",
                           str(out)], capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    named = [r for r in records if r["extras"].get("repeat_pattern")]
    assert named and all("_repeat" in r["path"] for r in named)
    line = f"{len(named)} of 20 images share a repeated anomaly at the top left (pattern R1)"
    assert line in done.stderr
    # a resumed run with every row already written scores nothing, yet its summary still names the repeat
    again = subprocess.run([sys.executable, "-m", "zsad", "score", str(folder), "--method", "musc", "--backbone",
                            "tiny-random", "--image-size", "224", "--device", "cpu", "--no-maps", "-q", "--out",
                            str(out), "--resume"], capture_output=True, text=True, timeout=300, env=_env())
    assert again.returncode == 0, again.stderr[-2000:]
    assert "0 scored" in again.stderr and line in again.stderr


def test_grounded_answer_says_whether_the_defect_repeats(scored, batch):
    from zsad.dialogue import Conversation

    carrier = next(i for i in batch.indices("repeat") if scored[None][i].extras.get("repeat_pattern"))
    shared = scored[None][carrier].extras["repeat_images"]
    answer = Conversation.from_result(scored[None][carrier]).ask("Does this defect appear on other parts?")
    assert answer.startswith("Yes") and f"{shared - 1} other images of the 20" in answer and "top left" in answer
    good = batch.indices("good")[0]
    assert Conversation.from_result(scored[None][good]).ask("Is it a systematic fault?").startswith("No")
    alone = zsad.create("clip", **TINY).score([batch.images[carrier]])[0]
    assert Conversation.from_result(alone).ask("does the same defect appear on other parts?").startswith(
        "I cannot tell")


def test_ask_with_batch_answers_from_the_batch(folder):
    image = next(p for p in sorted(folder.iterdir()) if "_repeat" in p.name)
    done = subprocess.run([sys.executable, "-m", "zsad", "ask", str(image), "does this defect appear on other parts?",
                           "--backbone", "tiny-random", "--image-size", "224", "--device", "cpu", "--batch",
                           str(folder), "--json"], capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stderr[-2000:]
    reply = json.loads(done.stdout)
    assert reply["evidence"]["batch"]["images"] == 20 and reply["evidence"]["batch"]["shared"] > 1  # auto's MuSc half
    assert reply["answer"].startswith("Yes: the same anomaly at the top left appears on")


def test_demo_status_names_the_repeat(scored, batch, tmp_path):
    from zsad.demo.kept import KeptImage
    from zsad.demo.view import ViewWriter

    writer = ViewWriter(tmp_path, 1)
    items = []
    for i, result in enumerate(scored[None]):
        kept = KeptImage.keep(result, batch.images[i], tmp_path / f"map-{i}.npy", 64)
        writer.draw(i, f"{i}.png", kept, result)
        items.append(type("Item", (), {"name": f"{i}.png", "error": None})())
    view = writer.finish(items, method="musc", seconds=1.0, threshold=0.5, random_weights=True)
    named = sum(1 for r in scored[None] if r.extras.get("repeat_pattern"))
    assert f"Repeated anomaly: {named} of 20 images share a repeated anomaly at the top left" in view.status


def test_torchrun_spread_group_finds_the_same_pattern(folder, tmp_path):
    """A group spread over two ranks (gloo on CPU): the same pattern and the same scores as one process."""
    script = tmp_path / "run.py"
    script.write_text(
        "import json, sys, zsad\n"
        "from zsad.distributed import from_env\n"
        "from zsad.runner import sources_from_inputs\n"
        "dist = from_env('cpu')\n"
        "det = zsad.create('musc', backbone='tiny-random', image_size=224, device='cpu', batch_size=4)\n"
        "rows = {o.source.key: [o.result.image_score, o.result.extras.get('repeat_pattern'),"
        " o.result.extras.get('repeat_images')] for o in det.runner().run(sources_from_inputs([sys.argv[1]]),"
        " dist=dist)}\n"
        "json.dump(rows, open(sys.argv[2] + f'/rows-{dist.rank}.json', 'w'))\n"
        "dist.close()\n", encoding="utf-8")
    for nproc, name in ((1, "one"), (2, "two")):
        (tmp_path / name).mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               str(script), str(folder), str(tmp_path / name)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
        assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "rows-0.json").read_text())
    two = {**json.loads((tmp_path / "two" / "rows-0.json").read_text()),
           **json.loads((tmp_path / "two" / "rows-1.json").read_text())}
    assert sorted(one) == sorted(two) and len(one) == 20
    assert any(row[1] for row in one.values())
    for key, (score, pattern, count) in one.items():
        assert two[key][1:] == [pattern, count]
        assert math.isclose(two[key][0], score, abs_tol=1e-5)
