"""More than one process: ``torchrun`` / ``accelerate launch`` on CPU (gloo), tiny random models, synthetic data.

Every multi-process result is compared with a single-process run of the same command (the reference is another
run, never the code's own expectation).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from zsad.data.synthetic import make_dataset
from zsad.distributed import assign_groups, balanced_slices

TINY = ["--backbone", "tiny-random", "--image-size", "56", "--device", "cpu", "-q"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", ZSAD_DIST_TIMEOUT="120")
    env.pop("WORLD_SIZE", None)
    return env


def _torchrun(*args: str, nproc: int = 2, timeout: float = 240, check: bool = True, cwd=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "zsad",
           *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=cwd)
    if check:
        assert done.returncode in (0, 1), done.stderr[-3000:]
    return done


def _single(*args: str, cwd=None):
    done = subprocess.run([sys.executable, "-m", "zsad", *args], capture_output=True, text=True, timeout=240,
                          env=_env(), cwd=cwd)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return done


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    make_dataset(root, categories=["grain", "weave"], n_train_good=0, n_test_good=6, n_test_defect=5, size=64, seed=1)
    return root


def test_sharding_rules_are_balanced_and_deterministic():
    slices = balanced_slices(11, 3)
    sizes = [s.stop - s.start for s in slices]
    assert sizes == [3, 4, 4] and slices[0].start == 0 and slices[-1].stop == 11
    assert [slices[i].stop for i in range(2)] == [slices[i + 1].start for i in range(2)]
    # largest first to the least loaded rank, ties to the lower rank: 10->0, 7->1, 3->1, 3->0 (10 = 10), 1->1
    assert assign_groups([10, 1, 7, 3, 3], 2) == [0, 1, 1, 1, 0]
    assert assign_groups([5, 5, 5], 4) == [0, 1, 2]


def test_score_on_two_processes_equals_one(data, tmp_path):
    """clip: images split between the ranks. Rows in input order, scores within 1e-5, same labels, every overlay
    written once (musc through the command line: test_accelerate_launch_runs_two_processes)."""
    inputs, method = str(data / "grain" / "test"), "clip"
    _single("score", inputs, "--method", method, "--out", str(tmp_path / "one"), *TINY)
    two = _torchrun("score", inputs, "--method", method, "--out", str(tmp_path / "two"), *TINY)
    assert "on 2 processes" in two.stderr
    one_rows, two_rows = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [r["path"] for r in two_rows] == [r["path"] for r in one_rows] and len(one_rows) == 11
    for a, b in zip(one_rows, two_rows):
        assert abs(float(a["score"]) - float(b["score"])) <= 1e-5 and a["label"] == b["label"]
    records = _records(tmp_path / "two")
    assert [r["path"] for r in records] == [r["path"] for r in two_rows]
    maps = [r["map"] for r in records]
    assert len(set(maps)) == len(maps) and all((tmp_path / "two" / m).is_file() for m in maps)
    assert maps == [r["map"] for r in _records(tmp_path / "one")]
    assert not (tmp_path / "two" / ".shards").exists()


@pytest.mark.parametrize(("method", "backbone"), [("musc", "tiny-random"), ("anomalydino", "timm:tiny-dinov2:random")])
def test_joint_maps_across_ranks_equal_one_process(data, tmp_path, method, backbone):
    """A group scored jointly by two ranks gives the single-process maps (max |diff| <= 1e-5 in fp32): MuSc's
    exact MSM split, AnomalyDINO's batched zero-shot (each rank scores its own images against the whole group)."""
    script = tmp_path / "maps.py"
    script.write_text(
        "import sys, numpy as np, zsad\n"
        "from zsad.distributed import from_env\n"
        "from zsad.runner import sources_from_inputs\n"
        "dist = from_env('cpu')\n"
        f"det = zsad.create('{method}', backbone='{backbone}', image_size=56, device='cpu', batch_size=2)\n"
        "out = {o.source.key: o.result.anomaly_map for o in det.runner().run(sources_from_inputs([sys.argv[1]]),"
        " dist=dist)}\n"
        "np.savez(sys.argv[2] + f'/maps-{dist.rank}.npz', **{k.replace('/', '|'): v for k, v in out.items()})\n"
        "dist.close()\n", encoding="utf-8")
    folder = str(data / "grain" / "test")
    for nproc, name in ((1, "one"), (2, "two")):
        (tmp_path / name).mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", str(script),
               folder, str(tmp_path / name)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=_env())
        assert done.returncode == 0, done.stderr[-3000:]
    one = dict(np.load(tmp_path / "one" / "maps-0.npz"))
    two = {**np.load(tmp_path / "two" / "maps-0.npz"), **np.load(tmp_path / "two" / "maps-1.npz")}
    assert sorted(one) == sorted(two) and len(one) == 11
    assert len(np.load(tmp_path / "two" / "maps-0.npz").files) in (5, 6)  # each rank reported its own share
    for key in one:
        assert np.abs(one[key] - two[key]).max() <= 1e-5


def test_group_by_folder_gives_whole_groups_to_ranks(data, tmp_path):
    inputs = [str(data / "grain" / "test" / "good"), str(data / "weave" / "test" / "good")]
    _single("score", *inputs, "--method", "musc", "--group-by", "folder", "--out", str(tmp_path / "one"), *TINY)
    _torchrun("score", *inputs, "--method", "musc", "--group-by", "folder", "--out", str(tmp_path / "two"), *TINY)
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [r["path"] for r in one] == [r["path"] for r in two] and len(one) == 12
    assert max(abs(float(a["score"]) - float(b["score"])) for a, b in zip(one, two)) <= 1e-5


def _worker_pids(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the launcher's workers (read from their environment)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if ppid != launcher_pid:
            continue
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks' processes through /proc")
def test_a_rank_killed_mid_run_then_resume_gives_one_row_per_input(data, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    images = sorted((data / "grain" / "test").rglob("*.png")) + sorted((data / "weave" / "test").rglob("*.png"))
    for i, image in enumerate(images * 2):  # 44 inputs
        (folder / f"{i:03d}.png").write_bytes(image.read_bytes())
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "zsad", "score",
           str(folder), "--method", "clip", "--batch-size", "1", "--out", str(out), *TINY]
    launcher = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(),
                                start_new_session=True)
    shard = out / ".shards" / "rank-1" / "results.csv"
    deadline = time.monotonic() + 180
    killed = False
    while time.monotonic() < deadline and launcher.poll() is None:
        if shard.is_file() and shard.read_text().count("\n") >= 4:
            pids = _worker_pids(launcher.pid)
            if 1 in pids:
                os.kill(pids[1], signal.SIGKILL)
                killed = True
                break
        time.sleep(0.02)
    launcher.communicate(timeout=180)
    assert killed and launcher.returncode != 0
    assert not (out / "results.csv").exists() or len(_rows(out)) < 45
    resumed = _torchrun("score", str(folder), "--method", "clip", "--batch-size", "1", "--out", str(out), "--resume",
                        *TINY)
    assert resumed.returncode == 1  # the broken file's row is an error
    rows = _rows(out)
    keys = [os.path.realpath(r["path"]) for r in rows]
    assert len(rows) == 45 and len(set(keys)) == 45
    records = _records(out)
    assert [r["path"] for r in records] == [r["path"] for r in rows]
    maps = [r["map"] for r in records if "map" in r]
    assert len(maps) == 44 == len(set(maps)) and all((out / m).is_file() for m in maps)


def test_evaluate_on_two_processes_equals_one(data, tmp_path):
    common = ["evaluate", "--data", str(data), "--method", "clip", "--backbone", "tiny-random", "--image-size", "56",
              "--device", "cpu", "-q"]
    _single(*common, "--out", str(tmp_path / "one"))
    _torchrun(*common, "--out", str(tmp_path / "two"))
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["categories"].keys() == two["categories"].keys() == {"grain", "weave"}
    for category in one["categories"]:
        for key, value in one["categories"][category].items():
            assert two["categories"][category][key] == pytest.approx(value, abs=1e-6), (category, key)
    assert json.dumps(one["mean"], sort_keys=True) == json.dumps(two["mean"], sort_keys=True) or all(
        two["mean"][k] == pytest.approx(v, abs=1e-6) for k, v in one["mean"].items() if v is not None)


def test_train_prompts_on_two_processes_matches_one_with_the_effective_batch(data, tmp_path):
    """Two ranks with batch 3 take the same steps as one process with batch 6 (gradients averaged over the
    effective batch); the ranks' parameters are compared after every step by the trainer itself."""
    from zsad.adapters import load

    common = ["train-prompts", "--data", str(data), "--categories", "grain", "--backbone", "tiny-random",
              "--image-size", "56", "--epochs", "2", "--workers", "0", "--device", "cpu", "-q"]
    _single(*common, "--batch-size", "6", "--out", str(tmp_path / "one"))
    two = _torchrun(*common, "--batch-size", "3", "--out", str(tmp_path / "two"))
    assert two.returncode == 0 and "effective batch 6" in two.stderr
    one_log = list(csv.DictReader((tmp_path / "one" / "train_log.csv").open()))
    two_log = list(csv.DictReader((tmp_path / "two" / "train_log.csv").open()))
    assert len(two_log) == 2 and float(two_log[1]["loss"]) < float(two_log[0]["loss"])
    for a, b in zip(one_log, two_log):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-4)
    one, two_adapter = load(tmp_path / "one"), load(tmp_path / "two")
    for name, tensor in one.tensors.items():
        np.testing.assert_allclose(two_adapter.tensors[name].numpy(), tensor.numpy(), atol=1e-4)


def test_accelerate_launch_runs_two_processes(data, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` on a CPU machine starts two gloo ranks;
    ``--cpu --num_processes 2`` starts one process in this accelerate (no MPI), which must work too."""
    inputs = str(data / "weave" / "test")
    _single("score", inputs, "--method", "musc", "--out", str(tmp_path / "one"), *TINY)
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    for flags, name, processes in ((["--multi_gpu", "--num_processes", "2"], "gpu-style", 2),
                                   (["--cpu", "--num_processes", "2"], "cpu", 1)):
        cmd = [accelerate, "launch", *flags, "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend",
               "no", "--main_process_port", str(_free_port()), "-m", "zsad", "score", inputs, "--method", "musc",
               "--out", str(tmp_path / name), *TINY]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=_env())
        assert done.returncode == 0, done.stderr[-3000:]
        assert ("on 2 processes" in done.stderr) == (processes == 2)
        assert max(abs(float(a["score"]) - float(b["score"]))
                   for a, b in zip(_rows(tmp_path / "one"), _rows(tmp_path / name))) <= 1e-5


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_mismatched_arguments_are_refused(data, tmp_path):
    script = tmp_path / "mismatch.py"
    script.write_text(
        "import os, sys\n"
        "from zsad.cli import main\n"
        "args = ['score', sys.argv[1], '--method', 'clip', '--backbone', 'tiny-random', '--image-size', '56', "
        "'--device', 'cpu', '-q', '--out', sys.argv[2] + ('-' + os.environ['RANK'])]\n"
        "sys.exit(main(args))\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
           str(data / "grain" / "test" / "good"), str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=_env())
    assert done.returncode != 0
    assert "different arguments: out" in done.stderr


def test_an_output_folder_not_shared_by_all_ranks_is_detected(data, tmp_path):
    """Same arguments, but the ranks run in different working directories, so ``--out out`` names two folders
    (as on two nodes without a shared file system)."""
    script = tmp_path / "apart.py"
    script.write_text(
        "import os, sys\n"
        "from zsad.cli import main\n"
        "os.chdir(sys.argv[2 + int(os.environ['RANK'])])\n"
        "sys.exit(main(['score', sys.argv[1], '--method', 'clip', '--backbone', 'tiny-random', '--image-size', '56',"
        " '--device', 'cpu', '-q', '--out', 'out']))\n", encoding="utf-8")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
           str(data / "grain" / "test" / "good"), str(tmp_path / "a"), str(tmp_path / "b")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=_env())
    assert done.returncode != 0
    assert "is not shared by all ranks" in done.stderr
    assert not (tmp_path / "a" / "out" / "results.csv").exists() or len(_rows(tmp_path / "a" / "out")) == 0
