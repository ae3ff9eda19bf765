"""``evaluation/run_protocol.py``: a published protocol run on synthetic data writes its table beside the paper's."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluation"))
import run_protocol  # noqa: E402  (a script, not a package)

from zsad.data.synthetic import make_dataset
from zsad.evaluate import METRIC_KEYS

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "evaluation" / "run_protocol.py"


def _run(*args, cwd):
    return subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_published_numbers_use_zsad_metric_keys_and_percent():
    protocols = yaml.safe_load((ROOT / "evaluation" / "published.yaml").read_text())
    assert {"musc-mvtec", "musc-visa", "anomalyclip-mvtec", "anomalyclip-visa", "clip-mvtec"} <= set(protocols)
    for name, p in protocols.items():
        assert set(p["numbers"]) <= set(METRIC_KEYS), name
        assert all(1.0 < v <= 100.0 for v in p["numbers"].values()), name  # percent, not fractions
        assert p["aupro_variant"] in ("mvtec", "cflow") and p["source"], name
        assert "aupimo" not in p["numbers"], name  # none published so far (see the file's header)


def test_protocols_carry_the_papers_method_settings():
    """The official MuSc code's RsCIN windows are (1, 2, 3) on MVTec AD and BTAD and (1, 8, 9) on VisA; blocks
    [5, 11, 17, 23] of ViT-L-14-336; the released AnomalyCLIP checkpoints tap block 24 (0-based 23)."""
    import dataclasses

    from zsad.methods.anomalyclip.method import AnomalyClipConfig
    from zsad.methods.musc.method import MuscConfig

    protocols = run_protocol.load_protocols()
    assert protocols["musc-mvtec"]["method_options"]["rscin_ks"] == [1, 2, 3]
    assert protocols["musc-btad"]["method_options"]["rscin_ks"] == [1, 2, 3]
    assert protocols["musc-visa"]["method_options"]["rscin_ks"] == [1, 8, 9]
    fields = {"musc": {f.name for f in dataclasses.fields(MuscConfig)},
              "anomalyclip": {f.name for f in dataclasses.fields(AnomalyClipConfig)}}
    for name, p in protocols.items():
        if p["method"] == "musc":
            assert p["method_options"]["layers"] == [5, 11, 17, 23], name
        if p["method"] in fields:  # every option is a real field of the method's config
            assert set(p["method_options"]) <= fields[p["method"]], name
        if p["method"] == "anomalyclip":
            assert p["adapter_settings"]["taps"] == [23] and p["adapter_settings"]["image_size"] == 518, name


def test_the_settings_comparison_flags_each_changed_option(tmp_path):
    protocol = run_protocol.load_protocols()["musc-mvtec"]
    published = run_protocol.published_settings(protocol)
    options, used = run_protocol.plan(protocol)
    assert options["rscin_ks"] == [1, 2, 3] and options["layers"] == [5, 11, 17, 23]
    assert run_protocol.setting_differences(published, used) == []
    _, used = run_protocol.plan(protocol, overrides={"rscin_ks": [1, 8, 9]})
    assert run_protocol.setting_differences(published, used) == [
        {"setting": "method_options.rscin_ks", "published": [1, 2, 3], "run": [1, 8, 9]}]
    _, used = run_protocol.plan(protocol, overrides={"reference_size": 500}, image_size=336)
    assert {d["setting"] for d in run_protocol.setting_differences(published, used)} == {
        "image_size", "method_options.reference_size"}
    # an adapter protocol compares the adapter's recorded settings
    clip_protocol = run_protocol.load_protocols()["anomalyclip-visa"]
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter.json").write_text(json.dumps({
        "image_size": 518, "activation": "quick_gelu", "taps": [5, 11, 17, 23], "dpam_layers": 19,
        "local_weight": 1.0, "temperature": 0.07, "prompt": {"n_ctx": 12, "deep_length": 4, "deep_depth": 9}}))
    _, used = run_protocol.plan(clip_protocol, adapter=str(adapter))
    assert {d["setting"] for d in run_protocol.setting_differences(
        run_protocol.published_settings(clip_protocol), used)} == {"adapter.taps", "adapter.local_weight"}


def test_smoke_run_writes_the_comparison_and_flags_random_weights(tmp_path):
    make_dataset(tmp_path / "data", categories=["disc"], n_train_good=0, n_test_good=4, n_test_defect=3, size=64)
    done = _run("musc-mvtec", "--data", str(tmp_path / "data"), "--backbone", "tiny-random", "--image-size", "56",
                "--out", str(tmp_path / "out"), "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads((tmp_path / "out" / "comparison.json").read_text())
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    row = {r["metric"]: r for r in found["rows"]}["image_auroc"]
    assert row["published"] == 97.77
    assert row["zsad"] == pytest.approx(100 * summary["mean"]["image_auroc"], abs=0.01)
    assert row["difference"] == pytest.approx(row["zsad"] - 97.77, abs=0.01)
    assert not found["same_settings_as_published"]
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert "random weights" in table and "not a reproduction" in table
    differences = {d["setting"]: d for d in found["setting_differences"]}
    assert set(differences) == {"backbone", "image_size", "method_options.layers"}
    assert differences["method_options.layers"]["run"] == "method default for tiny-random"
    assert "| backbone | ViT-L-14-336:openai | tiny-random |" in table


def test_a_changed_option_reaches_the_method_and_is_listed(tmp_path):
    make_dataset(tmp_path / "data", categories=["disc"], n_train_good=0, n_test_good=4, n_test_defect=3, size=64)
    done = _run("musc-visa", "--data", str(tmp_path / "data"), "--backbone", "tiny-random", "--image-size", "56",
                "--out", str(tmp_path / "out"), "--device", "cpu", "--set", "rscin_ks=[1,2,3]", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert {"setting": "method_options.rscin_ks", "published": [1, 8, 9], "run": [1, 2, 3]} in found[
        "setting_differences"]
    assert "| method_options.rscin_ks | [1, 8, 9] | [1, 2, 3] |" in (tmp_path / "out" / "comparison.md").read_text()
    marker = json.loads((tmp_path / "out" / "categories" / "disc.json").read_text())
    assert marker["config"]["method_options"]["rscin_ks"] == "(1, 2, 3)"  # what the method was built with
    assert marker["config"]["method_options"]["top_fraction"] == "0.3"


def test_anomalyclip_protocol_requires_an_adapter(tmp_path):
    done = _run("anomalyclip-visa", "--data", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2 and "needs --adapter" in done.stderr
