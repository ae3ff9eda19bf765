"""Folders whose files belong together are replaced whole: a writer that dies part-way leaves the old folder
(adapter.json + weights, a training epoch's adapter + state + log, a dialogue checkpoint) intact and loadable."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from zsad import fileio
from zsad.adapters import load
from zsad.adapters.folder import load_adapter, read_adapter_config, save_adapter
from zsad.errors import AdapterError

REPO = Path(__file__).resolve().parents[1]


def _tensors(value: float) -> dict[str, torch.Tensor]:
    return {"a": torch.full((3, 4), value), "b": torch.arange(5, dtype=torch.float32) * value}


def _siblings(folder: Path) -> list[str]:
    """Temporary folders of writers next to ``folder`` (hidden ``.NAME.zsad-...``)."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.zsad-"))


def _dead_pid() -> int:
    """The id of a process that has ended."""
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                         check=True)
    return int(out.stdout)


def _leave_aside(folder: Path, pid: int) -> Path:
    """What a writer killed between its two renames leaves: the old folder under its 'aside' name, no folder."""
    aside = folder.with_name(f".{folder.name}.zsad-old.{fileio._host_tag()}.{pid}.0badf00d")
    os.rename(folder, aside)
    return aside


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def _assert_version(folder: Path, value: float) -> None:
    adapter = load_adapter(folder, "test-kind")
    assert adapter.config["version"] == value
    for name, tensor in _tensors(value).items():
        torch.testing.assert_close(adapter.tensors[name], tensor)


# -- the helper ---------------------------------------------------------------------------------------------

def test_atomic_dir_swaps_in_a_new_folder_and_carries_other_files(tmp_path):
    target = tmp_path / "run"
    (target / "sub").mkdir(parents=True)
    (target / "a.txt").write_text("old a")
    (target / "log.csv").write_text("kept")
    (target / "sub" / "deep.txt").write_text("kept too")
    old_inode = target.stat().st_ino
    with fileio.atomic_dir(target) as new:
        assert new.parent == target.parent and new.name.startswith(".run.zsad-new.") and not any(new.iterdir())
        (new / "a.txt").write_text("new a")
        (new / "b.txt").write_text("new b")
        assert (target / "a.txt").read_text() == "old a"  # nothing visible before the block ends
    assert target.stat().st_ino != old_inode  # a different folder, not the old one edited
    assert (target / "a.txt").read_text() == "new a" and (target / "b.txt").read_text() == "new b"
    assert (target / "log.csv").read_text() == "kept" and (target / "sub" / "deep.txt").read_text() == "kept too"
    assert _siblings(target) == []

    with fileio.atomic_dir(target, keep_others=False) as new:
        (new / "only.txt").write_text("x")
    assert sorted(p.name for p in target.iterdir()) == ["only.txt"]
    assert _siblings(target) == []


def test_atomic_dir_creates_a_missing_folder(tmp_path):
    target = tmp_path / "deep" / "er" / "run"
    with fileio.atomic_dir(target) as new:
        (new / "f").write_text("1")
    assert (target / "f").read_text() == "1" and _siblings(target) == []


def test_an_error_in_the_block_leaves_the_old_folder(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with fileio.atomic_dir(target) as new:
            (new / "a.txt").write_text("new")
            raise RuntimeError("disk on fire")
    assert (target / "a.txt").read_text() == "old" and _siblings(target) == []


def test_linux_swap_is_one_exchange(tmp_path, monkeypatch):
    if not sys.platform.startswith("linux"):
        pytest.skip("renameat2 is Linux only")
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    (tmp_path / "x" / "f").write_text("x")
    (tmp_path / "y" / "f").write_text("y")
    if not fileio._exchange(tmp_path / "x", tmp_path / "y"):
        pytest.skip("this file system cannot exchange folders")
    assert (tmp_path / "x" / "f").read_text() == "y" and (tmp_path / "y" / "f").read_text() == "x"
    # with the exchange available, a save never renames the old folder aside
    calls = []
    real = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b: (calls.append((a, b)), real(a, b))[1])
    save_adapter(tmp_path / "ad", "test-kind", {"version": 1.0}, _tensors(1.0))
    save_adapter(tmp_path / "ad", "test-kind", {"version": 2.0}, _tensors(2.0))
    assert len(calls) == 1  # the first save (no folder yet) is a plain rename; the second is the exchange
    _assert_version(tmp_path / "ad", 2.0)


def test_nested_saves_write_into_the_outer_new_folder(tmp_path):
    target = tmp_path / "run"
    with fileio.atomic_dir(target) as new:
        save_adapter(new, "test-kind", {"version": 1.0}, _tensors(1.0))
        assert [p.name for p in tmp_path.iterdir()] == [new.name]  # no second temporary folder
        (new / "state.txt").write_text("epoch 1")
    _assert_version(target, 1.0)
    assert (target / "state.txt").read_text() == "epoch 1"


def test_a_symlinked_folder_stays_a_symlink(tmp_path):
    real = tmp_path / "store" / "ad"
    save_adapter(real, "test-kind", {"version": 1.0}, _tensors(1.0))
    link = tmp_path / "ad-link"
    link.symlink_to(real, target_is_directory=True)
    save_adapter(link, "test-kind", {"version": 2.0}, _tensors(2.0))
    assert link.is_symlink()
    _assert_version(real, 2.0)


def test_saving_the_current_folder_leaves_the_process_in_the_new_one(tmp_path, monkeypatch):
    target = tmp_path / "ad"
    save_adapter(target, "test-kind", {"version": 1.0}, _tensors(1.0))
    monkeypatch.chdir(target)
    save_adapter(".", "test-kind", {"version": 2.0}, _tensors(2.0))
    assert Path(os.getcwd()) == target.resolve()
    _assert_version(Path("."), 2.0)


# -- adapter folders ----------------------------------------------------------------------------------------

def test_save_adapter_replaces_the_folder_whole_and_keeps_the_training_log(tmp_path):
    folder = tmp_path / "ad"
    save_adapter(folder, "test-kind", {"version": 1.0}, _tensors(1.0))
    (folder / "train_log.csv").write_text("epoch\n1\n")
    save_adapter(folder, "test-kind", {"version": 2.0, "extra": "yes"}, _tensors(2.0))
    _assert_version(folder, 2.0)
    assert read_adapter_config(folder)["extra"] == "yes"
    assert (folder / "train_log.csv").read_text() == "epoch\n1\n"
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.json", "train_log.csv", "weights.safetensors"]
    assert _siblings(folder) == []


def test_failure_between_the_two_files_keeps_the_old_adapter(tmp_path, monkeypatch):
    from zsad.adapters import folder as folder_module

    folder = tmp_path / "ad"
    save_adapter(folder, "test-kind", {"version": 1.0}, _tensors(1.0))
    real = folder_module.json.dumps

    def config_fails(record, *args, **kwargs):
        if isinstance(record, dict) and record.get("version") == 2.0:
            raise OSError("killed before adapter.json")  # the new weights are written by now
        return real(record, *args, **kwargs)

    monkeypatch.setattr(folder_module.json, "dumps", config_fails)
    with pytest.raises(OSError, match="killed"):
        save_adapter(folder, "test-kind", {"version": 2.0}, _tensors(2.0))
    monkeypatch.undo()
    _assert_version(folder, 1.0)
    assert _siblings(folder) == []


def test_killed_writer_leaves_the_old_adapter_and_the_next_save_cleans_up(tmp_path):
    folder = tmp_path / "ad"
    save_adapter(folder, "test-kind", {"version": 1.0}, _tensors(1.0))
    result = _run(f"""
        import os, torch, safetensors.torch
        from zsad.adapters.folder import save_adapter
        real = safetensors.torch.save_file
        def weights_then_die(*a, **k):
            real(*a, **k)
            os._exit(9)  # no clean-up of any kind
        safetensors.torch.save_file = weights_then_die
        save_adapter({str(folder)!r}, "test-kind", {{"version": 2.0}}, {{"a": torch.zeros(3, 4), "b": torch.zeros(5)}})
    """)
    assert result.returncode == 9, result.stderr
    leftovers = _siblings(folder)
    assert len(leftovers) == 1 and ".zsad-new." in leftovers[0]  # the dead writer's half-written folder
    _assert_version(folder, 1.0)  # readers never look at it
    assert load(folder).config["version"] == 1.0
    save_adapter(folder, "test-kind", {"version": 3.0}, _tensors(3.0))
    _assert_version(folder, 3.0)
    assert _siblings(folder) == []  # the dead writer's folder is gone


def test_without_exchange_the_two_renames_work(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)  # another OS, an old kernel, NFS
    folder = tmp_path / "ad"
    save_adapter(folder, "test-kind", {"version": 1.0}, _tensors(1.0))
    (folder / "notes.txt").write_text("mine")
    save_adapter(folder, "test-kind", {"version": 2.0}, _tensors(2.0))
    _assert_version(folder, 2.0)
    assert (folder / "notes.txt").read_text() == "mine" and _siblings(folder) == []


def test_killed_between_the_two_renames_the_readers_put_the_old_folder_back(tmp_path):
    folder = tmp_path / "ad"
    save_adapter(folder, "test-kind", {"version": 1.0}, _tensors(1.0))
    result = _run(f"""
        import os, torch
        from zsad import fileio
        from zsad.adapters.folder import save_adapter
        fileio._exchange = lambda a, b: False
        real, calls = os.rename, []
        def rename(a, b):
            calls.append(a)
            if len(calls) == 2:  # the old folder is aside, the new one complete: die before renaming it in
                os._exit(9)
            real(a, b)
        os.rename = rename
        save_adapter({str(folder)!r}, "test-kind", {{"version": 2.0}}, {{"a": torch.zeros(3, 4), "b": torch.zeros(5)}})
    """)
    assert result.returncode == 9, result.stderr
    assert not folder.exists()
    assert any(".zsad-old." in name for name in _siblings(folder))
    assert read_adapter_config(folder)["version"] == 1.0  # the reader restored it
    assert folder.is_dir()
    _assert_version(folder, 1.0)
    save_adapter(folder, "test-kind", {"version": 2.0}, _tensors(2.0))
    assert _siblings(folder) == []
    _assert_version(folder, 2.0)


def test_a_live_writers_aside_folder_is_read_not_moved(tmp_path):
    folder = tmp_path / "ad"
    save_adapter(folder, "test-kind", {"version": 1.0}, _tensors(1.0))
    aside = _leave_aside(folder, os.getpid())  # as if this very process were between its two renames
    assert fileio.settle_dir(folder) == aside
    _assert_version(folder, 1.0)
    assert not folder.exists() and aside.is_dir()


def test_a_folder_replaced_while_it_is_read_is_read_again(tmp_path, monkeypatch):
    from zsad.adapters import folder as folder_module

    folder = tmp_path / "ad"
    save_adapter(folder, "test-kind", {"version": 1.0}, _tensors(1.0))
    real = folder_module._read_adapter
    calls = []

    def read_then_replaced(where, kind):
        result = real(where, kind)
        calls.append(result[0]["version"])
        if len(calls) == 1:
            save_adapter(folder, "test-kind", {"version": 2.0}, _tensors(2.0))  # a writer swaps it meanwhile
        return result

    monkeypatch.setattr(folder_module, "_read_adapter", read_then_replaced)
    adapter = load_adapter(folder)
    assert calls == [1.0, 2.0] and adapter.config["version"] == 2.0
    torch.testing.assert_close(adapter.tensors["a"], _tensors(2.0)["a"])


def test_missing_folder_is_still_a_clear_error(tmp_path):
    with pytest.raises(AdapterError, match="does not exist"):
        load_adapter(tmp_path / "nowhere")


# -- training outputs ---------------------------------------------------------------------------------------

SIZE = 56


@pytest.fixture
def dataset(prompt_train_data):
    return prompt_train_data


def _epoch_files(out: Path) -> tuple[int, int, list[int]]:
    """epochs_done of adapter.json, of the resume state, and the epochs in the log."""
    from zsad.methods.training import read_state as _read_state

    adapter = json.loads((out / "adapter.json").read_text())["training"]["epochs_done"]
    _, meta = _read_state(out)
    with open(out / "train_log.csv", newline="") as handle:
        logged = [int(r["epoch"]) for r in csv.DictReader(handle)]
    return adapter, int(meta["epochs_done"]), logged


def test_prompt_training_epoch_outputs_belong_together_after_a_crash(prompt_train_config, tmp_path, monkeypatch):
    from zsad.methods.anomalyclip import train as train_module

    full = train_module.train_prompts(prompt_train_config(tmp_path / "full"))
    assert _epoch_files(full) == (2, 2, [1, 2])

    real, calls = train_module.save_prompt_adapter, []

    def crash_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # epoch 2: its state is already written in the new folder
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "save_prompt_adapter", crash_in_second_epoch)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        train_module.train_prompts(prompt_train_config(part))
    assert _epoch_files(part) == (1, 1, [1])  # adapter, state and log of epoch 1, all three
    assert _siblings(part) == []
    monkeypatch.setattr(train_module, "save_prompt_adapter", real)

    _leave_aside(part, _dead_pid())  # and, worse, killed mid-swap without the exchange
    train_module.train_prompts(prompt_train_config(part, resume=True))
    assert _epoch_files(part) == (2, 2, [1, 2]) and _siblings(part) == []
    resumed, reference = load(part), load(full)
    for name, tensor in reference.tensors.items():
        torch.testing.assert_close(resumed.tensors[name], tensor)


@pytest.fixture
def lora_parts():
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from zsad.dialogue.lvlm.lora import LoraSettings, apply_lora
    from zsad.dialogue.lvlm.tiny.tiny_lvlm import tiny_lvlm

    model, _ = tiny_lvlm(seed=0)
    settings = LoraSettings(r=2, alpha=4)
    model = apply_lora(model, settings)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return model, optimizer, settings


def test_dialogue_checkpoint_is_replaced_whole(tmp_path, monkeypatch, lora_parts):
    from zsad.dialogue.training import train as train_module

    model, optimizer, settings = lora_parts
    out = tmp_path / "ad"
    out.mkdir()
    train_module._save_checkpoint(out, model, optimizer, settings, "tiny-random", {"step": 1, "epoch": 0, "index": 2})
    checkpoint = out / "checkpoint"
    first = load_adapter(checkpoint, "lvlm-lora").tensors
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)

    def state_fails(*args, **kwargs):
        raise OSError("killed between the LoRA weights and the trainer state")

    monkeypatch.setattr(torch, "save", state_fails)
    with pytest.raises(OSError, match="killed"):
        train_module._save_checkpoint(out, model, optimizer, settings, "tiny-random", {"step": 2, "epoch": 0, "index": 4})
    monkeypatch.undo()
    assert torch.load(checkpoint / "trainer_state.pt", weights_only=True)["step"] == 1
    kept = load_adapter(checkpoint, "lvlm-lora").tensors
    assert kept.keys() == first.keys()
    for name in first:
        torch.testing.assert_close(kept[name], first[name])
    assert _siblings(checkpoint) == []

    train_module._save_checkpoint(out, model, optimizer, settings, "tiny-random", {"step": 2, "epoch": 0, "index": 4})
    assert torch.load(checkpoint / "trainer_state.pt", weights_only=True)["step"] == 2
    assert sorted(p.name for p in checkpoint.iterdir()) == ["adapter.json", "trainer_state.pt", "weights.safetensors"]
    changed = load_adapter(checkpoint, "lvlm-lora").tensors
    assert any(not torch.equal(changed[name], first[name]) for name in first)


def test_dialogue_resume_puts_back_a_checkpoint_left_aside(tmp_path, dataset):
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    pytest.importorskip("accelerate")
    from zsad.dialogue.training.train import TrainConfig, train

    out = tmp_path / "ad"
    common = dict(data=str(dataset), split="test", out=str(out), base="tiny-random", batch_size=2, device="cpu",
                  quiet=True)
    assert train(TrainConfig(**common, max_steps=2, epochs=2))["steps"] == 2
    _leave_aside(out / "checkpoint", _dead_pid())
    assert train(TrainConfig(**common, max_steps=3, epochs=2, resume=True))["steps"] == 3
    with open(out / "train_log.csv", newline="") as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [1, 2, 3]  # resumed, not restarted
    assert torch.load(out / "checkpoint" / "trainer_state.pt", weights_only=True)["step"] == 3
    assert _siblings(out / "checkpoint") == []
